"""Gradio app over adaptive_dd: explore GP-UCB over (beta, gamma) for one class, then distill and export.

    python app.py [--data NAME_OR_PATH ...] [--model ID_OR_PATH] [--teacher NAME[:CKPT]] [--classes "a,b"]
                  [--port N] [--host H] [--device D]

Every option can also be set by an environment variable, ADAPTIVE_DD_<OPTION> (ADAPTIVE_DD_DATA,
ADAPTIVE_DD_MODEL, ADAPTIVE_DD_TEACHER, ...), so a Space is configured in its settings; the command line wins.

Layout and event wiring only: the event handlers and model loading live in adaptive_dd/app_handlers.py, which
consumes the engine's event stream. Models load once, before the server starts.
"""
from __future__ import annotations

import os

for _key, _value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"),
                     ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(_key, _value)

import argparse  # noqa: E402
import sys  # noqa: E402

from adaptive_dd import app_handlers as S  # noqa: E402  (the package imports `spaces` before torch)
from adaptive_dd.config import BO_MODES, BO_SCOPES, CHOICES, KERNEL_SCOPES, WARM_DESIGNS  # noqa: E402
from adaptive_dd.fidelity import OBJECTIVES  # noqa: E402
from adaptive_dd.imagenet import expand_classes  # noqa: E402

import gradio as gr  # noqa: E402

GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}  # every heavy event waits in this one queue
GUIDE = ("**1.** Pick a class and its seed images (or upload images and choose their class) → "
         "**2.** Run BO and watch the posterior of the fidelity f fill in → "
         "**3.** Tweak λ / bandwidth under the final images, or distill the whole dataset and export it.")
# Galleries wrap instead of clipping on narrow screens, and a few images do not stretch to the column's width.
CSS = """
.wrap-gallery .grid-container { grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)) !important;
                                grid-auto-rows: auto !important; }
.wrap-gallery .grid-container .thumbnail-item { width: 100%; aspect-ratio: 1 / 1; }
"""
LAUNCH = {"max_file_size": S.MAX_FILE_SIZE, "css": CSS}  # launch() settings besides host and port

# Gradio's Plot has no click event: this script forwards a click on the heatmap as "beta,gamma,nonce" to a
# hidden textbox, whose change event does the rest. Rebinds when the plot is re-created.
HEATMAP_CLICK_JS = """
() => {
  const bind = () => document.querySelectorAll('#bo-heatmap .js-plotly-plot').forEach((el) => {
    if (el.__addClick || !el.on) return;
    el.__addClick = true;
    el.on('plotly_click', (e) => {
      const p = e.points && e.points[0];
      const box = document.querySelector('#heatmap-click textarea, #heatmap-click input');
      if (!p || !box) return;
      box.value = `${p.y},${p.x},${Date.now()}`;
      box.dispatchEvent(new Event('input', {bubbles: true}));
    });
  });
  setInterval(bind, 500);
}
"""


def settings_controls(d: S.Settings) -> dict[str, gr.components.Component]:
    """The grid, budget and steps, then Advanced settings; keyed by S.Settings field names."""
    with gr.Group():
        betas = gr.Textbox(d.betas, label="β grid (CFG scale)")
        gammas = gr.Textbox(d.gammas, label="γ grid (img2img strength, in (0, 1])")
        with gr.Row():
            n = S.grid_size(d.betas, d.gammas) or 2
            budget = gr.Slider(1, max(n, 2), value=min(d.budget, n), step=1, label="BO budget",
                               info="at most the grid's size")
            steps = gr.Slider(2, 100, value=d.steps, step=1, label="steps (BO proxies take a share: see proxy steps)")
    for grid in (betas, gammas):
        grid.change(S.budget_bounds, [betas, gammas, budget], budget, api_visibility="private")
    return {"betas": betas, "gammas": gammas, "budget": budget, "steps": steps, **advanced_settings(d)}


def advanced_settings(d: S.Settings) -> dict[str, gr.components.Component]:
    """The rarely changed engine settings, folded away; a new one is a control here and a field of S.Settings."""
    with gr.Accordion("Advanced settings", open=False):
        with gr.Row():
            q = gr.Slider(1, 4, value=d.q, step=1, label="q (proposals per BO round)")
            design_q = gr.Slider(0, 8, value=d.design_q, step=1, label="design q (proposals per round of the "
                                 "initial design; 0: q)")
            kappa = gr.Slider(0.0, 5.0, value=d.kappa, step=0.1, label="κ (UCB exploration)")
        with gr.Row():
            objective = gr.Dropdown(list(OBJECTIVES), value=d.objective, label="objective (what BO maximises)",
                                    info="; ".join(f"{k}: {v}" for k, v in OBJECTIVES.items()))
            novelty_weight = gr.Slider(0.0, 3.0, value=d.novelty_weight, step=0.05, label="w (kl_novelty)")
        with gr.Row():
            bo_mode = gr.Dropdown(list(BO_MODES), value=d.bo_mode, label="BO mode",
                                  info="paper: Algorithm 1 as written (a fresh 8-evaluation search per mini-batch); "
                                       "fast: the cheaper search (warm start, proxy subsets, fewer proxy steps, "
                                       "the design in one call, early stopping, fixed kernel); sets the controls "
                                       "below")
            bo_scope = gr.Dropdown(list(BO_SCOPES), value=d.bo_scope, label="BO scope (what seeds the GP)",
                                   info="batch: nothing; class: the class's earlier mini-batches; run: also the "
                                        "first class's")
        with gr.Row():
            proxy_steps = gr.Number(d.proxy_steps, precision=0, minimum=0,
                                    label="proxy steps (0: the mode's; must divide steps)")
            proxy_seeds = gr.Number(d.proxy_seeds, precision=0, minimum=0,
                                    label="proxy seeds (0: all seeds of the batch)")
            warm_budget = gr.Number(d.warm_budget, precision=0, minimum=0,
                                    label="warm budget (evaluations when the GP starts from a prior; 0: the budget)")
            first_warm_budget = gr.Number(d.first_warm_budget, precision=0, minimum=0,
                                          label="first warm budget (the same for a class's first mini-batch in an "
                                                "export, warm from the pilot class alone; 0: the warm budget)")
        with gr.Row():
            early_stop = gr.Checkbox(d.early_stop, label="early stopping (no unevaluated UCB beats the best)")
            freeze_after = gr.Number(d.freeze_after, precision=0, minimum=0,
                                     label="fix the GP kernel at this many points (0: never)")
            kernel_scope = gr.Dropdown(list(KERNEL_SCOPES), value=d.kernel_scope, label="kernel scope",
                                       info="batch: every mini-batch learns the GP kernel; class: learned once on "
                                            "the class's first prior")
            warm_design = gr.Dropdown(list(WARM_DESIGNS), value=d.warm_design, label="warm design",
                                      info="where a search with a prior starts: top: its best points; ucb: its best "
                                           "point, then GP-UCB's picks; low: its best point and the lowest beta "
                                           "at its gamma; top_then_*: top on a class's first mini-batch, ucb or "
                                           "low on its later ones")
        with gr.Row():
            class_group = gr.Number(d.class_group, precision=0, minimum=0,
                                    label="class group (classes whose first proxy rounds share one sampler call in "
                                          "an export; 0: 4 on a CPU, 1 on a GPU)")
            choice = gr.Dropdown(list(CHOICES), value=d.choice, label="choice (where the final pass runs)",
                                 info="best: the best observed; one_se: the lowest β within one standard error of "
                                      "it, measured seed by seed")
            seed = gr.Number(d.seed, precision=0, label="seed")
    bo_mode.change(S.on_bo_mode, bo_mode,
                   [q, design_q, bo_scope, kernel_scope, warm_design, proxy_seeds, warm_budget, first_warm_budget,
                    early_stop, freeze_after, class_group, choice, proxy_steps],
                   api_visibility="private")
    return {"q": q, "kappa": kappa, "objective": objective, "novelty_weight": novelty_weight,
            "proxy_steps": proxy_steps, "seed": seed, "bo_mode": bo_mode, "bo_scope": bo_scope,
            "proxy_seeds": proxy_seeds, "warm_budget": warm_budget, "first_warm_budget": first_warm_budget,
            "early_stop": early_stop, "freeze_after": freeze_after, "design_q": design_q,
            "kernel_scope": kernel_scope, "warm_design": warm_design, "class_group": class_group, "choice": choice}


def repulsion_controls(d: S.Settings, bandwidth_max: float = 100.0) -> dict[str, gr.components.Component]:
    """λ and the bandwidth: in Explore they sit under the final gallery they redraw."""
    with gr.Group():
        with gr.Row():
            lam = gr.Slider(0.0, S.lambda_max(), value=d.lam, label="λ (repulsion weight)")
            bandwidth = gr.Slider(0.1, bandwidth_max, value=d.bandwidth, step=0.1,
                                  label="bandwidth σ (when not auto)")
        auto_bw = gr.Checkbox(d.auto_bandwidth, label="auto bandwidth (median heuristic)")
    return {"lam": lam, "auto_bandwidth": auto_bw, "bandwidth": bandwidth}


def image_gallery(label: str, height: int | str = "fit-content", **kw) -> gr.Gallery:
    """A PNG gallery (never webp: exports are built from the engine, but users compare pixels) whose cells wrap
    on narrow screens and keep their size when there are only a few (CSS above)."""
    return gr.Gallery(label=label, format="png", height=height, columns=5, fit_columns=False,
                      elem_classes="wrap-gallery", **kw)


def build_demo(m: S.Models, delete_cache: tuple[int, int] = S.DELETE_CACHE) -> gr.Blocks:
    d = S.default_settings()
    datasets = [name for name in m.sources if name in m.teachers]
    default = "uci-digits" if "uci-digits" in datasets else datasets[0]
    classes = m.class_choices(default)
    upload_classes = m.upload_classes()
    with gr.Blocks(title="adaptive_dd", delete_cache=delete_cache) as demo:
        gr.Markdown("# adaptive_dd\nTraining-free dataset distillation: GP-UCB over CFG scale β × img2img "
                    "strength γ scored by the teacher's fidelity f = −KL, then a full regeneration with repulsion.")
        gr.Markdown(GUIDE, elem_id="guide")
        with gr.Accordion("Models", open=False):
            gr.Markdown(m.describe())

        with gr.Tab("Explore"):
            st = gr.State(None)
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    with gr.Row():
                        data = gr.Dropdown(datasets, value=default, label="dataset")
                        source = gr.Radio(["dataset", "upload"], value="dataset", label="seed images from")
                    class_name = gr.Dropdown(classes, value=classes[0], label="class")
                    with gr.Group(visible=True) as dataset_group:
                        m_seed = gr.Slider(2, S.M_SEED_MAX, value=10, step=1, label="m_seed (seed images)")
                        selected = gr.Dropdown([], value=[], multiselect=True, max_choices=S.M_SEED_MAX,
                                               label="selected seeds (click images; empty = random m_seed)")
                        random_btn = gr.Button("Random m_seed", size="sm")
                    with gr.Group(visible=False) as upload_group:
                        files = gr.File(file_count="multiple", file_types=["image"], type="filepath",
                                        label=f"seed images (at most {S.MAX_UPLOADS} files of {S.MAX_FILE_SIZE})")
                        upload_class = gr.Dropdown(
                            upload_classes, value=None, label="class of the uploaded images (required)",
                            allow_custom_value=not upload_classes,
                            info=f"only what the backbone can generate: {S.upload_class_hint(upload_classes)}")
                    with gr.Row():
                        run = gr.Button("Run BO", variant="primary")
                        stop = gr.Button("Stop", variant="stop")
                    settings = settings_controls(d)
                with gr.Column(scale=2, min_width=300):
                    readout = gr.Markdown(elem_id="bo-readout")
                    view = gr.Radio(list(S.POSTERIOR_VIEWS), value="mean", label="heatmap shows the posterior")
                    plot = gr.Plot(elem_id="bo-heatmap", label="GP posterior over β × γ (click a cell to look)")
                    click_box = gr.Textbox(visible="hidden", elem_id="heatmap-click")
                    pool = image_gallery("class train images / uploads (click to select)", allow_preview=False,
                                   height=260)
                    proxies = image_gallery("latest proxy images")
                    seeds_gallery = image_gallery("seeds")
                    final_gallery = image_gallery("final (β*, γ*, repulsion), in the seeds' order", elem_id="final")
                    repulsion = repulsion_controls(d)
                    regen_text = gr.Markdown()
                    with gr.Accordion("Manual look and sweep", open=True):
                        with gr.Row():
                            beta_dd = gr.Dropdown([], label="β")
                            gamma_dd = gr.Dropdown([], label="γ")
                        manual_gallery = image_gallery("seeds at (β, γ)")
                        manual_text = gr.Markdown()
                        sweep_btn = gr.Button("Sweep β × γ (first seed)")
                        sweep_image = gr.Image(label="sweep", format="png", type="filepath")

        with gr.Tab("Distill & export"):
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    data2 = gr.Dropdown(datasets, value=default, label="dataset")
                    classes2 = gr.CheckboxGroup(classes, value=classes, label="classes")
                    with gr.Row():
                        ipc = gr.Slider(1, 100, value=10, step=1, label="IPC (images per class)")
                        m_seed2 = gr.Slider(1, S.M_SEED_MAX, value=10, step=1, label="m_seed (per mini-batch)")
                    with gr.Row():
                        run2 = gr.Button("Distill", variant="primary")
                        stop2 = gr.Button("Stop", variant="stop")
                    settings2 = {**settings_controls(d), **repulsion_controls(d)}
                with gr.Column(scale=2, min_width=300):
                    status = gr.Markdown()
                    table = gr.Dataframe(headers=S.TABLE_HEADERS, label="per class", interactive=False)
                    preview = image_gallery(f"distilled images (first {S.PREVIEW_LIMIT})", elem_id="distilled")
                    download = gr.DownloadButton("Download zip", visible=False)

        lam, auto_bw, bandwidth = repulsion["lam"], repulsion["auto_bandwidth"], repulsion["bandwidth"]
        look = [lam, auto_bw, bandwidth]

        data.change(S.on_dataset, data, [class_name, classes2], api_visibility="private")
        data2.change(lambda name: S.on_dataset(name)[1], data2, classes2, api_visibility="private")
        class_name.change(S.class_gallery, [data, class_name], [pool, selected], api_name="class_images")
        demo.load(S.class_gallery, [data, class_name], [pool, selected], api_visibility="private")
        source.change(S.on_source, source, [class_name, dataset_group, upload_group], api_visibility="private")
        pool.select(S.toggle_seed, selected, selected, api_visibility="private")
        random_btn.click(S.random_seeds, [data, class_name, m_seed, settings["seed"]], selected,
                         api_name="random_seeds")
        files.upload(S.preview_uploads, files, pool, api_visibility="private")

        bo = run.click(S.run_bo, [data, class_name, source, selected, files, upload_class, m_seed, view],
                       [plot, proxies, seeds_gallery, final_gallery, readout, st, beta_dd, gamma_dd, bandwidth],
                       inputs_kwargs={**settings, **repulsion}, api_name="run_bo", **GPU)
        stop.click(S.stopped, st, readout, cancels=[bo], api_visibility="private")
        view.change(S.redraw, [st, view], plot, api_name="heatmap_view")
        # Typing in a number box and pressing Enter or leaving it is an input event, as is a drag or a tick.
        for k, control in enumerate(look):
            control.input(S.regenerate, [st, *look], [final_gallery, regen_text], trigger_mode="always_last",
                          **({"api_name": "regenerate"} if k == 0 else {"api_visibility": "private"}), **GPU)
        beta_dd.input(S.manual_look, [st, beta_dd, gamma_dd, *look], [manual_gallery, manual_text],
                      api_name="manual_look", **GPU)
        gamma_dd.input(S.manual_look, [st, beta_dd, gamma_dd, *look], [manual_gallery, manual_text],
                       api_visibility="private", **GPU)
        click_box.change(S.heatmap_click, [st, click_box, *look], [beta_dd, gamma_dd, manual_gallery, manual_text],
                         api_visibility="private", **GPU)
        sweep_btn.click(S.sweep, st, sweep_image, api_name="sweep", **GPU)
        demo.load(None, js=HEATMAP_CLICK_JS)
        demo.unload(S.remove_session_dir)

        job = run2.click(S.distill_export, [data2, classes2, ipc, m_seed2], [status, table, preview, download],
                         inputs_kwargs=settings2, api_name="distill_export", **GPU)
        stop2.click(lambda: "**Stopped**: nothing was exported.", None, status, cancels=[job],
                    api_visibility="private")
    demo.queue(max_size=S.QUEUE_SIZE)
    return demo


ENV_PREFIX = "ADAPTIVE_DD_"


def _comma_list(values: list[str] | None) -> list[str] | None:
    items = [v.strip() for text in values or [] for v in text.split(",") if v.strip()]
    return items or None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options from the command line, each defaulting to its ADAPTIVE_DD_<OPTION> environment variable."""
    p = argparse.ArgumentParser(description="adaptive_dd Gradio app (every option also reads ADAPTIVE_DD_<OPTION>)")

    def env(flag: str) -> str:
        return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()

    def option(flag: str, help: str, **kw) -> None:
        fallback = kw.pop("default", None)
        if kw.get("action") != "append":  # an appended list starts empty; its variable is read after parsing
            kw["default"] = os.environ.get(env(flag)) or fallback
        p.add_argument(flag, help=f"{help} [env {env(flag)}]", **kw)

    option("--data", "dataset to offer: uci-digits, mnist-5k, an ImageFolder directory or a saved Hugging Face "
           "dataset; repeat it or give a comma list (default: the built-in sets)", action="append")
    option("--model", "bundled, a class-UNet folder, or a Stable Diffusion or DiT hub id or folder", default="bundled")
    option("--teacher", "teacher for every dataset: bundled name, folder or timm NAME[:CKPT] (default: each "
           "built-in dataset's bundled teacher; required for other datasets)")
    option("--classes", "comma-separated class names or wnids to offer, or the presets imagenette / imagewoof "
           "(default: the dataset's)")
    option("--device", "cpu, cuda, ... (default: cuda when available)")
    option("--port", "server port (default: GRADIO_SERVER_PORT or 7860)", type=int)
    option("--host", "server address (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    a = p.parse_args(argv)
    a.data = _comma_list(a.data or [os.environ.get(env("--data"), "")])
    a.classes = expand_classes(_comma_list([a.classes] if a.classes else None))
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        models = S.load_models(a.model, a.teacher, a.device, a.classes, a.data)
    except (S.ModelLoadError, S.DataError, ValueError) as e:
        print(f"app: error: {e}", file=sys.stderr)
        return 2
    build_demo(models).launch(server_name=a.host, server_port=a.port, **LAUNCH)
    return 0


if __name__ == "__main__":
    sys.exit(main())
