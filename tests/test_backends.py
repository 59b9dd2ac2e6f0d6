import json
import shutil

import pytest
import torch

from adaptive_dd import backends
from adaptive_dd.backends import ClassLatentUNetBackend, create_backend
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


def _edit_meta(d, **changes):
    meta = json.loads((d / "adaptive_dd.json").read_text())
    meta.update(changes)
    (d / "adaptive_dd.json").write_text(json.dumps(meta))


def test_pixel_unet_whose_size_disagrees_with_its_config_is_named(tiny_unet_dir, tmp_path):
    d = _copy(tiny_unet_dir, tmp_path / "m")
    _edit_meta(d, image_size=16)
    with pytest.raises(ModelLoadError, match=r"16 px images but .*unet/config.json takes 1 x 8"):
        create_backend(str(d))


def test_unknown_backbone_type_is_named(tiny_unet_dir, tmp_path):
    d = _copy(tiny_unet_dir, tmp_path / "m")
    _edit_meta(d, type="class-transformer")
    with pytest.raises(ModelLoadError, match=r"adaptive_dd.json: unknown type 'class-transformer'"):
        create_backend(str(d))


def test_latent_unet_round_trip_shapes(tiny_latent_backend):
    b = tiny_latent_backend
    assert isinstance(b, ClassLatentUNetBackend) and b.image_size == 16 and b.channels == 1
    assert b.latent_shape == (4, 8, 8) and b.scheduler_config["clip_sample"] is False
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    z = b.encode(images)
    assert z.shape == (3, 4, 8, 8)
    torch.testing.assert_close(z, b.encode(images), rtol=0, atol=0)  # the posterior mean: no sampling
    torch.testing.assert_close(z, b.vae.encode(images * 2 - 1).latent_dist.mean * 1.5)
    out = b.decode(z)
    assert out.shape == (3, 1, 16, 16) and 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("sub,file", [("vae", "config.json"), ("vae", "diffusion_pytorch_model.safetensors")])
def test_latent_unet_without_its_vae_names_the_file(tiny_latent_unet_dir, tmp_path, sub, file):
    d = _copy(tiny_latent_unet_dir, tmp_path / "m")
    (d / sub / file).unlink()
    with pytest.raises(ModelLoadError, match=f"{sub}/{file} is missing"):
        create_backend(str(d))


def test_latent_unet_with_a_corrupted_vae_is_an_error(tiny_latent_unet_dir, tmp_path):
    d = _copy(tiny_latent_unet_dir, tmp_path / "m")
    (d / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(ModelLoadError, match="does not load: vae/"):
        create_backend(str(d))


def test_latent_channels_of_vae_and_unet_must_agree(tiny_latent_unet_dir, tmp_path):
    from diffusers import AutoencoderKL

    d = _copy(tiny_latent_unet_dir, tmp_path / "m")
    shutil.rmtree(d / "vae")
    AutoencoderKL(in_channels=1, out_channels=1, latent_channels=3, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  layers_per_block=1, norm_num_groups=4).save_pretrained(d / "vae")
    with pytest.raises(ModelLoadError, match=r"vae/config.json has 3 latent channels but .*unet/config.json takes 4"):
        create_backend(str(d))


@pytest.mark.parametrize("changes,match", [
    ({"image_size": 32}, r"32 px images but .*unet/config.json samples 8 x 8 latents, which .*vae/config.json "
                         r"\(downsampling x2\) decodes to 16 px"),
    ({"latent_shape": [4, 16, 16]}, r"latent_shape \[4, 16, 16\] but .*give \[4, 8, 8\]"),
    ({"channels": 3}, r"3-channel images but .*vae/config.json takes 1"),
    ({"classes": [str(i) for i in range(5)]}, r"5 classes in adaptive_dd.json but the UNet .* has 11 class embeddings"),
])
def test_latent_unet_config_disagreements_are_named(tiny_latent_unet_dir, tmp_path, changes, match):
    d = _copy(tiny_latent_unet_dir, tmp_path / "m")
    _edit_meta(d, **changes)
    with pytest.raises(ModelLoadError, match=match):
        create_backend(str(d))


def test_bundled_backbone_is_a_latent_unet_at_mnist_resolution():
    b = create_backend("bundled")
    assert isinstance(b, ClassLatentUNetBackend) and b.image_size >= 28 and b.channels == 1
    assert b.scheduler_config["clip_sample"] is False and b.scheduler_config.get("thresholding") is False
    assert len(b.classes) == 10 and b.default_lambda > 0


def test_schedulers_are_fresh_copies_of_the_config_and_overrides(tiny_backend):
    import diffusers

    first = tiny_backend.make_scheduler("DDIMScheduler")
    first.set_timesteps(10)
    again = tiny_backend.make_scheduler("DDIMScheduler")  # the first one's state does not leak into the next
    assert again.num_inference_steps is None and again is not first
    fresh = diffusers.DDIMScheduler.from_config(tiny_backend.scheduler_config)
    assert dict(again.config) == dict(fresh.config) and torch.equal(again.alphas_cumprod, fresh.alphas_cumprod)
    other = tiny_backend.make_scheduler("DDIMScheduler", clip_sample=not fresh.config.clip_sample)
    assert other.config.clip_sample is not fresh.config.clip_sample
    assert tiny_backend.make_scheduler("DDIMScheduler").config.clip_sample == fresh.config.clip_sample
    assert type(tiny_backend.make_scheduler("EulerDiscreteScheduler")) is diffusers.EulerDiscreteScheduler
