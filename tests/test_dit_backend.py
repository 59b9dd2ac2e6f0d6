"""The DiT backend on a tiny random-weight DiTPipeline written by `python -m adaptive_dd.demo.random_dit`."""
from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def dit(tiny_dit_dir):
    from adaptive_dd.backends import create_backend

    return create_backend(str(tiny_dit_dir))


def test_random_dit_command_writes_a_folder_that_loads(tmp_path, capsys) -> None:
    from adaptive_dd.backends import create_backend
    from adaptive_dd.demo.random_dit import main

    assert main([str(tmp_path / "dit"), "--num-classes", "3"]) == 0
    assert create_backend(str(tmp_path / "dit")).null_condition(1).tolist() == [3]


def test_random_dit_folder_loads_as_a_dit_backend(tiny_dit_dir, dit) -> None:
    from adaptive_dd.backends import DiTBackend

    index = json.loads((tiny_dit_dir / "model_index.json").read_text())
    assert index["_class_name"] == "DiTPipeline" and index["id2label"]["217"] == "English springer"
    assert isinstance(dit, DiTBackend) and dit.num_classes == 1000 and dit.learned_sigma
    assert dit.image_size == 16 and dit.channels == 3 and len(dit.classes) == 1000
    assert dit.default_betas == (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0)
    assert dit.default_lambda == pytest.approx(2000 * (4 * 8 * 8) / (4 * 64 * 64))  # 500 at DiT-XL/2-256's 4x32x32
    assert dit.make_scheduler("DDIMScheduler").config.num_train_timesteps == 1000
    assert dit.vae_chunk == 1  # its VAE runs one image at a time, as Stable Diffusion's (test_sd_backend)


def test_class_names_map_through_id2label_and_wordnet_ids(dit) -> None:
    assert dit.condition(["tench", "n02102040", "English springer"]).tolist() == [0, 217, 217]
    assert dit.null_condition(2).tolist() == [1000, 1000]
    with pytest.raises(ValueError, match="'n99999999' is not one of the backbone's classes.*1000 in all"):
        dit.condition(["n99999999"])


def test_a_model_with_other_classes_maps_names_only_through_its_labels(tmp_path) -> None:
    from adaptive_dd.backends import create_backend
    from adaptive_dd.demo.random_dit import build_random_dit

    folder = build_random_dit(tmp_path / "dit10", num_classes=10)
    small = create_backend(str(folder))
    assert small.classes[:2] == ["class 0", "class 1"] and small.condition(["class 3"]).tolist() == [3]
    assert small.null_condition(1).tolist() == [10]
    assert not small.supports("n01440764")  # a wnid means an ImageNet index only for 1000-class models
    # hub folders list aliases ("tench, Tinca tinca"): each one conditions, the first names the class
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = {str(i): f"zebra {i}, Equus {i}" for i in range(10)}
    (folder / "model_index.json").write_text(json.dumps(index))
    aliased = create_backend(str(folder))
    assert aliased.classes[:2] == ["zebra 0", "zebra 1"] and aliased.condition(["Equus 7", "zebra 2"]).tolist() == [7, 2]


def test_predict_noise_returns_the_noise_half_for_scalar_and_per_sample_timesteps(dit) -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 8, 8, generator=g)
    labels = torch.tensor([0, 217, 1000])
    full = dit.transformer(z, timestep=torch.tensor([500, 500, 500]), class_labels=labels).sample
    assert full.shape[1] == 8
    eps = dit.predict_noise(z, torch.tensor(500), labels)
    torch.testing.assert_close(eps, full[:, :4], rtol=0, atol=0)
    mixed = dit.predict_noise(z, torch.tensor([100, 500, 900]), labels)
    for i, t in enumerate((100, 500, 900)):
        alone = dit.predict_noise(z[i:i + 1], torch.tensor(t), labels[i:i + 1])
        torch.testing.assert_close(mixed[i:i + 1], alone, rtol=0, atol=1e-5)


def _dit_pipeline_img2img(dit, images, labels, scale, gamma, seeds, steps):
    """DiTPipeline.__call__'s loop (CFG on the noise channels, learned sigma dropped, DDIM step) started from the
    seeds' VAE latents noised to the img2img start timestep: the reference for the sampler on DiT."""
    from diffusers import DDIMScheduler

    vae, tr = dit.vae, dit.transformer
    sch = DDIMScheduler.from_config(dit.scheduler_config)
    sch.set_timesteps(steps)
    start = steps - int(steps * gamma)
    x0 = vae.encode(images * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])
    z = sch.add_noise(x0, noise, sch.timesteps[start:start + 1].repeat(len(x0)))
    y = torch.tensor(labels)
    for t in sch.timesteps[start:]:
        out = tr(torch.cat([z, z]), timestep=t[None].expand(2 * len(z)),
                 class_labels=torch.cat([y, torch.full_like(y, 1000)])).sample
        cond_eps, uncond_eps = out[:, :4].chunk(2)
        z = sch.step(uncond_eps + scale * (cond_eps - uncond_eps), t, z).prev_sample
    return (vae.decode(z / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def test_sampler_on_dit_equals_the_dit_pipeline_loop_from_noised_latents(dit) -> None:
    from adaptive_dd.sampler import img2img

    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ours = img2img(dit, images, ["tench", "n02102040"], 4.0, 0.5, [3, 4], steps=8)
    ref = _dit_pipeline_img2img(dit, images, [0, 217], 4.0, 0.5, [3, 4], steps=8)
    torch.testing.assert_close(ours.images, ref, rtol=0, atol=1e-5)
    plain = img2img(dit, images, ["tench", "tench"], 4.0, 0.5, [3, 4], steps=8)
    repelled = img2img(dit, images, ["tench", "tench"], 4.0, 0.5, [3, 4], steps=8, repulsion_weight=dit.default_lambda)
    assert torch.isfinite(repelled.images).all() and not torch.allclose(repelled.images, plain.images, atol=1e-3)
