"""A DiT pipeline with random weights in diffusers' layout, built offline, for tests and cost measurements.

    python -m adaptive_dd.demo.random_dit OUT [--num-classes N] [--preset tiny|xl]

"tiny" is a few-layer DiTTransformer2DModel over a two-block AutoencoderKL (16 px images, 4x8x8 latents); "xl"
has DiT-XL/2-256's transformer and Stable Diffusion's VAE shapes, so its FLOPs and memory are the real model's.
As in facebook/DiT-XL-2-256, the transformer predicts noise and a learned variance (out_channels = 2 x latent
channels), class index num_classes is the null class, and model_index.json carries id2label: here ImageNet's
readable names when num_classes is 1000, else "class 0", "class 1", ... The folder loads with `--model OUT`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

PRESETS = {
    "tiny": {
        "transformer": dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, sample_size=8, patch_size=2),
        "vae": dict(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                    up_block_types=["UpDecoderBlock2D"] * 2),
    },
    "xl": {
        "transformer": dict(num_attention_heads=16, attention_head_dim=72, num_layers=28, sample_size=32,
                            patch_size=2),
        "vae": dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, sample_size=256,
                    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4),
    },
}


def id2label(num_classes: int) -> dict[str, str]:
    from ..imagenet import NUM_CLASSES, classes

    if num_classes == NUM_CLASSES:
        return {str(c.index): c.name for c in classes()}
    return {str(i): f"class {i}" for i in range(num_classes)}


def build_random_dit(directory: str | Path, num_classes: int = 1000, preset: str = "tiny", seed: int = 0,
                     dtype: torch.dtype = torch.float32) -> Path:
    """Assemble a DiTPipeline of the preset's shape with random weights and save it to directory."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    directory = Path(directory)
    shapes = PRESETS[preset]
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(in_channels=4, out_channels=8, num_embeds_ada_norm=num_classes,
                                        **shapes["transformer"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, scaling_factor=0.18215, **shapes["vae"])
    # DiT-XL-2-256's scheduler: linear betas, no clipping (its latents are not bounded like pixels)
    scheduler = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False)
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler)
    (pipe if dtype == torch.float32 else pipe.to(dtype=dtype)).save_pretrained(directory)
    # DiTPipeline does not save id2label (it is no registered config); the hub folders keep it in model_index.json
    index_path = directory / "model_index.json"
    index = json.loads(index_path.read_text())
    index["id2label"] = id2label(num_classes)
    index_path.write_text(json.dumps(index, indent=2))
    return directory


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m adaptive_dd.demo.random_dit", description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder to write (diffusers layout)")
    p.add_argument("--num-classes", type=int, default=1000, help="class labels (null class = this number)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.num_classes < 1:
        p.error(f"--num-classes must be >= 1, got {a.num_classes}")
    print(build_random_dit(a.out, a.num_classes, a.preset, a.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
