"""Stable Diffusion pipelines with random weights, built offline, for tests and cost measurements.

No hub is needed: the CLIP tokenizer is built from a byte-level vocabulary written locally. "tiny" is the
shape diffusers' own tests use; "sd15" has Stable Diffusion v1.5's UNet, VAE and text encoder shapes, so its
FLOPs and memory are those of the real model (they do not depend on the weights). Either is saved with
save_pretrained and loads through the same StableDiffusionBackend as a downloaded model.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

PRESETS = {
    "tiny": {
        "unet": dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32),
        "vae": dict(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                    down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2),
        "text": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5),
    },
    "sd15": {
        "unet": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, sample_size=64, in_channels=4,
                     out_channels=4, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
                     attention_head_dim=8),
        "vae": dict(block_out_channels=[128, 256, 512, 512], in_channels=3, out_channels=3, latent_channels=4,
                    layers_per_block=2, sample_size=512, scaling_factor=0.18215,
                    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4),
        "text": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                     projection_dim=768, hidden_act="quick_gelu", vocab_size=49408),
    },
}


def _byte_symbols() -> list[str]:
    """The 256 byte-level symbols of GPT-2/CLIP BPE (printable bytes as themselves, the rest shifted past 255)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def offline_tokenizer(directory: Path):
    """A CLIPTokenizer with a byte-level vocabulary, no merges and CLIP's special tokens, written to directory."""
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"])}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77)


def build_random_sd(directory: str | Path, preset: str = "tiny", seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Assemble an img2img pipeline of the preset's shape with random weights and save it to directory."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    directory = Path(directory)
    shapes = PRESETS[preset]
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = offline_tokenizer(Path(tmp))
    text_kwargs = {"vocab_size": len(tokenizer), **shapes["text"]}
    text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1, layer_norm_eps=1e-5,
                                        max_position_embeddings=77, **text_kwargs))
    pipe = StableDiffusionImg2ImgPipeline(
        vae=AutoencoderKL(**shapes["vae"]), text_encoder=text, tokenizer=tokenizer,
        unet=UNet2DConditionModel(**shapes["unet"]),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(dtype=dtype).save_pretrained(directory)
    return directory
