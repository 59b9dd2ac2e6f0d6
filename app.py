"""Gradio app over adaptive_dd: explore GP-UCB over (beta, gamma) for one class, then distill and export.

    python app.py [--data NAME_OR_PATH ...] [--model ID_OR_PATH] [--teacher NAME[:CKPT]] [--classes "a,b"]
                  [--port N] [--host H] [--device D]

Every option can also be set by an environment variable, ADAPTIVE_DD_<OPTION> (ADAPTIVE_DD_DATA,
ADAPTIVE_DD_MODEL, ADAPTIVE_DD_TEACHER, ...), so a Space is configured in its settings; the command line wins.

Layout and event wiring only: the per-session logic and model loading live in adaptive_dd/app_state.py, which
consumes the engine's event stream. Models load once, before the server starts.
"""
from __future__ import annotations

import os

for _key, _value in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"),
                     ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(_key, _value)

import argparse  # noqa: E402
import sys  # noqa: E402

from adaptive_dd import app_state as S  # noqa: E402  (imports `spaces` before torch)
from adaptive_dd.imagenet import expand_classes  # noqa: E402

import gradio as gr  # noqa: E402

GPU = {"concurrency_id": "gpu", "concurrency_limit": 1}

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


def settings_block(d: dict, bandwidth_max: float = 100.0) -> list[gr.components.Component]:
    """Sampler, BO and repulsion controls in app_state.Settings order; the rarely changed ones folded away."""
    with gr.Group():
        betas = gr.Textbox(d["betas"], label="β grid (CFG scale)")
        gammas = gr.Textbox(d["gammas"], label="γ grid (img2img strength, in (0, 1])")
        with gr.Row():
            budget = gr.Slider(1, 49, value=d["budget"], step=1, label="BO budget")
            steps = gr.Slider(2, 100, value=d["steps"], step=1, label="steps (proxies use half)")
        lam = gr.Slider(0.0, d["lam_max"], value=d["lam"], label="λ (repulsion weight)")
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            q = gr.Slider(1, 4, value=d["q"], step=1, label="q (proposals per BO round)")
            kappa = gr.Slider(0.0, 5.0, value=d["kappa"], step=0.1, label="κ (UCB exploration)")
        with gr.Row():
            auto_bw = gr.Checkbox(True, label="auto bandwidth (median heuristic)")
            bandwidth = gr.Slider(0.1, bandwidth_max, value=1.0, step=0.1, label="bandwidth σ (when not auto)")
        seed = gr.Number(d["seed"], precision=0, label="seed")
    return [betas, gammas, budget, q, kappa, steps, lam, auto_bw, bandwidth, seed]


def build_demo(m: S.Models) -> gr.Blocks:
    d = S.default_settings()
    datasets = [name for name in m.sources if name in m.teachers]
    default = "uci-digits" if "uci-digits" in datasets else datasets[0]
    classes = m.class_choices(default)
    with gr.Blocks(title="adaptive_dd") as demo:
        gr.Markdown("# adaptive_dd\nTraining-free dataset distillation: GP-UCB over CFG scale β × img2img "
                    "strength γ scored by the teacher's fidelity f = −KL, then a full regeneration with repulsion.")
        with gr.Accordion("Models", open=False):
            gr.Markdown(m.describe())

        with gr.Tab("Explore"):
            st = gr.State(None)
            with gr.Row():
                with gr.Column(scale=1):
                    data = gr.Dropdown(datasets, value=default, label="dataset")
                    class_name = gr.Dropdown(classes, value=classes[0], label="class")
                    source = gr.Radio(["dataset", "upload"], value="dataset", label="seed images from")
                    with gr.Group(visible=True) as dataset_group:
                        m_seed = gr.Slider(2, 32, value=10, step=1, label="m_seed (seed images)")
                        selected = gr.Dropdown([], value=[], multiselect=True,
                                               label="selected seeds (click images; empty = random m_seed)")
                        random_btn = gr.Button("Random m_seed", size="sm")
                    with gr.Group(visible=False) as upload_group:
                        files = gr.File(file_count="multiple", file_types=["image"], type="filepath",
                                        label=f"seed images (at most {S.MAX_UPLOADS})")
                        upload_class = gr.Dropdown(m.upload_classes(), label="their class",
                                                   allow_custom_value=m.backend.classes is None)
                    settings = settings_block(d)
                    with gr.Row():
                        run = gr.Button("Run BO", variant="primary")
                        stop = gr.Button("Stop", variant="stop")
                with gr.Column(scale=2):
                    # Gradio 6 gallery cells are at least 100 px wide: 7 columns fit this column in a 1400 px
                    # window without scrolling sideways; a mini-batch (m_seed 10) shows as 2 rows of 5.
                    pool = gr.Gallery(label="class train images / uploads (click to select)", columns=7,
                                      height=240, format="png", allow_preview=False)
                    view = gr.Radio(list(S.POSTERIOR_VIEWS), value="mean", label="heatmap shows the posterior")
                    plot = gr.Plot(elem_id="bo-heatmap", label="GP posterior over β × γ (click a cell to look)")
                    click_box = gr.Textbox(visible="hidden", elem_id="heatmap-click")
                    proxies = gr.Gallery(label="latest proxy images", columns=5, height="fit-content",
                                         format="png")
                    seeds_gallery = gr.Gallery(label="seeds", columns=5, height="fit-content", format="png")
                    final_gallery = gr.Gallery(label="final (β*, γ*, repulsion), in the seeds' order", columns=5,
                                               height="fit-content", format="png")
                    readout = gr.Markdown()
                    with gr.Accordion("Manual look and sweep", open=True):
                        with gr.Row():
                            beta_dd = gr.Dropdown([], label="β")
                            gamma_dd = gr.Dropdown([], label="γ")
                        manual_gallery = gr.Gallery(label="seeds at (β, γ)", columns=5, height="fit-content",
                                                    format="png")
                        manual_text = gr.Markdown()
                        sweep_btn = gr.Button("Sweep β × γ (first seed)")
                        sweep_image = gr.Image(label="sweep", format="png", type="pil")

        with gr.Tab("Distill & export"):
            folder = gr.State(None, delete_callback=S.remove_session_dir)
            with gr.Row():
                with gr.Column(scale=1):
                    data2 = gr.Dropdown(datasets, value=default, label="dataset")
                    classes2 = gr.CheckboxGroup(classes, value=classes, label="classes")
                    with gr.Row():
                        ipc = gr.Slider(1, 100, value=10, step=1, label="IPC (images per class)")
                        m_seed2 = gr.Slider(1, 32, value=10, step=1, label="m_seed (per mini-batch)")
                    settings2 = settings_block(d)
                    with gr.Row():
                        run2 = gr.Button("Distill", variant="primary")
                        stop2 = gr.Button("Stop", variant="stop")
                with gr.Column(scale=2):
                    status = gr.Markdown()
                    table = gr.Dataframe(headers=S.TABLE_HEADERS, label="per class", interactive=False)
                    download = gr.DownloadButton("Download zip", visible=False)

        lam, auto_bw, bandwidth = settings[6], settings[7], settings[8]
        look = [lam, auto_bw, bandwidth]

        data.change(S.on_dataset, data, [class_name, classes2], api_visibility="private")
        data2.change(lambda name: S.on_dataset(name)[1], data2, classes2, api_visibility="private")
        class_name.change(S.class_gallery, [data, class_name], [pool, selected], api_name="class_images")
        demo.load(S.class_gallery, [data, class_name], [pool, selected], api_visibility="private")
        source.change(lambda s: (gr.update(visible=s == "dataset"), gr.update(visible=s == "upload")), source,
                      [dataset_group, upload_group], api_visibility="private")
        pool.select(S.toggle_seed, selected, selected, api_visibility="private")
        random_btn.click(S.random_seeds, [data, class_name, m_seed, settings[9]], selected, api_name="random_seeds")
        files.upload(S.preview_uploads, files, pool, api_visibility="private")

        bo = run.click(S.run_bo, [data, class_name, source, selected, files, upload_class, m_seed, view, *settings],
                       [plot, proxies, seeds_gallery, final_gallery, readout, st, beta_dd, gamma_dd, bandwidth],
                       api_name="run_bo", **GPU)
        stop.click(None, None, None, cancels=[bo], api_visibility="private")
        view.change(S.redraw, [st, view], plot, api_name="heatmap_view")
        lam.release(S.regenerate, [st, *look], [final_gallery, readout], api_name="regenerate", **GPU)
        for control in (bandwidth.release, auto_bw.input):
            control(S.regenerate, [st, *look], [final_gallery, readout], api_visibility="private", **GPU)
        beta_dd.input(S.manual_look, [st, beta_dd, gamma_dd, *look], [manual_gallery, manual_text],
                      api_name="manual_look", **GPU)
        gamma_dd.input(S.manual_look, [st, beta_dd, gamma_dd, *look], [manual_gallery, manual_text],
                       api_visibility="private", **GPU)
        click_box.change(S.heatmap_click, [st, click_box, *look], [beta_dd, gamma_dd, manual_gallery, manual_text],
                         api_visibility="private", **GPU)
        sweep_btn.click(S.sweep, st, sweep_image, api_name="sweep", **GPU)
        demo.load(None, js=HEATMAP_CLICK_JS)

        job = run2.click(S.distill_export, [folder, data2, classes2, ipc, m_seed2, *settings2],
                         [status, table, download, folder], api_name="distill_export", **GPU)
        stop2.click(None, None, None, cancels=[job], api_visibility="private")
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
    build_demo(models).launch(server_name=a.host, server_port=a.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
