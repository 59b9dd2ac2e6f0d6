"""The Stable Diffusion backend, end to end, on a tiny random pipeline saved to disk (no hub)."""
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    from adaptive_dd.demo.random_sd import build_random_sd

    return build_random_sd(tmp_path_factory.mktemp("tiny_sd"), "tiny")


def test_stable_diffusion_backend_runs_the_sampler_end_to_end(tiny_sd_dir):
    from adaptive_dd.backends import StableDiffusionBackend, create_backend
    from adaptive_dd.sampler import img2img

    backend = create_backend(str(tiny_sd_dir), prompt="a photo of a {name}", negative_prompt="cartoon")
    assert isinstance(backend, StableDiffusionBackend) and backend.image_size == 32 and backend.classes is None
    assert backend.default_betas[0] == 1.0 and backend.default_betas[-1] == 10.0
    seeds = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = img2img(backend, seeds, ["tench", "goldfish", "tench"], [2.0, 5.0, 2.0], [0.5, 0.8, 0.5], [1, 2, 1],
                  steps=6, repulsion_weight=50.0)
    assert out.images.shape == (3, 3, 32, 32) and out.latents.shape == (3, 4, 16, 16)
    assert torch.isfinite(out.images).all()
    # prompts differ per class: the condition embeddings differ, the null (negative prompt) one is shared
    c = backend.condition(["tench", "goldfish"])
    assert not torch.allclose(c[0], c[1]) and backend.null_condition(2).shape == c.shape
    # an ImageNet class folder named by its WordNet id prompts with the readable name
    torch.testing.assert_close(backend.condition(["n01440764"]), c[:1], rtol=0, atol=0)
    alone = img2img(backend, seeds[:1], ["tench"], 2.0, 0.5, [1], steps=6)
    pair = img2img(backend, seeds[:2], ["tench", "goldfish"], [2.0, 5.0], [0.5, 0.8], [1, 2], steps=6)
    torch.testing.assert_close(pair.images[:1], alone.images, rtol=0, atol=1e-4)


def test_a_directory_that_is_no_model_is_refused(tmp_path):
    from adaptive_dd.backends import create_backend
    from adaptive_dd.fidelity import ModelLoadError

    (tmp_path / "random.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="neither"):
        create_backend(str(tmp_path))


@pytest.mark.parametrize("beta,gamma,steps", [(1.0, 0.5, 20), (3.0, 0.7, 30), (7.5, 0.3, 50)])
def test_lambda_zero_equals_diffusers_img2img_pipeline(tiny_sd_dir, beta, gamma, steps):
    """A reference outside our code: diffusers' StableDiffusionImg2ImgPipeline, given the same latents as `image`
    (4 channels are taken as latents), prompts, per-sample generators and eta 0, matches our sampler at lambda 0."""
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    from adaptive_dd.backends import create_backend
    from adaptive_dd.sampler import img2img

    backend = create_backend(str(tiny_sd_dir), prompt="a photo of a {name}", negative_prompt="cartoon")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    seeds = [5, 9]
    ours = img2img(backend, images, ["tench", "tench"], beta, gamma, seeds, steps=steps)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(tiny_sd_dir), safety_checker=None,
                                                          requires_safety_checker=False, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(backend.scheduler_config)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(["a photo of a tench"] * 2, image=backend.encode(images), strength=gamma, guidance_scale=beta,
               num_inference_steps=steps, negative_prompt=["cartoon"] * 2, eta=0.0, output_type="pt",
               generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    torch.testing.assert_close(ours.images, ref.float(), rtol=0, atol=2e-5)


def test_the_hub_backbones_run_the_vae_one_image_at_a_time(tiny_sd_dir, monkeypatch):
    """At 512 px the VAE's activations set the peak memory, so SD (and DiT) encode and decode per image: one VAE call
    per image, each image exactly what it gives alone. The bundled backbone keeps one call per batch."""
    from adaptive_dd.backends import create_backend

    sd = create_backend(str(tiny_sd_dir))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calls: list[int] = []
    for name in ("encode", "decode"):
        real = getattr(sd.vae, name)
        monkeypatch.setattr(sd.vae, name, lambda x, real=real: calls.append(len(x)) or real(x))
    latents = sd.encode(images)
    decoded = sd.decode(latents)
    assert calls == [1, 1, 1, 1, 1, 1]
    for k in range(3):
        torch.testing.assert_close(sd.encode(images[k:k + 1]), latents[k:k + 1], rtol=0, atol=0)
        torch.testing.assert_close(sd.decode(latents[k:k + 1]), decoded[k:k + 1], rtol=0, atol=0)
    bundled = create_backend("bundled")
    calls.clear()
    for name in ("encode", "decode"):
        real = getattr(bundled.vae, name)
        monkeypatch.setattr(bundled.vae, name, lambda x, real=real: calls.append(len(x)) or real(x))
    bundled.decode(bundled.encode(torch.rand(3, 1, 32, 32)))
    assert calls == [3, 3]


def test_the_sd15_unet_chunks_the_feed_forward_of_its_4096_token_blocks_alone():
    """At 512 px the 64 x 64 levels (the first down block, the last up block) are the ones whose feed-forward sets a
    UNet call's peak memory; the 1,024-token and smaller levels run whole (built on the meta device: no weights)."""
    from diffusers import UNet2DConditionModel

    from adaptive_dd.backends import SD_FF_TOKENS, chunk_feed_forward
    from adaptive_dd.demo.random_sd import PRESETS

    with torch.device("meta"):
        unet = UNet2DConditionModel(**PRESETS["sd15"]["unet"])
    assert chunk_feed_forward(unet, SD_FF_TOKENS) == [4096, 4096]
    chunked = {".".join(name.split(".")[:2]) for name, m in unet.named_modules() if getattr(m, "_chunk_size", None)}
    assert chunked == {"down_blocks.0", "up_blocks.3"}
    blocks = [m for m in unet.down_blocks[0].modules() if hasattr(m, "set_chunk_feed_forward")]
    assert len(blocks) == 2 and all((m._chunk_size, m._chunk_dim) == (SD_FF_TOKENS, 1) for m in blocks)


def test_a_chunked_feed_forward_sees_chunks_of_its_tokens_and_predicts_the_same_noise(tiny_sd_dir):
    """The tiny UNet's attention level has 8 x 8 = 64 tokens: chunked by 16, each feed-forward call sees 16 tokens,
    and the noise prediction is the whole one's. The backend keeps its text encoder on the CPU in fp32 and hands
    the embeddings over on its device, in its dtype."""
    from adaptive_dd.backends import SD_DENOISER_ROWS, StableDiffusionBackend, chunk_feed_forward

    backend = StableDiffusionBackend(str(tiny_sd_dir))
    assert backend.denoiser_rows == SD_DENOISER_ROWS
    assert {(p.device.type, p.dtype) for p in backend.text_encoder.parameters()} == {("cpu", torch.float32)}
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(3, 4, 16, 16, generator=g), torch.tensor([900, 500, 100])
    cond = backend.condition(["tench", "goldfish", "tench"])
    assert (cond.device, cond.dtype) == (backend.device, backend.dtype)
    whole = backend.predict_noise(z, t, cond)
    assert chunk_feed_forward(backend.unet, 16) == [64, 64]
    seen = []
    for m in backend.unet.modules():
        if getattr(m, "_chunk_size", None):
            m.ff.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
    chunked = backend.predict_noise(z, t, cond)
    assert seen and set(seen) == {16} and len(seen) % 4 == 0
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
