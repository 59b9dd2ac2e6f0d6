"""Model loading and per-session logic behind app.py, so the app file stays layout and event wiring.

Everything here consumes the engine (Distiller's event stream, Distiller.generate, export); nothing samples,
fits a GP or writes files on its own. The GPU-bound calls are module-level functions that rebuild a Distiller
from the module's loaded models and take only plain, picklable arguments: on a ZeroGPU Space they run in a
forked worker (spaces.GPU) where globals are inherited but nothing comes back except the return values and
yields. Figures, tables and session state stay in the main process.
"""
from __future__ import annotations

try:  # ZeroGPU: `spaces` must be imported before torch
    import spaces
except ImportError:
    spaces = None

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image, ImageDraw

from .backends import Backend, create_backend
from .bo import GridPosterior, Observation
from .config import DEFAULT_GAMMAS, BOConfig, ConfigError, DistillConfig, RepulsionConfig, SamplerConfig
from .data import BUILTIN_DATASETS, DataError, ImageDataset, load_dataset, open_image, to_pil, to_tensor
from .distill import BatchDone, BOStep, ClassDone, Distiller, Event, RunDone
from .export import ExportError, export
from .fidelity import ModelLoadError, Teacher, fidelity, load_teacher
from .repulsion import mean_pairwise_distance
from .sampler import noise_seed

MAX_UPLOADS = 16
MAX_UPLOAD_PIXELS = 2048 * 2048
GALLERY_LIMIT = 120
MAX_SWEEP_CELLS = 100
DISPLAY_PX = 160  # a whole multiple of the bundled 16 px and UCI's 8 px; galleries show about 100-160 px
POSTERIOR_VIEWS = ("mean", "std", "ucb")
GPU_SECONDS = 120


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


# ---- configuration from the UI ----------------------------------------------------------------------------

def parse_grid(text: str, name: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in str(text).replace(";", ",").split(",") if v.strip())
    except ValueError:
        raise gr.Error(f"{name}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise gr.Error(f"{name}: the grid is empty")
    return values


@dataclass
class Settings:
    """The sampler/BO/repulsion controls shared by both tabs, in the order app.py lists them."""

    betas: str
    gammas: str
    budget: int
    q: int
    kappa: float
    steps: int
    lam: float
    auto_bandwidth: bool
    bandwidth: float
    seed: int

    def config(self, data: str, classes: list[str] | None, ipc: int, m_seed: int) -> DistillConfig:
        m = models()
        cfg = DistillConfig(
            data=data, model=m.model_spec, teacher=m.teacher_specs.get(data), classes=classes, ipc=int(ipc),
            m_seed=int(m_seed), seed=int(self.seed), device=m.device,
            sampler=SamplerConfig(steps=int(self.steps)),
            repulsion=RepulsionConfig(weight=float(self.lam), bandwidth=bandwidth_value(self.auto_bandwidth,
                                                                                        self.bandwidth)),
            bo=BOConfig(betas=parse_grid(self.betas, "beta grid"), gammas=parse_grid(self.gammas, "gamma grid"),
                        budget=int(self.budget), kappa=float(self.kappa), q=int(self.q)))
        try:
            return cfg.validate()
        except ConfigError as e:
            raise gr.Error(str(e)) from None


def bandwidth_value(auto: bool, value: float) -> float | str:
    return "auto" if auto else float(value)


def default_settings() -> dict:
    """Initial control values: the backbone's beta grid and lambda, the engine's other defaults."""
    b, d = models().backend, DistillConfig()
    return {"betas": ", ".join(f"{v:g}" for v in b.default_betas), "gammas": ", ".join(f"{g:g}" for g in DEFAULT_GAMMAS),
            "budget": d.bo.budget, "q": d.bo.q, "kappa": d.bo.kappa, "steps": d.sampler.steps,
            "lam": b.default_lambda, "lam_max": max(10.0, 4 * b.default_lambda), "seed": d.seed}


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
def generate(config: DistillConfig, seed_images: torch.Tensor, class_name: str, beta, gamma, seeds: list[int],
             weight: float, bandwidth) -> tuple[torch.Tensor, float, float]:
    """Full-sampler images at (beta, gamma) with their diversity and fidelity to the seeds."""
    dist = _distiller(config)
    out = dist.generate(seed_images, class_name, beta, gamma, seeds, proxy=False, weight=weight, bandwidth=bandwidth)
    f = fidelity(dist.teacher.logits(seed_images), dist.teacher.logits(out.images))
    return out.images, mean_pairwise_distance(out.latents), f


# ---- images and figures ----------------------------------------------------------------------------------

def display(batch: torch.Tensor | list[Image.Image], size: int = DISPLAY_PX) -> list[Image.Image]:
    """Upscale with nearest neighbour so 8-28 px digits stay crisp in the browser."""
    images = to_pil(batch) if isinstance(batch, torch.Tensor) else batch
    return [im.resize((size, size * im.height // im.width), Image.Resampling.NEAREST) if im.width < size else im
            for im in images]


def captions(seed_ids: list[str]) -> list[str]:
    """Seed ids without their dataset or class folder, which the page already shows: gallery cells are narrow."""
    return [v.rsplit("/", 1)[-1] for v in seed_ids]


def heatmap(post: GridPosterior, observations: list[Observation], best: Observation | None, view: str,
            budget: int) -> go.Figure:
    """The posterior view over beta x gamma with numbered observations and the best one starred."""
    z = np.asarray(getattr(post, view)).tolist()  # plain lists: plotly would otherwise send base64 typed arrays
    xs, ys = [f"{g:g}" for g in post.gammas], [f"{b:g}" for b in post.betas]
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=ys, colorscale="Viridis", colorbar={"title": {"text": view}},
                               hovertemplate="β=%{y} γ=%{x}<br>" + view + "=%{z:.4f}<extra></extra>"))
    if observations:
        fig.add_trace(go.Scatter(
            x=[f"{o.gamma:g}" for o in observations], y=[f"{o.beta:g}" for o in observations],
            mode="markers+text", text=[str(o.step) for o in observations], textposition="middle center",
            textfont={"color": "black", "size": 11}, marker={"size": 20, "color": "white", "line": {"width": 1}},
            customdata=[o.f for o in observations], name="observed",
            hovertemplate="#%{text}: β=%{y} γ=%{x}<br>f=%{customdata:.4f}<extra></extra>"))
    if best is not None:
        fig.add_trace(go.Scatter(x=[f"{best.gamma:g}"], y=[f"{best.beta:g}"], mode="markers", name="best",
                                 marker={"symbol": "star", "size": 30, "color": "rgba(0,0,0,0)",
                                         "line": {"width": 3, "color": "red"}}, hoverinfo="skip"))
    title = f"{view} of f after {len(observations)}/{budget} evaluations"
    if best is not None:
        title += f" · best β*={best.beta:g} γ*={best.gamma:g} f={best.f:.4f}"
    fig.update_layout(title={"text": title, "font": {"size": 13}}, height=420, uirevision="bo", showlegend=False,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50},
                      xaxis={"title": {"text": "γ (img2img strength)"}, "type": "category"},
                      yaxis={"title": {"text": "β (CFG scale)"}, "type": "category"})
    return fig


def labelled_grid(images: list[Image.Image], betas: tuple[float, ...], gammas: tuple[float, ...]) -> Image.Image:
    """Rows of beta, columns of gamma, labelled on the margins (the paper's Figure 3 layout)."""
    cell, pad = images[0].width, 56
    grid = Image.new("RGB", (pad + cell * len(gammas), pad + cell * len(betas)), "white")
    draw = ImageDraw.Draw(grid)
    for j, g in enumerate(gammas):
        draw.text((pad + j * cell + cell // 3, pad // 3), f"gamma={g:g}", fill="black")
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
    seeds: list[int] = field(default_factory=list)
    view: str = "mean"
    posterior: GridPosterior | None = None
    observations: list[Observation] = field(default_factory=list)
    best: Observation | None = None
    budget: int = 0
    beta: float | None = None
    gamma: float | None = None


def on_dataset(data: str):
    """New dataset: its classes for both tabs."""
    choices = models().class_choices(data)
    return (gr.update(choices=choices, value=choices[0]), gr.update(choices=choices, value=choices))


def class_gallery(data: str, class_name: str):
    """The class's train images (first GALLERY_LIMIT shown; all selectable by id) and a cleared selection."""
    ds = models().dataset(data)
    idx = ds.indices_of(ds.class_index(class_name))
    shown = idx[:GALLERY_LIMIT]
    images = display([ds.images[i] for i in shown])
    return ([(im, ds.ids[i]) for im, i in zip(images, shown)],
            gr.update(choices=[ds.ids[i] for i in idx], value=[]))


def toggle_seed(selected: list[str] | None, evt: gr.SelectData) -> list[str]:
    """Clicking a gallery image adds it to (or removes it from) the seed selection."""
    selected = list(selected or [])
    caption = evt.value.get("caption") if isinstance(evt.value, dict) else None
    if caption:
        selected.remove(caption) if caption in selected else selected.append(caption)
    return selected


def random_seeds(data: str, class_name: str, m_seed: int, seed: int) -> list[str]:
    """The first mini-batch Distiller.seed_plan would draw for this class and seed."""
    cfg = DistillConfig(data=data, classes=[class_name], ipc=int(m_seed), m_seed=int(m_seed), seed=int(seed))
    ds = models().dataset(data)
    dist = Distiller(cfg, backend=models().backend, teacher=next(iter(models().teachers.values())), dataset=ds)
    return [ds.ids[i] for i in dist.seed_plan(class_name)[0][0]]


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


def preview_uploads(files: list[str] | None):
    images, names = read_uploads(files)
    return list(zip(images, names))


def _seed_batch(data: str, class_name: str, source: str, selected: list[str] | None, files: list[str] | None,
                upload_class: str | None, m_seed: int, seed: int) -> tuple[torch.Tensor, list[str], str]:
    """The seed mini-batch from the dataset (selection, or seed_plan's first batch) or from uploads."""
    b = models().backend
    if source == "upload":
        images, names = read_uploads(files)
        if not images:
            raise gr.Error("upload at least one valid image")
        upload_class = (upload_class or "").strip()
        if not upload_class:
            raise gr.Error("choose or type the class the uploaded images belong to")
        if any(c in upload_class for c in "/\\\0") or upload_class in (".", "..") or len(upload_class) > 100:
            raise gr.Error(f"class name {upload_class!r} must be at most 100 characters, without path separators")
        try:
            b.check_classes([upload_class])
        except ValueError as e:
            raise gr.Error(str(e)) from None
        return to_tensor(images, b.image_size, b.channels), names, upload_class
    ds = models().dataset(data)
    ids = list(selected or []) or random_seeds(data, class_name, m_seed, seed)
    where = {v: i for i, v in enumerate(ds.ids)}
    missing = [v for v in ids if v not in where]
    if missing:
        raise gr.Error(f"unknown seed image {missing[0]!r}")
    return ds.tensor([where[v] for v in ids], b.image_size, b.channels), ids, class_name


def run_bo(data: str, class_name: str, source: str, selected: list[str] | None, files: list[str] | None,
           upload_class: str | None, m_seed: int, view: str, betas: str, gammas: str, budget: int, q: int,
           kappa: float, steps: int, lam: float, auto_bandwidth: bool, bandwidth: float, seed: int):
    """Stream Distiller.run_batch: a heatmap and the proxies after every BOStep, the final batch at BatchDone.

    Yields (heatmap, proxies, seeds, final, readout, state, beta dropdown, gamma dropdown, bandwidth slider).
    """
    s = Settings(betas, gammas, budget, q, kappa, steps, lam, auto_bandwidth, bandwidth, seed)
    images, ids, name = _seed_batch(data, class_name, source, selected, files, upload_class, m_seed, s.seed)
    ds_classes = models().dataset(data).classes
    config = s.config(data, [name] if name in ds_classes else None, len(images), len(images))
    st = ExploreState(config, name, images, ids, view=view)
    seeds_gallery = list(zip(display(images), captions(ids)))
    skip = gr.skip()
    yield (skip, [], seeds_gallery, [], f"Running BO on {len(images)} seed images of class **{name}**…", st,
           skip, skip, skip)
    for ev in bo_events(config, images, ids, name):
        if isinstance(ev, BOStep):
            st.posterior, st.observations, st.best, st.budget = ev.posterior, ev.observations, ev.best, ev.budget
            proxies = [(im, f"#{o.step} β={o.beta:g} γ={o.gamma:g}")  # f is in the readout; cells are narrow
                       for k, o in enumerate(ev.candidates) for im in display(ev.proxy_images[k])]
            last = ev.candidates[-1]
            yield (heatmap(ev.posterior, ev.observations, ev.best, st.view, ev.budget), proxies, skip, skip,
                   f"Evaluation {ev.evaluations}/{ev.budget}: β={last.beta:g}, γ={last.gamma:g}, f={last.f:.4f} · "
                   f"best so far β={ev.best.beta:g}, γ={ev.best.gamma:g}, f={ev.best.f:.4f}", st, skip, skip, skip)
        else:
            st.beta, st.gamma = ev.beta, ev.gamma
            st.seeds = [noise_seed(config.seed, ev.class_index, s) for s in ev.slots]
            yield (skip, skip, seeds_gallery, list(zip(display(ev.images), captions(ev.seed_ids))),
                   batch_readout(ev, st), st,
                   gr.update(choices=[(f"{b:g}", b) for b in st.posterior.betas], value=ev.beta),
                   gr.update(choices=[(f"{g:g}", g) for g in st.posterior.gammas], value=ev.gamma),
                   gr.update(maximum=max(1.0, math.ceil(3 * ev.diversity))))


def batch_readout(ev: BatchDone, st: ExploreState) -> str:
    return (f"**β\\*** = {ev.beta:g} · **γ\\*** = {ev.gamma:g} · f_proxy = {'—' if ev.f_proxy is None else f'{ev.f_proxy:.4f}'} · "
            f"**f_final** = {ev.f_final:.4f} · **diversity** (mean pairwise latent distance) = {ev.diversity:.3f} · "
            f"λ = {st.config.repulsion.weight:g}, bandwidth = {st.config.repulsion.bandwidth} · "
            f"BO {ev.seconds_bo:.1f} s, final {ev.seconds_final:.1f} s")


def redraw(st: ExploreState | None, view: str):
    """Switch the heatmap between posterior mean, std and UCB; the view is kept in the session state."""
    if st is None or st.posterior is None:
        return gr.skip()
    st.view = view
    return heatmap(st.posterior, st.observations, st.best, view, st.budget)


def _require_batch(st: ExploreState | None) -> ExploreState:
    if st is None or st.beta is None:
        raise gr.Error("run BO first: it fixes the seed images, their noise and (β*, γ*)")
    return st


def regenerate(st: ExploreState | None, lam: float, auto_bandwidth: bool, bandwidth: float):
    """The final batch again from the same noise at (β*, γ*) with a new lambda or bandwidth."""
    st = _require_batch(st)
    bw = bandwidth_value(auto_bandwidth, bandwidth)
    images, diversity, f = generate(st.config, st.seed_images, st.class_name, st.beta, st.gamma, st.seeds,
                                    float(lam), bw)
    return (list(zip(display(images), captions(st.seed_ids))),
            f"**β\\*** = {st.beta:g} · **γ\\*** = {st.gamma:g} · **f_final** = {f:.4f} · "
            f"**diversity** = {diversity:.3f} · λ = {float(lam):g}, bandwidth = {bw}")


def manual_look(st: ExploreState | None, beta: float | None, gamma: float | None, lam: float, auto_bandwidth: bool,
                bandwidth: float):
    """The session's seeds regenerated (full sampler, same noise) at a hand-picked grid point."""
    st = _require_batch(st)
    if beta is None or gamma is None:
        return gr.skip(), gr.skip()
    bw = bandwidth_value(auto_bandwidth, bandwidth)
    images, diversity, f = generate(st.config, st.seed_images, st.class_name, float(beta), float(gamma), st.seeds,
                                    float(lam), bw)
    return (list(zip(display(images), captions(st.seed_ids))),
            f"At β={float(beta):g}, γ={float(gamma):g}: f = {f:.4f}, diversity = {diversity:.3f}")


def heatmap_click(st: ExploreState | None, text: str, lam: float, auto_bandwidth: bool, bandwidth: float):
    """A click on the heatmap (sent by the page's script as "beta,gamma,nonce") picks that grid point."""
    try:
        beta, gamma = (float(v) for v in str(text).split(",")[:2])
    except ValueError:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    if st is None or st.posterior is None or beta not in st.posterior.betas or gamma not in st.posterior.gammas:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    gallery, text = manual_look(st, beta, gamma, lam, auto_bandwidth, bandwidth)
    return beta, gamma, gallery, text


def sweep(st: ExploreState | None) -> Image.Image:
    """The first seed regenerated over the whole beta x gamma grid with one noise and no repulsion."""
    st = _require_batch(st)
    betas, gammas = st.posterior.betas, st.posterior.gammas
    n = len(betas) * len(gammas)
    if n > MAX_SWEEP_CELLS:
        raise gr.Error(f"the grid has {n} points; the sweep draws at most {MAX_SWEEP_CELLS}")
    b, g = np.repeat(betas, len(gammas)), np.tile(gammas, len(betas))
    images, _, _ = generate(st.config, st.seed_images[:1].repeat(n, 1, 1, 1), st.class_name, b, g,
                            [st.seeds[0]] * n, 0.0, "auto")
    return labelled_grid(display(images, 64), betas, gammas)


# ---- Distill & export tab --------------------------------------------------------------------------------

TABLE_HEADERS = ["class", "batch", "β*", "γ*", "f_proxy", "f_final"]


def session_dir(current: str | None) -> str:
    """A per-session folder under the system temp dir (Gradio may serve files from there)."""
    if current and Path(current).is_dir():
        return current
    return tempfile.mkdtemp(prefix="adaptive_dd-app-")


def remove_session_dir(path: str | None) -> None:
    """gr.State delete_callback: the session's exports go when the session does."""
    if path:
        shutil.rmtree(path, ignore_errors=True)


def distill_export(folder: str | None, data: str, classes: list[str] | None, ipc: int, m_seed: int, betas: str,
                   gammas: str, budget: int, q: int, kappa: float, steps: int, lam: float, auto_bandwidth: bool,
                   bandwidth: float, seed: int):
    """Stream Distiller.run() through export(): status and a per-class table as events arrive, then the zip.

    Yields (status, table, download button, session folder). Closing the generator (Stop) makes export()
    remove its temporary folder.
    """
    if not classes:
        raise gr.Error("choose at least one class")
    config = Settings(betas, gammas, budget, q, kappa, steps, lam, auto_bandwidth, bandwidth, seed).config(
        data, list(classes), ipc, m_seed)
    folder = session_dir(folder)
    dist = _distiller(config)
    total = sum(len(dist.seed_plan(c)[0]) for c in dist.classes)
    out = Path(folder) / f"adaptive_dd-{data}"
    rows: list[list] = []
    done = 0
    hidden = gr.DownloadButton(visible=False)
    yield f"Distilling {len(dist.classes)} classes × {config.ipc} images ({total} mini-batches)…", rows, hidden, folder
    try:
        for ev in export(distill_events(config), out, config, dist.dataset.classes, dist.describe(), overwrite=True,
                         make_zip=True):
            if isinstance(ev, BatchDone):
                done += 1
                yield (f"Class {ev.class_name}, batch {ev.batch_index}: β*={ev.beta:g}, γ*={ev.gamma:g} · "
                       f"{done}/{total} mini-batches", gr.skip(), gr.skip(), gr.skip())
            elif isinstance(ev, ClassDone):
                rows.extend([ev.class_name, b["batch"], b["beta"], b["gamma"], None if b["f_proxy"] is None else round(b["f_proxy"], 5),
                             round(b["f_final"], 5)] for b in ev.batches)
                yield gr.skip(), list(rows), gr.skip(), gr.skip()
            elif isinstance(ev, RunDone):
                zip_path = out.with_name(out.name + ".zip")
                yield (f"Done: {ev.n_images} images in {ev.seconds:.1f} s "
                       f"({ev.seconds_bo:.1f} s BO, {ev.seconds_final:.1f} s final sampling)",
                       list(rows), gr.DownloadButton(value=str(zip_path), visible=True), gr.skip())
    except (ConfigError, DataError, ExportError) as e:
        raise gr.Error(str(e)) from None
