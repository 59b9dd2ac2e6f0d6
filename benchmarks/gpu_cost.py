"""Cost of the method at Stable Diffusion v1.5 size on a GPU (the paper's Table 5 row), with random weights.

    python benchmarks/gpu_cost.py [--classes 2] [--ipc 10] [--steps 50]
    python benchmarks/gpu_cost.py --preset tiny --device cpu --classes 1 --ipc 2 --steps 4   # dry run

Builds SD-1.5-shaped UNet, VAE and text encoder with random weights (FLOPs and memory do not depend on the
weights), saves them, loads them through StableDiffusionBackend in fp16 like a downloaded model, and runs the
whole engine (BO with half-step proxies, then the full sampler with repulsion) at 512 px on uci-digits seeds
with a random timm resnet18 teacher at 224 px. Reports seconds per image, the BO share, peak GPU memory, and
the repulsion overhead of the full sampler (interleaved lambda = 0 / lambda > 0 pairs, same noise).
Writes benchmarks/results/gpu_cost.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adaptive_dd.backends import StableDiffusionBackend  # noqa: E402
from adaptive_dd.config import DistillConfig, SamplerConfig  # noqa: E402
from adaptive_dd.data import load_dataset  # noqa: E402
from adaptive_dd.demo.random_sd import build_random_sd  # noqa: E402
from adaptive_dd.distill import Distiller, RunDone  # noqa: E402
from adaptive_dd.fidelity import Teacher, TeacherConfig  # noqa: E402


def timed(fn, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preset", choices=["sd15", "tiny"], default="sd15")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_cost.json")
    a = p.parse_args()
    cuda = a.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu (and --preset tiny) for a dry run")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        build_random_sd(tmp, a.preset, dtype=torch.float16 if cuda else torch.float32)
        backend = StableDiffusionBackend(tmp, a.device)
    build_s = time.perf_counter() - t0
    tcfg = TeacherConfig(model_name="resnet18", num_classes=10, in_chans=3, input_size=224,
                         classes=[str(i) for i in range(10)])
    teacher = Teacher(tcfg.build(), tcfg).to(a.device)
    data = load_dataset("uci-digits", "train")
    config = DistillConfig(data="uci-digits", model="sd15-random", classes=data.classes[: a.classes], ipc=a.ipc,
                           m_seed=min(10, a.ipc), device=a.device, sampler=SamplerConfig(steps=a.steps))
    dist = Distiller(config, backend, teacher, data)
    seeds = data.tensor(dist.seed_plan(data.classes[0])[0][0], backend.image_size, 3)
    names = [data.classes[0]] * len(seeds)
    lam = backend.default_lambda

    def full(weight: float):
        return lambda: dist.generate(seeds, names[0], 7.5, 0.7, list(range(len(seeds))), proxy=False, weight=weight)

    timed(full(0.0), backend.device), timed(full(lam), backend.device)  # warm-up: cuDNN autotuning, allocator
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    done = next(ev for ev in dist.run() if isinstance(ev, RunDone))
    peak_alloc = torch.cuda.max_memory_allocated() if cuda else 0
    peak_reserved = torch.cuda.max_memory_reserved() if cuda else 0
    plain, pushed = [], []
    for _ in range(a.repeats):
        plain.append(timed(full(0.0), backend.device))
        pushed.append(timed(full(lam), backend.device))
    weights_gb = sum(p.numel() * p.element_size() for m in (backend.unet, backend.vae, backend.text_encoder)
                     for p in m.parameters()) / 1e9
    result = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
        "model": f"{a.preset}-shaped UNet2DConditionModel + AutoencoderKL + CLIPTextModel, random weights, "
                 f"{backend.dtype}, {backend.image_size} px",
        "teacher": "timm resnet18, random weights, 224 px",
        "classes": a.classes, "ipc": a.ipc, "m_seed": config.m_seed, "steps": a.steps, "proxy_steps": config.sampler.proxy,
        "bo_budget": config.bo.budget, "betas": list(dist.betas), "gammas": list(config.bo.gammas), "lambda": lam,
        "n_images": done.n_images, "seconds": done.seconds, "seconds_per_image": done.seconds / done.n_images,
        "bo_share": done.seconds_bo / (done.seconds_bo + done.seconds_final),
        "seconds_bo_per_image": done.seconds_bo / done.n_images,
        "peak_gpu_memory_allocated_gb": peak_alloc / 1e9, "peak_gpu_memory_reserved_gb": peak_reserved / 1e9,
        "model_weights_gb": weights_gb,
        "repulsion": {"batch": len(seeds), "beta": 7.5, "gamma": 0.7, "seconds_lambda0_median": statistics.median(plain),
                      "seconds_lambda_median": statistics.median(pushed),
                      "ratio_median": statistics.median(b / c for c, b in zip(plain, pushed))},
        "build_seconds": build_s,
        "paper_table5": {"seconds_per_image": 2.7, "bo_seconds_per_image": 0.7, "gpu_memory_gb": 2.6},
        "command": "python benchmarks/gpu_cost.py " + " ".join(sys.argv[1:]),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
