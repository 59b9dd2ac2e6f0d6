"""The app's loaded models and its Gradio event handlers, so app.py stays layout and event wiring.

Handlers consume the engine (Distiller's event stream, Distiller.regenerate, export); nothing here samples, fits a
GP, scores fidelity or writes dataset files on its own. The GPU-bound calls are module-level functions that
rebuild a Distiller from the module's loaded models and take only plain, picklable arguments: on a ZeroGPU Space
they run in a forked worker (spaces.GPU) where globals are inherited but nothing comes back except the return
values and yields. Figures, tables and session state stay in the main process.

Settings arrive by name: app.py passes the controls with `inputs_kwargs`, keyed by the fields of Settings.
"""
from __future__ import annotations

try:  # ZeroGPU's GPU decorator; adaptive_dd/__init__ imported it before torch
    import spaces
except ImportError:
    spaces = None

import dataclasses
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
from gradio.utils import get_upload_folder
import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
import torch
from PIL import Image, ImageDraw

from . import Backend, BatchDone, BOStep, ClassDone, ConfigError, DistillConfig, Distiller, ExportError, \
    ModelLoadError, Regenerated, RunDone, Teacher, create_backend, export, load_teacher
from .bo import GridPosterior, Observation
from .config import BO_MODES, DEFAULT_GAMMAS, BOConfig, RepulsionConfig, SamplerConfig
from .data import BUILTIN_DATASETS, DataError, ImageDataset, load_dataset, open_image, to_pil, to_tensor
from .distill import Event, seed_plan
from .options import parse_bandwidth, parse_floats

MAX_UPLOADS = 16  # files per upload, and so seed images from an upload
MAX_FILE_SIZE = "10mb"  # per file, enforced by Gradio at launch (app.LAUNCH)
MAX_UPLOAD_PIXELS = 2048 * 2048
M_SEED_MAX = 32  # seed images per mini-batch, selected or drawn
QUEUE_SIZE = 32  # events waiting at once; further users are told the queue is full
DELETE_CACHE = (600, 3600)  # Gradio's cached output files: checked every 10 min, removed after an hour
GALLERY_LIMIT = 120
PREVIEW_LIMIT = 200  # distilled images shown in the export tab's preview
MAX_SWEEP_CELLS = 100
DISPLAY_PX = 160  # a whole multiple of the bundled 32 px and UCI's 8 px; galleries show about 100-160 px
POSTERIOR_VIEWS = ("mean", "std", "ucb")
# Colour scale of each objective's posterior views: the values at which Viridis' evenly spaced colours sit, the
# same in every frame of every run so that frames compare. For f = -KL <= 0, below -3 (KL of 3 nats) the teacher
# no longer sees the seeds' class distribution, and the optimum lives near 0, so the colours are spread finely
# there; kl_novelty adds up to w = 1 for novelty; confidence is a probability gain at temperature 20 (a few %).
# std and UCB are in f's units.
COLOUR_STOPS = {
    "kl": {"mean": (-3.0, -1.0, -0.3, -0.1, -0.03, 0.0), "std": (0.0, 0.1, 0.25, 0.5, 1.0, 1.5),
           "ucb": (-3.0, -1.0, -0.3, -0.1, 0.0, 0.5, 1.5)},
    "kl_novelty": {"mean": (-3.0, -1.0, -0.3, 0.0, 0.3, 0.6, 1.0), "std": (0.0, 0.1, 0.25, 0.5, 1.0, 1.5),
                   "ucb": (-3.0, -1.0, -0.3, 0.0, 0.5, 1.0, 2.0)},
    "confidence": {"mean": (-0.05, -0.02, -0.01, -0.003, 0.0, 0.01), "std": (0.0, 0.002, 0.005, 0.01, 0.02),
                   "ucb": (-0.05, -0.02, -0.01, 0.0, 0.01, 0.03)},
}
GPU_SECONDS = 120
SESSION_PREFIX = "adaptive_dd-app-"


def _gpu(fn: Callable) -> Callable:
    """spaces.GPU on a ZeroGPU Space, the plain function elsewhere."""
    return spaces.GPU(duration=GPU_SECONDS)(fn) if spaces is not None else fn


@dataclass
class Models:
    """What the app loads once at start: the backbone, a teacher per dataset, and the datasets (lazily)."""

    model_spec: str
    backend: Backend
    teachers: dict[str, Teacher]
    teacher_specs: dict[str, str]
    teacher_errors: dict[str, str]
    device: str
    classes: list[str] | None = None
    datasets: dict[str, ImageDataset] = field(default_factory=dict)
    sources: list[str] = field(default_factory=lambda: list(BUILTIN_DATASETS))

    def dataset(self, data: str) -> ImageDataset:
        if data not in self.datasets:
            self.datasets[data] = load_dataset(data, "train")
        return self.datasets[data]

    def teacher(self, data: str) -> Teacher:
        if data not in self.teachers:
            raise gr.Error(f"no teacher for {data}: {self.teacher_errors.get(data, 'not loaded')}")
        return self.teachers[data]

    def class_choices(self, data: str) -> list[str]:
        """Classes offered for a dataset: --classes if given, else the dataset's that the backbone knows."""
        if self.classes:
            return list(self.classes)
        return [c for c in self.dataset(data).classes if self.backend.supports(c)]

    def upload_classes(self) -> list[str]:
        """Classes an upload may be given: --classes if given, else the backbone's (empty: any text prompt)."""
        return list(self.classes or self.backend.classes or [])

    def describe(self) -> str:
        rows = [f"**Backbone:** {self.backend.description} (`{self.model_spec}`)",
                f"**Device:** `{self.device}`" + (" (ZeroGPU)" if spaces is not None else "")]
        for data in self.sources:
            if data in self.teachers:
                t = self.teachers[data]
                rows.append(f"**Teacher for {data}:** {t.config.model_name} ({t.config.input_size} px, "
                            f"{t.config.num_classes} classes) from `{self.teacher_specs[data]}`")
            else:
                rows.append(f"**Teacher for {data}:** not available ({self.teacher_errors[data]})")
        return "\n\n".join(rows)


MODELS: Models | None = None


def load_models(model: str = "bundled", teacher: str | None = None, device: str | None = None,
                classes: list[str] | None = None, data: list[str] | None = None) -> Models:
    """Load the backbone and the teachers once, and index the datasets offered (data: names or paths; default the
    built-in sets). A missing bundled teacher disables only its dataset; a dataset of one's own needs `teacher`."""
    global MODELS
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    sources = list(dict.fromkeys(data or BUILTIN_DATASETS))
    own = [d for d in sources if d not in BUILTIN_DATASETS]
    if own and not teacher:
        raise ModelLoadError(f"no bundled teacher for {own[0]!r}: give one with --teacher NAME[:CHECKPOINT] or a "
                             f"directory (or ADAPTIVE_DD_TEACHER)")
    datasets = {d: load_dataset(d, "train") for d in own}  # an index only: fails early, decodes nothing
    backend = create_backend(model, device)
    if classes:
        backend.check_classes(classes)
    for d, ds in datasets.items():
        if not any(backend.supports(c) for c in ds.classes):
            raise ModelLoadError(f"{d}: none of its classes ({', '.join(ds.classes[:5])}"
                                 f"{', ...' if len(ds.classes) > 5 else ''}) is one the backbone can condition on")
    teachers, specs, errors = {}, {}, {}
    shared = load_teacher(teacher, device) if teacher else None
    for name in sources:
        specs[name] = teacher or name
        if shared is not None:
            teachers[name] = shared
            continue
        try:
            teachers[name] = load_teacher(name, device)
        except ModelLoadError as e:
            errors[name] = str(e)
    if not teachers:
        raise ModelLoadError("no teacher could be loaded: " + "; ".join(errors.values()))
    MODELS = Models(model, backend, teachers, specs, errors, device, classes, datasets, sources)
    return MODELS


def models() -> Models:
    if MODELS is None:
        raise RuntimeError("load_models() has not run")
    return MODELS


# ---- settings from the UI ---------------------------------------------------------------------------------

@dataclass
class Settings:
    """The sampler, BO and repulsion controls, one field per control of app.settings_controls (by name).

    Advanced settings are the fields after `bandwidth`; a new engine setting is a field here, a control in
    app.advanced_settings and a line in config().
    """

    betas: str
    gammas: str
    budget: int
    steps: int
    lam: float
    auto_bandwidth: bool
    bandwidth: float
    q: int
    kappa: float
    objective: str
    novelty_weight: float
    proxy_steps: int
    seed: int
    bo_mode: str
    bo_scope: str
    proxy_seeds: int
    warm_budget: int
    first_warm_budget: int
    early_stop: bool
    freeze_after: int
    design_q: int
    kernel_scope: str
    warm_design: str
    class_group: int
    choice: str

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def config(self, data: str, classes: list[str] | None, ipc: int, m_seed: int) -> DistillConfig:
        """The engine's config; any setting out of range is a gr.Error naming it."""
        m = models()
        try:
            return DistillConfig(
                data=data, model=m.model_spec, teacher=m.teacher_specs.get(data), classes=classes, ipc=int(ipc),
                m_seed=int(m_seed), seed=int(self.seed), device=m.device,
                sampler=SamplerConfig(steps=int(self.steps), proxy_steps=int(self.proxy_steps) or None),
                repulsion=RepulsionConfig(weight=float(self.lam),
                                          bandwidth=bandwidth_value(self.auto_bandwidth, self.bandwidth)),
                bo=BOConfig(betas=parse_floats(self.betas, "β grid"), gammas=parse_floats(self.gammas, "γ grid"),
                            budget=int(self.budget), kappa=float(self.kappa), q=int(self.q), objective=self.objective,
                            novelty_weight=float(self.novelty_weight), mode=self.bo_mode, scope=self.bo_scope,
                            proxy_seeds=int(self.proxy_seeds), warm_budget=int(self.warm_budget),
                            first_warm_budget=int(self.first_warm_budget), early_stop=bool(self.early_stop),
                            freeze_after=int(self.freeze_after), design_q=int(self.design_q),
                            kernel_scope=self.kernel_scope, warm_design=self.warm_design,
                            class_group=int(self.class_group), choice=self.choice)).validate()
        except ConfigError as e:
            raise gr.Error(str(e)) from None


def bandwidth_value(auto: bool, value: float) -> float | str:
    """The checkbox and slider as one repulsion bandwidth, validated where the engine validates it."""
    try:
        return parse_bandwidth("auto" if auto else value)
    except ConfigError as e:
        raise gr.Error(str(e)) from None


def default_settings() -> Settings:
    """Initial control values: the backbone's beta grid and lambda, the engine's other defaults."""
    b, d = models().backend, DistillConfig().validate()
    return Settings(betas=", ".join(f"{v:g}" for v in b.default_betas),
                    gammas=", ".join(f"{g:g}" for g in DEFAULT_GAMMAS), budget=d.bo.budget, steps=d.sampler.steps,
                    lam=b.default_lambda, auto_bandwidth=True, bandwidth=1.0, kappa=d.bo.kappa,
                    objective=d.bo.objective, novelty_weight=d.bo.novelty_weight, proxy_steps=0, seed=d.seed,
                    **mode_settings(d.bo.mode))


def mode_settings(mode: str) -> dict[str, Any]:
    """The Settings fields a BO mode presets (proxy_steps 0: the mode's own count)."""
    preset = BO_MODES[mode]
    return {"q": preset["q"], "bo_mode": mode, "bo_scope": preset["scope"], "proxy_seeds": preset["proxy_seeds"],
            "warm_budget": preset["warm_budget"], "first_warm_budget": preset["first_warm_budget"],
            "early_stop": preset["early_stop"], "freeze_after": preset["freeze_after"], "design_q": preset["design_q"],
            "kernel_scope": preset["kernel_scope"], "warm_design": preset["warm_design"],
            "class_group": preset["class_group"], "choice": preset["choice"]}


def on_bo_mode(mode: str):
    """Choosing a BO mode sets the controls it presets; each can still be changed after."""
    s = mode_settings(mode)
    return (*(gr.update(value=s[k]) for k in ("q", "design_q", "bo_scope", "kernel_scope", "warm_design",
                                              "proxy_seeds", "warm_budget", "first_warm_budget", "early_stop",
                                              "freeze_after", "class_group", "choice")),
            gr.update(value=0))


def lambda_max() -> float:
    return max(10.0, 4 * models().backend.default_lambda)


def grid_size(betas: str, gammas: str) -> int | None:
    """Points in the typed grid, or None while a grid does not parse."""
    try:
        return len(parse_floats(betas, "β grid")) * len(parse_floats(gammas, "γ grid"))
    except ConfigError:
        return None


def budget_bounds(betas: str, gammas: str, budget: int):
    """The budget slider's maximum follows the grid (BO never evaluates a point twice); the value changes only
    when it no longer fits."""
    n = grid_size(betas, gammas)
    if n is None:
        return gr.skip()
    return gr.update(maximum=max(n, 2), **({"value": n} if int(budget) > n else {}))


# ---- GPU-bound calls (plain arguments, module-level models) ----------------------------------------------

def _distiller(config: DistillConfig) -> Distiller:
    m = models()
    return Distiller(config, backend=m.backend, teacher=m.teacher(config.data), dataset=m.dataset(config.data))


@_gpu
def bo_events(config: DistillConfig, seed_images: torch.Tensor, seed_ids: list[str],
              class_name: str) -> Iterator[BOStep | BatchDone]:
    yield from _distiller(config).run_batch(seed_images, seed_ids, class_name)


@_gpu
def distill_events(config: DistillConfig) -> Iterator[Event]:
    yield from _distiller(config).run()


@_gpu
def regenerate_batch(config: DistillConfig, seed_images: torch.Tensor, class_name: str, beta, gamma,
                     slots: list[int], weight: float, bandwidth: float | str) -> Regenerated:
    """Distiller.regenerate with repulsion overrides: same slots, so the same noise as the BO run's final batch."""
    try:
        return _distiller(config).regenerate(seed_images, class_name, beta, gamma, slots, weight=weight,
                                             bandwidth=bandwidth)
    except ConfigError as e:
        raise gr.Error(str(e)) from None


# ---- images and figures ----------------------------------------------------------------------------------

def display(batch: torch.Tensor | list[Image.Image], size: int = DISPLAY_PX) -> list[Image.Image]:
    """Upscale with nearest neighbour so 8-28 px digits stay crisp in the browser."""
    images = to_pil(batch) if isinstance(batch, torch.Tensor) else batch
    return [im.resize((size, size * im.height // im.width), Image.Resampling.NEAREST) if im.width < size else im
            for im in images]


def session_dir(request: gr.Request) -> Path:
    """The user's folder inside Gradio's cache, named by the session: Gradio serves files there without copying
    them, and demo.unload removes it when the page closes. (Gradio's delete_cache misses a session's later outputs:
    they are recorded on per-session copies of the components.)"""
    return Path(get_upload_folder()) / f"{SESSION_PREFIX}{request.session_hash}"


def remove_session_dir(request: gr.Request) -> None:
    """demo.unload: the user's images and exports go when the page closes."""
    shutil.rmtree(session_dir(request), ignore_errors=True)


def output_dir(request: gr.Request, kind: str) -> Path:
    """An empty folder for one kind of output of this session: new images replace the ones they supersede, so a
    session holds one set of each however many runs it makes."""
    folder = session_dir(request) / kind
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def cached_png(image: Image.Image, folder: Path) -> str:
    path = folder / f"{uuid.uuid4().hex}.png"
    image.save(path, format="PNG")
    return str(path)


def gallery(batch: torch.Tensor | list[Image.Image], labels: list[str], folder: Path) -> list[tuple[str, str]]:
    """A gallery value: the images, upscaled for display and written as PNG files, with their captions."""
    return [(cached_png(im, folder), label) for im, label in zip(display(batch), labels)]


def captions(seed_ids: list[str]) -> list[str]:
    """Seed ids without their dataset or class folder, which the page already shows: gallery cells are narrow."""
    return [v.rsplit("/", 1)[-1] for v in seed_ids]


def edge_note(best: Observation | None, betas: tuple[float, ...], gammas: tuple[float, ...]) -> str:
    """Where the best point sits on the grid's border, a hint that the optimum may lie outside the grid."""
    if best is None:
        return ""
    sides = [f"{'smallest' if v == axis[0] else 'largest'} {name}" for v, axis, name in
             ((best.beta, betas, "β"), (best.gamma, gammas, "γ")) if len(axis) > 1 and v in (axis[0], axis[-1])]
    return f"The optimum is on the edge of the grid ({' and '.join(sides)}): widen it." if sides else ""


def heatmap(post: GridPosterior, observations: list[Observation], chosen: Observation | None, view: str,
            budget: int, objective: str = "kl") -> go.Figure:
    """The posterior view over beta x gamma with numbered observations and the chosen one (where the final pass
    runs, under the run's choice rule) starred.

    The colour scale is COLOUR_STOPS[objective][view] in every frame, so a colour means the same value across a run.
    """
    z = np.asarray(getattr(post, view)).tolist()  # plain lists: plotly would otherwise send base64 typed arrays
    stops = COLOUR_STOPS[objective][view]
    zmin, zmax = stops[0], stops[-1]
    scale = [[(v - zmin) / (zmax - zmin), c] for v, c in zip(stops, sample_colorscale("Viridis", len(stops)))]
    xs, ys = [f"{g:g}" for g in post.gammas], [f"{b:g}" for b in post.betas]
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=ys, zmin=zmin, zmax=zmax, colorscale=scale,
                               colorbar={"title": {"text": view}, "thickness": 12},
                               hovertemplate="β=%{y} γ=%{x}<br>" + view + "=%{z:.4f}<extra></extra>"))
    if observations:
        fig.add_trace(go.Scatter(
            x=[f"{o.gamma:g}" for o in observations], y=[f"{o.beta:g}" for o in observations],
            mode="markers+text", text=[str(o.step) for o in observations], textposition="middle center",
            textfont={"color": "black", "size": 11}, marker={"size": 20, "color": "white", "line": {"width": 1}},
            customdata=[o.f for o in observations], name="observed",
            hovertemplate="#%{text}: β=%{y} γ=%{x}<br>f=%{customdata:.4f}<extra></extra>"))
    if chosen is not None:
        fig.add_trace(go.Scatter(x=[f"{chosen.gamma:g}"], y=[f"{chosen.beta:g}"], mode="markers", name="chosen",
                                 marker={"symbol": "star", "size": 30, "color": "rgba(0,0,0,0)",
                                         "line": {"width": 3, "color": "red"}}, hoverinfo="skip"))
    # Short enough for a 390 px phone; the chosen point and the edge note are in the readout below.
    title = f"{view} of f · {len(observations)}/{budget} evaluations"
    fig.update_layout(title={"text": title, "font": {"size": 13}, "x": 0, "xref": "paper", "xanchor": "left",
                             "y": 1, "yref": "paper", "yanchor": "bottom", "pad": {"b": 8}},
                      height=420, uirevision="bo", showlegend=False, autosize=True,
                      margin={"l": 50, "r": 10, "t": 60, "b": 50}, modebar={"orientation": "v"},
                      xaxis={"title": {"text": "γ (img2img strength)"}, "type": "category"},
                      yaxis={"title": {"text": "β (CFG scale)"}, "type": "category"})
    return fig


def labelled_grid(images: list[Image.Image], betas: tuple[float, ...], gammas: tuple[float, ...]) -> Image.Image:
    """Rows of beta, columns of gamma, labelled on the margins (the paper's Figure 3 layout); every label is
    centred on its column and kept inside the image."""
    cell, pad = images[0].width, 56
    grid = Image.new("RGB", (pad + cell * len(gammas), pad + cell * len(betas)), "white")
    draw = ImageDraw.Draw(grid)
    for j, g in enumerate(gammas):
        text = f"gamma={g:g}"
        x = pad + j * cell + (cell - draw.textlength(text)) / 2
        draw.text((min(max(x, pad + j * cell), grid.width - draw.textlength(text) - 1), pad // 3), text,
                  fill="black")
    for i, b in enumerate(betas):
        draw.text((2, pad + i * cell + cell // 2), f"beta={b:g}", fill="black")
        for j in range(len(gammas)):
            grid.paste(images[i * len(gammas) + j].convert("RGB"), (pad + j * cell, pad + i * cell))
    return grid


# ---- Explore tab -----------------------------------------------------------------------------------------

@dataclass
class ExploreState:
    """One session's current mini-batch, its config and the latest BO result."""

    config: DistillConfig
    class_name: str
    seed_images: torch.Tensor
    seed_ids: list[str]
    slots: list[int] = field(default_factory=list)
    view: str = "mean"
    posterior: GridPosterior | None = None
    observations: list[Observation] = field(default_factory=list)
    best: Observation | None = None
    chosen: Observation | None = None
    budget: int = 0
    beta: float | None = None
    gamma: float | None = None


def on_dataset(data: str):
    """New dataset: its classes for both tabs."""
    choices = models().class_choices(data)
    return (gr.update(choices=choices, value=choices[0]), gr.update(choices=choices, value=choices))


def on_source(source: str):
    """Dataset seeds show the class picker and the seed controls; uploads show the files and their class."""
    dataset = source == "dataset"
    return gr.update(visible=dataset), gr.update(visible=dataset), gr.update(visible=not dataset)


def class_gallery(data: str, class_name: str, request: gr.Request):
    """The class's train images (first GALLERY_LIMIT shown; all selectable by id) and a cleared selection."""
    ds = models().dataset(data)
    idx = ds.indices_of(ds.class_index(class_name))
    shown = idx[:GALLERY_LIMIT]
    return (gallery([ds.images[i] for i in shown], [ds.ids[i] for i in shown], output_dir(request, "pool")),
            gr.update(choices=[ds.ids[i] for i in idx], value=[]))


def toggle_seed(selected: list[str] | None, evt: gr.SelectData) -> list[str]:
    """Clicking a gallery image adds it to (or removes it from) the seed selection."""
    selected = list(selected or [])
    caption = evt.value.get("caption") if isinstance(evt.value, dict) else None
    if caption:
        selected.remove(caption) if caption in selected else selected.append(caption)
    return selected


def random_seeds(data: str, class_name: str, m_seed: int, seed: int) -> list[str]:
    """The first mini-batch the engine's seed_plan would draw for this class and seed."""
    ds = models().dataset(data)
    return [ds.ids[i] for i in seed_plan(ds, class_name, int(m_seed), int(m_seed), int(seed))[0][0]]


def read_uploads(files: list[str] | None) -> tuple[list[Image.Image], list[str]]:
    """Validate uploads with data.open_image; bad files are skipped with a warning, too many is an error."""
    files = [f for f in (files or []) if f]
    if len(files) > MAX_UPLOADS:
        raise gr.Error(f"{len(files)} files uploaded; at most {MAX_UPLOADS} are allowed")
    images, names = [], []
    for f in files:
        try:
            images.append(open_image(f, max_pixels=MAX_UPLOAD_PIXELS))
            names.append(Path(f).name)
        except DataError as e:
            gr.Warning(f"skipped {Path(f).name}: {str(e).split(': ', 1)[-1]}")
    return images, names


def preview_uploads(files: list[str] | None, request: gr.Request):
    images, names = read_uploads(files)
    return gallery(images, names, output_dir(request, "pool"))


def upload_class_hint(offered: list[str]) -> str:
    """What the upload's class may be, for the picker's caption and the error naming it."""
    shown = ", ".join(offered[:12]) + (f", ... ({len(offered)} in all)" if len(offered) > 12 else "")
    return f"one of the backbone's classes: {shown}" if offered else "any class name (a text prompt)"


def check_upload_class(name: str | None) -> str:
    """The class chosen for uploaded images: required (no default), and one the backbone can condition on."""
    name = (name or "").strip()
    m = models()
    if not name:
        raise gr.Error(f"choose the class of the uploaded images ({upload_class_hint(m.upload_classes())}) "
                       f"before running BO")
    if any(c in name for c in "/\\\0") or name in (".", "..") or len(name) > 100:
        raise gr.Error(f"class name {name!r} must be at most 100 characters, without path separators")
    if (m.classes and name not in m.classes) or not m.backend.supports(name):
        raise gr.Error(f"class {name!r} is not {upload_class_hint(m.upload_classes())}")
    return name


def _seed_batch(data: str, class_name: str, source: str, selected: list[str] | None, files: list[str] | None,
                upload_class: str | None, m_seed: int, seed: int) -> tuple[torch.Tensor, list[str], str]:
    """The seed mini-batch from the dataset (selection, or seed_plan's first batch) or from uploads."""
    b = models().backend
    if source == "upload":
        name = check_upload_class(upload_class)
        images, names = read_uploads(files)
        if not images:
            raise gr.Error("upload at least one valid image")
        return to_tensor(images, b.image_size, b.channels), names, name
    ds = models().dataset(data)
    ids = list(selected or []) or random_seeds(data, class_name, m_seed, seed)
    if len(ids) > M_SEED_MAX:
        raise gr.Error(f"{len(ids)} seed images selected; at most {M_SEED_MAX} (m_seed's maximum) per mini-batch")
    where = {v: i for i, v in enumerate(ds.ids)}
    missing = [v for v in ids if v not in where]
    if missing:
        raise gr.Error(f"unknown seed image {missing[0]!r}")
    return ds.tensor([where[v] for v in ids], b.image_size, b.channels), ids, class_name


def run_bo(data: str, class_name: str, source: str, selected: list[str] | None, files: list[str] | None,
           upload_class: str | None, m_seed: int, view: str, request: gr.Request, **settings: Any):
    """Stream Distiller.run_batch: a heatmap and the proxies after every BOStep, the final batch at BatchDone.

    settings: the Settings fields by name. Yields (heatmap, proxies, seeds, final, readout, state,
    beta dropdown, gamma dropdown, bandwidth slider).
    """
    s = Settings(**settings)
    images, ids, name = _seed_batch(data, class_name, source, selected, files, upload_class, m_seed, s.seed)
    ds_classes = models().dataset(data).classes
    config = s.config(data, [name] if name in ds_classes else None, len(images), len(images))
    st = ExploreState(config, name, images, ids, view=view)
    folder = output_dir(request, "bo")
    seeds_gallery = gallery(images, captions(ids), folder)
    skip = gr.skip()
    yield (skip, [], seeds_gallery, [], f"Running BO on {len(images)} seed images of class **{name}**…", st,
           skip, skip, skip)
    for ev in bo_events(config, images, ids, name):
        if isinstance(ev, BOStep):
            st.posterior, st.observations, st.best, st.budget = ev.posterior, ev.observations, ev.best, ev.budget
            st.chosen = ev.chosen
            proxies = [item for k, o in enumerate(ev.candidates)  # f is in the readout; cells are narrow
                       for item in gallery(ev.proxy_images[k], [f"#{o.step} β={o.beta:g} γ={o.gamma:g}"] * len(ids),
                                           folder)]
            last = ev.candidates[-1]
            yield (heatmap(ev.posterior, ev.observations, ev.chosen, st.view, ev.budget, config.bo.objective),
                   proxies, skip, skip,
                   f"Evaluation {ev.evaluations}/{ev.budget}: β={last.beta:g}, γ={last.gamma:g}, f={last.f:.4f} · "
                   f"best so far β={ev.best.beta:g}, γ={ev.best.gamma:g}, f={ev.best.f:.4f}" + chosen_note(ev),
                   st, skip, skip, skip)
        else:
            st.beta, st.gamma, st.slots = ev.beta, ev.gamma, list(ev.slots)
            betas, gammas = config.bo.betas, config.bo.gammas
            yield (skip, skip, seeds_gallery, gallery(ev.images, captions(ev.seed_ids), folder),
                   batch_readout(ev, st), st,
                   gr.update(choices=[(f"{b:g}", b) for b in betas], value=ev.beta),
                   gr.update(choices=[(f"{g:g}", g) for g in gammas], value=ev.gamma),
                   gr.update(maximum=max(1.0, float(np.ceil(3 * ev.diversity)))))


def chosen_note(ev: BOStep) -> str:
    """Where the final pass would run when the choice rule moves it off the best observed point."""
    c = ev.chosen
    if c is None or c is ev.best:
        return ""
    return (f" · chosen β={c.beta:g}, γ={c.gamma:g}, f={c.f:.4f} (the lowest β within one standard error of the "
            f"best)")


def batch_readout(ev: BatchDone, st: ExploreState) -> str:
    f_proxy = "—" if ev.f_proxy is None else f"{ev.f_proxy:.4f}"
    note = edge_note(st.best, st.config.bo.betas, st.config.bo.gammas)
    return (f"**β\\*** = {ev.beta:g} · **γ\\*** = {ev.gamma:g} · f_proxy = {f_proxy} · "
            f"**f_final** = {ev.f_final:.4f} · **diversity** (mean pairwise latent distance) = {ev.diversity:.3f} · "
            f"λ = {st.config.repulsion.weight:g}, bandwidth = {st.config.repulsion.bandwidth} · "
            f"BO {ev.seconds_bo:.1f} s, final {ev.seconds_final:.1f} s" + (f"\n\n**{note}**" if note else ""))


def stopped(st: ExploreState | None) -> str:
    """The readout after Stop: how far BO got, and whether the final batch was drawn."""
    if st is not None and st.beta is not None:
        return "**Stopped**: BO had already finished; the final batch above is complete."
    done = f" after {len(st.observations)}/{st.budget} evaluations" if st is not None and st.budget else ""
    return f"**Stopped**{done}: no final batch was drawn. Run BO again to start over."


def redraw(st: ExploreState | None, view: str):
    """Switch the heatmap between posterior mean, std and UCB; the view is kept in the session state."""
    if st is None or st.posterior is None:
        return gr.skip()
    st.view = view
    return heatmap(st.posterior, st.observations, st.chosen, view, st.budget, st.config.bo.objective)


def _require_batch(st: ExploreState | None) -> ExploreState:
    if st is None or st.beta is None:
        raise gr.Error("run BO first: it fixes the seed images, their noise and (β*, γ*)")
    return st


def regenerate(st: ExploreState | None, lam: float, auto_bandwidth: bool, bandwidth: float, request: gr.Request):
    """The final batch again from the same noise at (β*, γ*) with a new lambda or bandwidth."""
    st = _require_batch(st)
    bw = bandwidth_value(auto_bandwidth, bandwidth)
    out = regenerate_batch(st.config, st.seed_images, st.class_name, st.beta, st.gamma, st.slots, float(lam), bw)
    return (gallery(out.images, captions(st.seed_ids), output_dir(request, "final")),
            f"**β\\*** = {st.beta:g} · **γ\\*** = {st.gamma:g} · **f_final** = {out.f:.4f} · "
            f"**diversity** = {out.diversity:.3f} · λ = {float(lam):g}, bandwidth = {bw}")


def manual_look(st: ExploreState | None, beta: float | None, gamma: float | None, lam: float, auto_bandwidth: bool,
                bandwidth: float, request: gr.Request):
    """The session's seeds regenerated (full sampler, same noise) at a hand-picked grid point."""
    st = _require_batch(st)
    if beta is None or gamma is None:
        return gr.skip(), gr.skip()
    bw = bandwidth_value(auto_bandwidth, bandwidth)
    out = regenerate_batch(st.config, st.seed_images, st.class_name, float(beta), float(gamma), st.slots,
                           float(lam), bw)
    return (gallery(out.images, captions(st.seed_ids), output_dir(request, "look")),
            f"At β={float(beta):g}, γ={float(gamma):g}: f = {out.f:.4f}, diversity = {out.diversity:.3f}")


def heatmap_click(st: ExploreState | None, text: str, lam: float, auto_bandwidth: bool, bandwidth: float,
                  request: gr.Request):
    """A click on the heatmap (sent by the page's script as "beta,gamma,nonce") picks that grid point."""
    try:
        beta, gamma = (float(v) for v in str(text).split(",")[:2])
    except ValueError:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    if st is None or st.posterior is None or beta not in st.posterior.betas or gamma not in st.posterior.gammas:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    images, text = manual_look(st, beta, gamma, lam, auto_bandwidth, bandwidth, request)
    return beta, gamma, images, text


def sweep(st: ExploreState | None, request: gr.Request) -> str:
    """The first seed regenerated over the whole beta x gamma grid with one noise and no repulsion."""
    st = _require_batch(st)
    betas, gammas = st.config.bo.betas, st.config.bo.gammas
    n = len(betas) * len(gammas)
    if n > MAX_SWEEP_CELLS:
        raise gr.Error(f"the grid has {n} points; the sweep draws at most {MAX_SWEEP_CELLS}")
    b, g = np.repeat(betas, len(gammas)), np.tile(gammas, len(betas))
    out = regenerate_batch(st.config, st.seed_images[:1].repeat(n, 1, 1, 1), st.class_name, b, g,
                           [st.slots[0]] * n, 0.0, "auto")
    return cached_png(labelled_grid(display(out.images, 64), betas, gammas), output_dir(request, "sweep"))


# ---- Distill & export tab --------------------------------------------------------------------------------

TABLE_HEADERS = ["class", "batch", "β*", "γ*", "f_proxy", "f_final"]


def distill_export(data: str, classes: list[str] | None, ipc: int, m_seed: int, request: gr.Request,
                   **settings: Any):
    """Stream Distiller.run() through export(): status, a per-class table and a preview of the distilled images as
    events arrive, then the zip.

    settings: the Settings fields by name. Yields (status, table, preview, download button). Closing the
    generator (Stop) makes export() remove its temporary folder.
    """
    if not classes:
        raise gr.Error("choose at least one class")
    config = Settings(**settings).config(data, list(classes), ipc, m_seed)
    folder, shown_in = output_dir(request, "export"), output_dir(request, "preview")
    dist = _distiller(config)
    total = dist.n_batches()
    out = folder / f"adaptive_dd-{data}"
    rows: list[list] = []
    preview: list[tuple[str, str]] = []
    done = 0
    skip = gr.skip()
    yield (f"Distilling {len(dist.classes)} classes × {config.ipc} images ({total} mini-batches)…", rows, [],
           gr.DownloadButton(visible=False))
    try:
        for ev in export(distill_events(config), out, config, dist.dataset.classes, dist.describe(), overwrite=True,
                         make_zip=True):
            if isinstance(ev, BatchDone):
                done += 1
                room = PREVIEW_LIMIT - len(preview)
                preview += gallery(ev.images[:room], [f"{ev.class_name} · {k}" for k in ev.slots], shown_in)
                yield (f"Class {ev.class_name}, batch {ev.batch_index}: β*={ev.beta:g}, γ*={ev.gamma:g} · "
                       f"{done}/{total} mini-batches", skip, list(preview), skip)
            elif isinstance(ev, ClassDone):
                rows.extend([ev.class_name, b.batch, b.beta, b.gamma,
                             None if b.f_proxy is None else round(b.f_proxy, 5), round(b.f_final, 5)]
                            for b in ev.batches)
                yield skip, list(rows), skip, skip
            elif isinstance(ev, RunDone):
                zip_path = out.with_name(out.name + ".zip")
                shown = f"; the preview shows the first {PREVIEW_LIMIT}" if ev.n_images > PREVIEW_LIMIT else ""
                yield (f"Done: {ev.n_images} images in {ev.seconds:.1f} s "
                       f"({ev.seconds_bo:.1f} s BO, {ev.seconds_final:.1f} s final sampling){shown}",
                       list(rows), list(preview), gr.DownloadButton(value=str(zip_path), visible=True))
    except (ConfigError, DataError, ExportError) as e:
        raise gr.Error(str(e)) from None
