"""The Stable Diffusion backend, end to end, on a tiny random pipeline saved to disk (no hub)."""
import json

import pytest
import torch


def _byte_symbols() -> list[str]:
    """The 256 byte-level symbols of GPT-2/CLIP BPE (printable bytes as themselves, the rest shifted past 255)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _tiny_tokenizer(directory):
    """A CLIPTokenizer built offline: byte-level vocabulary, no merges, CLIP's special tokens."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"])}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77)


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    d = tmp_path_factory.mktemp("tiny_sd")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    tok_dir = tmp_path_factory.mktemp("tok")
    tokenizer = _tiny_tokenizer(tok_dir)
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37,
                                        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=5,
                                        pad_token_id=1, vocab_size=len(tokenizer)))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(d)
    return d


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
    alone = img2img(backend, seeds[:1], ["tench"], 2.0, 0.5, [1], steps=6)
    pair = img2img(backend, seeds[:2], ["tench", "goldfish"], [2.0, 5.0], [0.5, 0.8], [1, 2], steps=6)
    torch.testing.assert_close(pair.images[:1], alone.images, rtol=0, atol=1e-4)


def test_a_directory_that_is_no_model_is_refused(tmp_path):
    from adaptive_dd.backends import create_backend
    from adaptive_dd.fidelity import ModelLoadError

    (tmp_path / "random.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="neither"):
        create_backend(str(tmp_path))
