import json
import shutil

import pytest

from adaptive_dd import backends
from adaptive_dd.backends import create_backend
from adaptive_dd.fidelity import ModelLoadError


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_weights_name_the_file(tiny_unet_dir, tmp_path):
    d = _copy(tiny_unet_dir, tmp_path / "m")
    (d / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="diffusion_pytorch_model.safetensors is missing"):
        create_backend(str(d))


def test_corrupted_weights_are_an_error_not_random_weights(tiny_unet_dir, tmp_path):
    d = _copy(tiny_unet_dir, tmp_path / "m")
    (d / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(ModelLoadError, match="does not load"):
        create_backend(str(d))


def test_config_weights_mismatch_is_named(tiny_unet_dir, tmp_path):
    d = _copy(tiny_unet_dir, tmp_path / "m")
    meta = json.loads((d / "adaptive_dd.json").read_text())
    meta["classes"] = meta["classes"][:5]
    (d / "adaptive_dd.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="class embeddings"):
        create_backend(str(d))


def test_missing_bundled_backbone_says_how_to_regenerate(tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "BUNDLED_BACKBONE", tmp_path / "backbone-mnist-5k")
    with pytest.raises(ModelLoadError, match="python -m adaptive_dd.demo.train backbone"):
        create_backend("bundled")


def test_unknown_scheduler_and_unknown_class(tiny_backend):
    with pytest.raises(ModelLoadError, match="unknown scheduler"):
        tiny_backend.make_scheduler("NoSuchScheduler")
    with pytest.raises(ValueError, match="'cat' is not one of the backbone's classes"):
        tiny_backend.condition(["cat"])
