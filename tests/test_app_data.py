"""The app on a dataset of one's own: --data / ADAPTIVE_DD_DATA, and every option from the environment."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import _free_port, _wait_ready
from PIL import Image

pytest.importorskip("gradio")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    """An ImageFolder of two digit classes the tiny UNet knows and one ("cat") it does not."""
    root = tmp_path_factory.mktemp("own") / "digits"
    for name in ("3", "5", "cat"):
        (root / name).mkdir(parents=True)
        for k in range(3):
            Image.new("L", (8, 8), 30 * k).save(root / name / f"{k}.png")
    return root


def test_help_lists_data_and_the_environment_variables(capsys) -> None:
    import app

    with pytest.raises(SystemExit):
        app.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--data" in out and "ADAPTIVE_DD_DATA" in out and "ADAPTIVE_DD_MODEL" in out
    assert "ADAPTIVE_DD_TEACHER" in out


def test_options_come_from_the_environment_and_the_command_line_wins(monkeypatch) -> None:
    import app

    for key in ("DATA", "MODEL", "TEACHER", "CLASSES", "DEVICE", "PORT", "HOST"):
        monkeypatch.delenv(f"ADAPTIVE_DD_{key}", raising=False)
    assert app.parse_args([]).data is None and app.parse_args([]).model == "bundled"
    monkeypatch.setenv("ADAPTIVE_DD_DATA", "/d/one, uci-digits")
    monkeypatch.setenv("ADAPTIVE_DD_MODEL", "facebook/DiT-XL-2-256")
    monkeypatch.setenv("ADAPTIVE_DD_TEACHER", "resnet18")
    monkeypatch.setenv("ADAPTIVE_DD_CLASSES", "imagewoof")
    monkeypatch.setenv("ADAPTIVE_DD_PORT", "7001")
    a = app.parse_args([])
    assert a.data == ["/d/one", "uci-digits"] and a.model == "facebook/DiT-XL-2-256" and a.teacher == "resnet18"
    assert a.port == 7001 and len(a.classes) == 10 and a.classes[0] == "n02086240"
    b = app.parse_args(["--data", "x", "--data", "y,z", "--model", "bundled", "--port", "7002", "--classes", "3,5"])
    assert b.data == ["x", "y", "z"] and b.model == "bundled" and b.port == 7002 and b.classes == ["3", "5"]


def _component(config: dict, label: str) -> dict:
    return next(c["props"] for c in config["components"] if c.get("props", {}).get("label") == label)


def _choices(props: dict) -> list[str]:
    return [c[1] if isinstance(c, (list, tuple)) else c for c in props["choices"]]


def test_the_explore_and_export_tabs_offer_the_folders_classes(digit_folder, tiny_unet_dir, tiny_teacher_dir) -> None:
    import app

    saved = app.S.MODELS  # the session's running app (conftest's app_url) reads the module's models
    try:
        models = app.S.load_models(str(tiny_unet_dir), str(tiny_teacher_dir), "cpu", None, [str(digit_folder)])
        config = app.build_demo(models).get_config_file()
    finally:
        app.S.MODELS = saved
    assert _choices(_component(config, "dataset")) == [str(digit_folder)]
    assert _choices(_component(config, "class")) == ["3", "5"]  # "cat" is no class the backbone knows
    assert _choices(_component(config, "classes")) == ["3", "5"]


def test_a_folder_without_a_teacher_or_known_classes_is_refused_naming_it(digit_folder, tiny_unet_dir,
                                                                        tiny_teacher_dir, tmp_path) -> None:
    from adaptive_dd import app_handlers

    saved = app_handlers.MODELS
    with pytest.raises(app_handlers.ModelLoadError, match=f"no bundled teacher for '{digit_folder}'"):
        app_handlers.load_models(str(tiny_unet_dir), None, "cpu", None, [str(digit_folder)])
    (tmp_path / "pets" / "cat").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "pets" / "cat" / "0.png")
    with pytest.raises(app_handlers.ModelLoadError, match=r"pets: none of its classes \(cat\) is one the backbone"):
        app_handlers.load_models(str(tiny_unet_dir), str(tiny_teacher_dir), "cpu", None, [str(tmp_path / "pets")])
    assert app_handlers.MODELS is saved


def test_app_starts_on_the_folder_in_adaptive_dd_data(digit_folder, tiny_unet_dir, tiny_teacher_dir) -> None:
    port = _free_port()
    env = {**os.environ, "ADAPTIVE_DD_DATA": str(digit_folder), "ADAPTIVE_DD_MODEL": str(tiny_unet_dir),
           "ADAPTIVE_DD_TEACHER": str(tiny_teacher_dir), "ADAPTIVE_DD_DEVICE": "cpu", "ADAPTIVE_DD_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_ready(url, timeout=120)
        with urllib.request.urlopen(url + "config", timeout=10) as r:
            config = json.load(r)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert _choices(_component(config, "dataset")) == [str(digit_folder)]
    assert _choices(_component(config, "classes")) == ["3", "5"]
