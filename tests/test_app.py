"""The Gradio app end to end through its public API: launched on a free port, driven with gradio_client."""
from __future__ import annotations

import glob
import json
import time
import zipfile

import pytest
from conftest import APP_SESSION_DIRS

gradio_client = pytest.importorskip("gradio_client")

BUDGET = 3
SETTINGS = {"betas": "0, 1, 2", "gammas": "0.5, 0.7, 1.0", "budget": BUDGET, "steps": 6, "lam": 1.0,
            "auto_bandwidth": True, "bandwidth": 1.0, "q": 1, "kappa": 2.0, "objective": "kl",
            "novelty_weight": 1.0, "proxy_steps": 0, "seed": 7, "bo_mode": "paper", "bo_scope": "batch",
            "proxy_seeds": 0, "warm_budget": 0, "first_warm_budget": 0, "early_stop": False, "freeze_after": 0,
            "design_q": 0, "kernel_scope": "batch", "warm_design": "top",
            "class_group": 1, "choice": "best"}


@pytest.fixture(scope="module")
def client(app_url, tmp_path_factory):
    return gradio_client.Client(app_url, verbose=False, analytics_enabled=False,
                                download_files=str(tmp_path_factory.mktemp("downloads")))


def test_models_panel_names_backbone_and_teacher(client):
    from adaptive_dd import app_handlers

    text = app_handlers.models().describe()
    assert "UNet2DModel" in text and "resnet10t" in text and "cpu" in text


def test_run_bo_streams_a_heatmap_per_evaluation_then_the_final_batch(client):
    job = client.submit("uci-digits", "3", "dataset", [], None, None, 4, "mean", **SETTINGS, api_name="/run_bo")
    job.result(timeout=300)
    outputs = job.outputs()
    plots = [json.loads(o[0]["plot"]) for o in outputs if "plot" in o[0]]  # skipped outputs are bare updates
    assert len(plots) == BUDGET  # one heatmap per BO evaluation (q = 1)
    for k, fig in enumerate(plots, start=1):
        heat, observed = fig["data"][0], fig["data"][1]
        assert heat["type"] == "heatmap" and len(heat["z"]) == 3 and len(heat["z"][0]) == 3
        assert (heat["zmin"], heat["zmax"], heat["colorscale"]) == (-3, 0, plots[0]["data"][0]["colorscale"])
        assert observed["text"] == [str(i) for i in range(1, k + 1)]
        assert fig["layout"]["uirevision"] == "bo"
    final = outputs[-1]
    seeds, images, readout = final[2], final[3], final[4]
    assert len(seeds) == 4 and len(images) == 4
    assert "f_final" in readout and "diversity" in readout


def test_export_returns_a_zip_with_ipc_images_per_class_and_a_manifest(client):
    classes, ipc = ["0", "1"], 3
    status, table, preview, download = client.predict("uci-digits", classes, ipc, 2, **SETTINGS,
                                                      api_name="/distill_export")
    assert status.startswith("Done") and download["visible"]  # a DownloadButton update made visible
    assert [item["caption"] for item in preview] == [f"{c} · {k}" for c in classes for k in range(ipc)]
    download = download["value"]  # the zip, already fetched by the client
    assert download.endswith(".zip")
    assert [row[0] for row in table["data"]] == ["0", "0", "1", "1"]  # two mini-batches per class
    with zipfile.ZipFile(download) as zf:
        names = zf.namelist()
        manifest = json.loads(zf.read(next(n for n in names if n.endswith("/manifest.json"))))
    for c in classes:
        assert sum(f"/{c}/" in n and n.endswith(".png") for n in names) == ipc
    assert manifest["config"]["ipc"] == ipc and manifest["class_order"][:2] == classes
    assert len(manifest["images"]) == ipc * len(classes)


def _image_bytes(gallery: list[dict]) -> list[bytes]:
    return [open(item["image"], "rb").read() for item in gallery]


def test_lambda_regenerates_from_the_same_noise_and_look_and_sweep_draw(client):
    final = client.predict("uci-digits", "5", "dataset", [], None, None, 3, "mean", **SETTINGS, api_name="/run_bo")
    lam = SETTINGS["lam"]
    again, text = client.predict(lam, True, 1.0, api_name="/regenerate")
    assert _image_bytes(again) == _image_bytes(final[3])  # same (beta*, gamma*), noise and lambda: same images
    assert "diversity" in text
    plain, _ = client.predict(0.0, True, 1.0, api_name="/regenerate")
    assert len(plain) == 3 and _image_bytes(plain) != _image_bytes(final[3])
    look, text = client.predict(2.0, 1.0, lam, True, 1.0, api_name="/manual_look")
    assert len(look) == 3 and "β=2, γ=1" in text
    from PIL import Image

    with Image.open(client.predict(api_name="/sweep")) as grid:
        assert grid.width > 3 * 64 and grid.height > 3 * 64  # 3 x 3 cells of 64 px plus labels


def test_uploads_are_validated_and_used_as_seeds(client, tmp_path):
    from gradio_client import handle_file
    from PIL import Image

    good = []
    for i in range(2):
        Image.new("RGBA", (20, 30), (i * 90, 50, 200, 255)).save(tmp_path / f"ok{i}.png")
        good.append(handle_file(str(tmp_path / f"ok{i}.png")))
    (tmp_path / "bad.png").write_text("not an image")
    files = good + [handle_file(str(tmp_path / "bad.png"))]
    out = client.predict("uci-digits", "0", "upload", [], files, "7", 10, "std", **SETTINGS, api_name="/run_bo")
    assert [item["caption"] for item in out[2]] == ["ok0.png", "ok1.png"]  # the bad file is skipped
    assert len(out[3]) == 2
    too_many = [handle_file(str(tmp_path / "ok0.png"))] * 17
    with pytest.raises(Exception, match="17 files uploaded; at most 16"):
        client.predict("uci-digits", "0", "upload", [], too_many, "7", 10, "mean", **SETTINGS, api_name="/run_bo")
    with pytest.raises(Exception, match="choose the class of the uploaded images"):
        client.predict("uci-digits", "0", "upload", [], good, None, 10, "mean", **SETTINGS, api_name="/run_bo")


def test_cancelled_export_leaves_no_temporary_folder(client):
    pattern = f"{APP_SESSION_DIRS}/export/.adaptive_dd-*.tmp-*"
    job = client.submit("uci-digits", [str(i) for i in range(10)], 20, 4, **SETTINGS, api_name="/distill_export")
    deadline = time.monotonic() + 60
    while not glob.glob(pattern) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert glob.glob(pattern), "the export never started"
    assert job.cancel() or job.status().code.name == "CANCELLED"
    deadline = time.monotonic() + 30
    while glob.glob(pattern) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not glob.glob(pattern)


@pytest.mark.parametrize("name,match", [(None, "choose the class"), ("  ", "choose the class"),
                                        ("../etc", "path separators"), ("a/b", "path separators"),
                                        ("banana", "not one of the backbone's classes")])
def test_upload_class_names_are_checked(client, tmp_path, name, match):
    import gradio as gr
    from PIL import Image

    import app

    path = tmp_path / "one.png"
    Image.new("L", (8, 8), 128).save(path)
    with pytest.raises(gr.Error, match=match):
        app.S._seed_batch("uci-digits", "0", "upload", None, [str(path)], name, 4, 0)


def test_settings_are_passed_by_name_and_public_limits_are_set(client, app_url):
    import urllib.request

    from adaptive_dd import app_handlers

    params = [p["parameter_name"] for p in client.view_api(return_format="dict")["named_endpoints"]["/run_bo"]
              ["parameters"]]
    assert sorted(params[-len(app_handlers.Settings.names()):]) == sorted(app_handlers.Settings.names())
    config = json.loads(urllib.request.urlopen(app_url + "config").read())
    assert config["max_file_size"] == 10 * 1024 ** 2


def test_seed_and_budget_bounds_are_named():
    import gradio as gr

    import app

    ids = [f"uci-digits/{i}" for i in range(40)]
    with pytest.raises(gr.Error, match="40 seed images selected; at most 32"):
        app.S._seed_batch("uci-digits", "0", "dataset", ids, None, None, 4, 0)
    assert app.S.budget_bounds("0, 1", "0.5", 8) == {"__type__": "update", "maximum": 2, "value": 2}
    assert app.S.budget_bounds("0, 1, 2", "0.5, 0.7", 4) == {"__type__": "update", "maximum": 6}  # 4 still fits
    assert app.S.budget_bounds("0, x", "0.5", 4) == gr.skip()  # a half-typed grid leaves the slider alone


def test_edge_note_names_the_grid_border_the_optimum_sits_on():
    from adaptive_dd.app_handlers import edge_note
    from adaptive_dd.bo import Observation

    def best(beta: float, gamma: float) -> Observation:
        return Observation(beta=beta, gamma=gamma, f=-0.1, step=1, index=(0, 0))

    betas, gammas = (0.0, 1.0, 2.0), (0.3, 0.5, 0.9)
    assert edge_note(best(1.0, 0.5), betas, gammas) == ""
    assert edge_note(best(1.0, 0.3), betas, gammas) == \
        "The optimum is on the edge of the grid (smallest γ): widen it."
    assert "largest β and largest γ" in edge_note(best(2.0, 0.9), betas, gammas)
    assert edge_note(best(1.0, 0.5), (1.0,), gammas) == ""  # a one-value axis has no edge


def test_four_users_at_once_each_get_their_own_class(app_url):
    """Four clients (four sessions) run BO on four classes together; the GPU queue serialises them."""
    from concurrent.futures import ThreadPoolExecutor

    from adaptive_dd import app_handlers

    labels = dict(zip(app_handlers.models().dataset("uci-digits").ids,
                      app_handlers.models().dataset("uci-digits").labels))
    small = {**SETTINGS, "budget": 2, "steps": 4}

    def one(class_name: str):
        c = gradio_client.Client(app_url, verbose=False, analytics_enabled=False)
        seeds = c.predict("uci-digits", class_name, 3, small["seed"], api_name="/random_seeds")
        out = c.predict("uci-digits", class_name, "dataset", [], None, None, 3, "mean", **small,
                        api_name="/run_bo")  # no selection: seed_plan's first batch, as random_seeds shows it
        again, _ = c.predict(small["lam"], True, 1.0, api_name="/regenerate")
        return seeds, out, again

    classes = ["1", "2", "3", "4"]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, classes))
    for class_name, (seeds, out, again) in zip(classes, results):
        assert len(seeds) == 3 and {int(labels[s]) for s in seeds} == {int(class_name)}
        assert [item["caption"] for item in out[2]] == [s.rsplit("/", 1)[-1] for s in seeds]
        assert len(out[3]) == 3 and f"class **{class_name}**" not in out[4]  # the final readout, not the start
        assert _image_bytes(again) == _image_bytes(out[3])  # the session's own batch came back


def test_sweep_labels_every_column_inside_the_image():
    import numpy as np
    from PIL import Image

    from adaptive_dd.app_handlers import labelled_grid

    gammas = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    grid = labelled_grid([Image.new("L", (64, 64), 255)] * 14, (1.0, 2.0), gammas)
    band = np.asarray(grid.convert("L").crop((0, 0, grid.width, 56)))
    ink = np.flatnonzero((band < 128).any(0))
    assert ink.max() < grid.width - 1  # the last label ends before the edge
    last = band[:, 56 + 6 * 64:]
    assert (last < 128).any(0).sum() > 30  # and is all there: "gamma=0.9" spans most of its column


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _folder(pattern: str) -> tuple[int, float]:
    """Files under the folders matching pattern, and their size in MB."""
    from pathlib import Path

    files = [p for d in glob.glob(pattern) for p in Path(d).rglob("*") if p.is_file()]
    return len(files), sum(f.stat().st_size for f in files) / 1e6


def test_thirty_bo_runs_in_a_row_keep_memory_and_temp_files_flat(client):
    """The soak a public Space needs: over 30 BO runs of one session RSS grows < 100 MB, and the session's folder
    of served images holds one run's worth however many runs it makes."""
    from adaptive_dd.app_handlers import SESSION_PREFIX

    tiny = {**SETTINGS, "budget": 2, "steps": 4}
    session = f"{APP_SESSION_DIRS.rsplit('/', 1)[0]}/{SESSION_PREFIX}{client.session_hash}"
    for seed in range(3):  # warm-up: first-call allocations are not growth
        client.predict("uci-digits", "2", "dataset", [], None, None, 3, "mean", **{**tiny, "seed": seed},
                       api_name="/run_bo")
    rss0, (n0, mb0), t0 = _rss_mb(), _folder(session), time.monotonic()
    peak = 0
    for seed in range(30):  # a new seed each time: new images
        out = client.predict("uci-digits", str(seed % 10), "dataset", [], None, None, 3, "mean",
                             **{**tiny, "seed": 100 + seed}, api_name="/run_bo")
        assert len(out[3]) == 3
        peak = max(peak, _folder(session)[0])
    seconds, grown, (n, mb) = time.monotonic() - t0, _rss_mb() - rss0, _folder(session)
    print(f"soak: 30 runs in {seconds:.1f} s, RSS +{grown:.1f} MB; session folder {n0} files ({mb0:.3f} MB) "
          f"after the warm-up, {n} ({mb:.3f} MB) after 30 more runs, at most {peak}")
    assert grown < 100, f"RSS grew by {grown:.0f} MB over 30 BO runs"
    assert n0 > 0 and peak <= n0 + 3, "the session's folder grows with every run"  # 3 proxies per BO step


def test_heatmap_colour_range_follows_the_objective():
    from adaptive_dd.app_handlers import COLOUR_STOPS
    from adaptive_dd.fidelity import OBJECTIVES

    assert set(COLOUR_STOPS) == set(OBJECTIVES)
    for stops in COLOUR_STOPS.values():
        assert all(list(v) == sorted(v) and len(set(v)) == len(v) for v in stops.values())
    assert COLOUR_STOPS["confidence"]["mean"][-1] < 0.1 < COLOUR_STOPS["kl_novelty"]["mean"][-1]


def test_settings_carry_the_bo_cost_options_and_the_mode_presets_them(client):
    import gradio as gr

    from adaptive_dd import app_handlers as S
    from adaptive_dd.config import BO_MODES, CPU_CLASS_GROUP, DistillConfig

    chosen = {"bo_mode": "fast", "bo_scope": "class", "proxy_seeds": 2, "warm_budget": 1, "first_warm_budget": 3,
              "early_stop": True, "freeze_after": 5, "q": 2, "proxy_steps": 3, "design_q": 3, "kernel_scope": "class",
              "warm_design": "ucb", "class_group": 3, "choice": "best"}
    cfg = S.Settings(**{**SETTINGS, **chosen}).config("uci-digits", ["3"], 4, 4)
    assert (cfg.bo.mode, cfg.bo.scope, cfg.bo.proxy_seeds, cfg.bo.warm_budget, cfg.bo.first_warm_budget,
            cfg.bo.early_stop, cfg.bo.freeze_after, cfg.bo.q, cfg.sampler.proxy_steps, cfg.bo.design_q,
            cfg.bo.kernel_scope, cfg.bo.warm_design, cfg.bo.class_group, cfg.bo.choice) == \
        ("fast", "class", 2, 1, 3, True, 5, 2, 3, 3, "class", "ucb", 3, "best")
    d = S.default_settings()
    assert d.bo_mode == DistillConfig().bo.mode
    assert all(getattr(d, {"scope": "bo_scope"}.get(k, k)) == v for k, v in BO_MODES[d.bo_mode].items()
               if k != "proxy_stride")
    updates = S.on_bo_mode("paper")
    assert [u["value"] for u in updates] == [1, 0, "batch", "batch", "top", 0, 0, 0, False, 0, 1, "best", 0]
    fast = S.Settings(**{**SETTINGS, **S.mode_settings("fast")}).config("uci-digits", None, 4, 4)
    assert fast.bo.class_group == (CPU_CLASS_GROUP if S.models().device.startswith("cpu") else 1)  # by the device
    with pytest.raises(gr.Error, match="proxy seeds must be >= 0"):
        S.Settings(**{**SETTINGS, "proxy_seeds": -1}).config("uci-digits", ["3"], 4, 4)


def test_the_heatmap_stars_the_chosen_point_and_the_readout_names_it_when_it_is_not_the_best():
    import torch

    from adaptive_dd.app_handlers import chosen_note, heatmap
    from adaptive_dd.bo import GridBO
    from adaptive_dd.distill import BOStep

    for choice, star, note in (("one_se", "1", "chosen β=1, γ=0.3, f=0.4800"), ("best", "5", "")):
        bo = GridBO((1.0, 2.0, 5.0), (0.3, 0.5), choice=choice)
        bo.tell([(2, 0), (0, 0)], [0.5, 0.48], [(0.50, 0.60, 0.40, 0.50), (0.56, 0.48, 0.40, 0.48)])
        step = BOStep("3", 3, 0, 2, bo.observations, bo.snapshot(), torch.zeros(2, 4, 1, 8, 8),
                      torch.zeros(4, 1, 8, 8))
        fig = heatmap(step.posterior, step.observations, step.chosen, "mean", 2, "confidence")
        assert (fig.data[-1].name, fig.data[-1].y, fig.data[-1].x) == ("chosen", (star,), ("0.3",))
        assert (note in chosen_note(step)) and bool(chosen_note(step)) == bool(note)
