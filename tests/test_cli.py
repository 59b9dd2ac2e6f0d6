"""The command line in-process: every bad input is one clear error line, exit 2, and nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptive_dd.cli import main
from adaptive_dd.config import BO_MODES, proxy_steps_for
from adaptive_dd.data import load_dataset

# Four steps (two proxy steps) need gamma >= 0.5 to run a denoising step in the proxy.
TINY_RUN = ["--ipc", "3", "--m-seed", "2", "--budget", "2", "--steps", "4", "--gammas", "0.5,1", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random 8-pixel class-conditional UNet over the digit classes: loads in well under a second."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel

    d = tmp_path_factory.mktemp("tiny-unet")
    torch.manual_seed(0)
    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=11).save_pretrained(d / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(d / "scheduler")
    (d / "adaptive_dd.json").write_text(json.dumps({
        "type": "class-unet", "classes": [str(i) for i in range(10)], "null_class": 10, "image_size": 8,
        "channels": 1, "beta_grid": [0, 1, 2], "default_lambda": 1.0}))
    return str(d)


def _fail(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> str:
    """Run distill expecting a usage error; return its message after checking that nothing was written."""
    out = tmp_path / "out"
    before = sorted(tmp_path.iterdir())
    code = main(["distill", "--out", str(out), "--device", "cpu", *args])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adaptive-dd: error: "), err
    assert sorted(tmp_path.iterdir()) == before, "the failed run left files beside the output"
    return lines[0]


@pytest.mark.parametrize("args,needle", [
    (["--gammas", "0.5,1.5"], "gamma (img2img strength) must be in (0, 1], got 1.5"),
    (["--gammas", "0"], "gamma (img2img strength) must be in (0, 1], got 0.0"),
    (["--betas", "-1,2"], "beta (CFG scale) must be >= 0, got -1.0"),
    (["--lam", "-1"], "lambda (repulsion weight) must be >= 0, got -1.0"),
    (["--bandwidth", "0"], "bandwidth must be a positive number"),
    (["--bandwidth", "-1"], "bandwidth must be a positive number"),
    (["--ipc", "0"], "IPC must be >= 1, got 0"),
    (["--m-seed", "0"], "m_seed must be >= 1, got 0"),
    (["--classes", ""], "the class list is empty"),
    (["--classes", " , "], "the class list is empty"),
    (["--steps", "3"], "gamma 0.3 with 3 steps runs no denoising step"),
    (["--steps", "50", "--proxy-steps", "20"], "proxy_steps must divide steps (50)"),
    (["--temperature", "0"], "objective temperature must be a positive number, got 0.0"),
    (["--novelty-weight", "-1", "--objective", "kl_novelty"], "novelty weight must be >= 0, got -1.0"),
    (["--proxy-seeds", "-1"], "proxy seeds must be >= 0 (0: all seeds of the batch), got -1"),
    (["--warm-budget", "-2"], "warm budget (evaluations of a warm-started batch) must be >= 0"),
    (["--first-warm-budget", "-1"], "first warm budget (evaluations of a class's first mini-batch when warm-started) "
                                    "must be >= 0"),
    (["--freeze-after", "-1"], "freeze_after (points the GP is fitted to before its kernel is fixed) must be >= 0"),
    (["--q", "0"], "q must be >= 1, got 0"),
    (["--design-q", "-1"], "design q (candidates per round of the initial design) must be >= 0 (0: q), got -1"),
    (["--class-group", "-1"], "class group (classes whose first proxy rounds share one sampler call) must be >= 0"),
])
def test_config_errors(args: list[str], needle: str, tmp_path: Path, capsys) -> None:
    assert needle in _fail(args, tmp_path, capsys)


def test_unknown_class_is_refused_before_output(tiny_model: str, tmp_path: Path, capsys) -> None:
    msg = _fail(["--classes", "0,banana", "--model", tiny_model], tmp_path, capsys)
    assert "'banana'" in msg and "uci-digits" in msg


def test_missing_data_path(tiny_model: str, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-such-data"
    msg = _fail(["--data", str(missing), "--model", tiny_model], tmp_path, capsys)
    assert str(missing) in msg


def test_image_folder_needs_a_teacher(tiny_model: str, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    for c in ("0", "1"):
        (data / c).mkdir(parents=True)
        Image.new("L", (8, 8), 99).save(data / c / "a.png")
    msg = _fail(["--data", str(data), "--model", tiny_model, *TINY_RUN], tmp_path, capsys)
    assert "no bundled teacher" in msg and "--teacher" in msg


def test_foreign_output_directory_is_kept(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    code = main(["distill", "--out", str(out), "--device", "cpu"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert str(out) in lines[0] and "--overwrite" in lines[0]
    assert [p.name for p in out.iterdir()] == ["thesis.tex"] and (out / "thesis.tex").read_text() == "precious"


def test_output_parent_missing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "missing" / "out"
    assert main(["distill", "--out", str(out), "--device", "cpu"]) == 2
    assert str(out.parent) in capsys.readouterr().err
    assert not out.parent.exists()


def _manifest_images(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    for c in manifest["classes"]:
        pngs = sorted(p.name for p in (out / c["folder"]).iterdir())
        assert pngs == ["0000.png", "0001.png", "0002.png"], c
        for name in pngs:
            im = Image.open(out / c["folder"] / name)
            assert im.mode == "L" and im.size == (8, 8)
    return manifest


def test_tiny_run_writes_ipc_images_per_class(tiny_model: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["distill", "--classes", "0,1", "--model", tiny_model, "--out", str(out), *TINY_RUN])
    assert code == 0, capsys.readouterr().err
    assert "6 images" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["0", "1", "manifest.json"]
    manifest = _manifest_images(out)
    assert len(manifest["images"]) == 6
    assert [img["file"] for img in manifest["images"]] == [f"{c}/{k:04d}.png" for c in "01" for k in range(3)]
    assert [(c["name"], c["n_images"], c["seeds_wrapped"]) for c in manifest["classes"]] == \
        [("0", 3, False), ("1", 3, False)]
    train = load_dataset("uci-digits", "train")
    label = dict(zip(train.ids, train.labels.tolist()))
    for c in "01":
        seeds = [img["seed_id"] for img in manifest["images"] if img["class"] == c]
        assert len(set(seeds)) == 3 and {label[s] for s in seeds} == {int(c)}
    assert all(img["gamma"] in (0.5, 1.0) and img["beta"] in (0, 1, 2) for img in manifest["images"])


def test_image_folder_with_fewer_images_than_ipc_wraps(tiny_model: str, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c, n in (("0", 2), ("1", 3)):
        (data / c).mkdir(parents=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(data / c / f"{k}.png")
    out = tmp_path / "out"
    code = main(["distill", "--data", str(data), "--teacher", "uci-digits", "--model", tiny_model,
                 "--out", str(out), *TINY_RUN])
    assert code == 0, capsys.readouterr().err
    manifest = _manifest_images(out)
    assert {c["name"]: c["seeds_wrapped"] for c in manifest["classes"]} == {"0": True, "1": False}
    seeds = {c: [img["seed_id"] for img in manifest["images"] if img["class"] == c] for c in "01"}
    assert len(seeds["0"]) == 3 and set(seeds["0"]) == {"0/0.png", "0/1.png"}
    assert sorted(seeds["1"]) == ["1/0.png", "1/1.png", "1/2.png"]


def test_help_states_each_default_once_from_the_config(capsys) -> None:
    from adaptive_dd.cli import build_parser
    from adaptive_dd.config import DistillConfig

    with pytest.raises(SystemExit):
        build_parser().parse_args(["distill", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    options = text.split(" -h, --help ", 1)[1].split(" --")
    assert all(o.count("(default") <= 1 for o in options), [o for o in options if o.count("(default") > 1]
    assert "(default: None)" not in text
    cfg = DistillConfig()
    assert f"(default: {cfg.bo.budget})" in text and f"(default: {cfg.sampler.steps})" in text


def test_bo_cost_flags_reach_the_manifest(tiny_model: str, tmp_path: Path, capsys) -> None:
    """Every BO cost option is recorded; a preset fills only what the command line leaves unset."""
    out = tmp_path / "out"
    code = main(["distill", "--classes", "0", "--model", tiny_model, "--out", str(out), *TINY_RUN, "--bo-mode",
                 "paper", "--bo-scope", "class", "--proxy-seeds", "1", "--warm-budget", "1", "--first-warm-budget", "3",
                 "--early-stop", "--freeze-after", "3", "--q", "2", "--proxy-steps", "2", "--design-q", "3",
                 "--kernel-scope", "class", "--warm-design", "ucb", "--class-group", "2", "--choice", "one_se"])
    assert code == 0, capsys.readouterr().err
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "% of sampling time" in summary and "BO mode paper, scope class" in summary
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert {k: config["bo"][k] for k in ("mode", "scope", "proxy_seeds", "warm_budget", "first_warm_budget",
                                         "early_stop", "freeze_after", "q", "design_q", "kernel_scope",
                                         "warm_design", "class_group", "choice")} == \
        {"mode": "paper", "scope": "class", "proxy_seeds": 1, "warm_budget": 1, "first_warm_budget": 3,
         "early_stop": True, "freeze_after": 3, "q": 2, "design_q": 3, "kernel_scope": "class", "warm_design": "ucb",
         "class_group": 2, "choice": "one_se"}
    assert config["sampler"]["proxy_steps"] == 2
    history = [len(b["history"]) for b in json.loads((out / "manifest.json").read_text())["batches"]]
    assert history == [2, 1]  # the second batch starts from the first's observations: its warm budget of 1 (the
    # first warm budget is a class's first batch's, which the class scope searches cold)
    fast = tmp_path / "fast"
    assert main(["distill", "--classes", "0", "--model", tiny_model, "--out", str(fast), *TINY_RUN]) == 0
    config = json.loads((fast / "manifest.json").read_text())["config"]
    preset = {**BO_MODES["fast"], "class_group": 4}  # the preset's 0 resolved for a CPU run
    assert config["bo"]["mode"] == "fast" and all(config["bo"][k] == v for k, v in preset.items() if k in config["bo"])
    assert config["sampler"]["proxy_steps"] == proxy_steps_for(4, preset["proxy_stride"]) == 1
