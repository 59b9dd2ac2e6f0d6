"""Cost of the method at Stable Diffusion v1.5 size on a GPU (the paper's Table 5 row), with random weights.

    python benchmarks/gpu_cost.py [--runs paper:2,fast:10] [--ipc 10] [--steps 50] [--probe]
    python benchmarks/gpu_cost.py --preset tiny --device cpu --runs paper:1,fast:2 --ipc 2 --steps 4   # dry run

Builds SD-1.5-shaped UNet, VAE and text encoder with random weights (FLOPs and memory do not depend on the
weights), saves them, loads them through StableDiffusionBackend in fp16 like a downloaded model, and runs the
whole engine (BO with proxies, then the full sampler with repulsion) at 512 px on uci-digits seeds with a random
timm resnet18 teacher at 224 px, once per run spec MODE[:CLASSES[:ROWS]] (BO mode, number of classes, the
backend's denoiser_rows: its default when left out, 0 for one UNet call per step), side by side in one process.
Reports per run seconds per image, the BO share and peak GPU memory (reset before each run); then the repulsion
overhead of the full sampler (interleaved lambda = 0 / lambda > 0 pairs, same noise). --probe first times single
UNet calls and reads their peak memory by rows, with the feed-forward chunked as the backend runs it and whole,
and the VAE's and the teacher's peaks. Writes benchmarks/results/gpu_cost.json (--out).
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

from adaptive_dd.backends import SD_FF_TOKENS, StableDiffusionBackend, chunk_feed_forward  # noqa: E402
from adaptive_dd.config import BOConfig, DistillConfig, SamplerConfig  # noqa: E402
from adaptive_dd.data import load_dataset  # noqa: E402
from adaptive_dd.demo.random_sd import build_random_sd  # noqa: E402
from adaptive_dd.distill import Distiller, RunDone  # noqa: E402
from adaptive_dd.fidelity import Teacher, TeacherConfig  # noqa: E402

GB = 1e9


def timed(fn, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def peak_of(fn, device: torch.device) -> float:
    """GB that fn allocates at its peak above what was allocated before it (0 off CUDA)."""
    if device.type != "cuda":
        fn()
        return 0.0
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / GB


def parse_runs(text: str, default_classes: int, default_rows: int | None) -> list[tuple[str, int, int | None]]:
    """MODE[:CLASSES[:ROWS]] specs as (mode, classes, denoiser_rows or None for one call per step)."""
    runs = []
    for spec in text.split(","):
        mode, *rest = spec.split(":")
        classes = int(rest[0]) if rest else default_classes
        rows = int(rest[1]) if len(rest) > 1 else default_rows
        runs.append((mode, classes, rows or None))
    return runs


def set_ff_chunks(unet: torch.nn.Module, on: bool) -> None:
    if on:
        chunk_feed_forward(unet, SD_FF_TOKENS)
    else:
        for m in unet.modules():
            if hasattr(m, "set_chunk_feed_forward"):
                m.set_chunk_feed_forward(None, 0)


def markdown(result: dict) -> str:
    """The runs as table rows for benchmarks/results/table5.md (benchmarks/run.py appends this file's .md)."""
    w = result["model_weights_gb"]
    lines = [f"GPU rows: `{result['command']}` on {result['device']} (torch {result['torch']}); {result['model']}, "
             f"{result['steps']} steps, teacher {result['teacher']}, uci-digits seeds, IPC {result['ipc']}, "
             f"{result['date']}; weights on the device {w['on_device']:.2f} GB (the text encoder's stay on the CPU). "
             f"Paper (Table 5): 2.7 s per image, BO 0.7 s (26%), 2.6 GB.", "",
             "| BO mode | classes | UNet rows per call | s/image | BO s/image | BO share | peak GPU memory allocated "
             "(GB) | reserved (GB) |", "|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        rows = r["denoiser_rows"] or "all (one call per step)"
        lines.append(f"| {r['mode']} | {r['classes']} | {rows} | {r['seconds_per_image']:.3f} | "
                     f"{r['seconds_bo_per_image']:.3f} | {100 * r['bo_share']:.0f}% | "
                     f"{r['peak_gpu_memory_allocated_gb']:.2f} | {r['peak_gpu_memory_reserved_gb']:.2f} |")
    rep = result.get("repulsion")
    if rep:
        lines += ["", f"Repulsion overhead of the full sampler ({rep['batch']} seeds, beta {rep['beta']}, gamma "
                      f"{rep['gamma']}, lambda {rep['lambda']:g}): {rep['ratio_median']:.3f} (median of interleaved "
                      f"pairs)."]
    return "\n".join(lines) + "\n"


@torch.no_grad()
def probe(backend: StableDiffusionBackend, teacher: Teacher, rows: list[int], repeats: int = 5) -> dict:
    """Single UNet calls by rows (median seconds, seconds per row, peak activations), with the feed-forward
    chunked and whole, one-image VAE calls, the teacher on 20 images: what a step's rows cost on this device."""
    dev = backend.device
    size = backend.image_size // backend.vae_scale
    cond = backend.condition(["3"])
    unet: dict[str, dict] = {"ff_chunked": {}, "ff_whole": {}}
    for key, on in (("ff_whole", False), ("ff_chunked", True)):
        set_ff_chunks(backend.unet, on)
        for n in rows:
            z = torch.randn(n, 4, size, size, device=dev, dtype=backend.dtype)
            t, c = torch.full((n,), 500, device=dev), cond.expand(n, -1, -1)

            def call():
                return backend.predict_noise(z, t, c)

            timed(call, dev)
            seconds = statistics.median(timed(call, dev) for _ in range(repeats))
            unet[key][n] = {"seconds": seconds, "seconds_per_row": seconds / n, "peak_gb": peak_of(call, dev)}
            print(f"UNet {key} {n:3d} rows: {seconds * 1e3:7.1f} ms, {seconds / n * 1e3:5.2f} ms/row, "
                  f"+{unet[key][n]['peak_gb']:.2f} GB", flush=True)
    image = torch.rand(1, 3, backend.image_size, backend.image_size)
    latent = backend.encode(image)
    seeds = torch.rand(20, 3, backend.image_size, backend.image_size)
    out = {"unet_by_rows": unet,
           "vae_encode_1_gb": peak_of(lambda: backend.encode(image), dev),
           "vae_decode_1_gb": peak_of(lambda: backend.decode(latent), dev),
           "teacher_20_gb": peak_of(lambda: teacher.logits(seeds.to(dev)), dev)}
    print({k: v for k, v in out.items() if k != "unet_by_rows"}, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="paper:2,fast:10",
                   help="comma-separated MODE[:CLASSES[:ROWS]]: BO mode, classes (default --classes), the backend's "
                        "denoiser_rows (0: one UNet call per step)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3, help="lambda = 0 / lambda > 0 pairs for the repulsion overhead")
    p.add_argument("--probe", action="store_true", help="time and measure single UNet, VAE and teacher calls first")
    p.add_argument("--probe-rows", default="2,4,8,16,24,32,48,64")
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
    dev = backend.device
    runs = parse_runs(a.runs, a.classes, backend.denoiser_rows)
    tcfg = TeacherConfig(model_name="resnet18", num_classes=10, in_chans=3, input_size=224,
                         classes=[str(i) for i in range(10)])
    teacher = Teacher(tcfg.build(), tcfg).to(a.device)
    data = load_dataset("uci-digits", "train")
    weights_gb = {name: sum(p.numel() * p.element_size() for p in m.parameters()) / GB
                  for name, m in (("unet", backend.unet), ("vae", backend.vae), ("text_encoder", backend.text_encoder))}
    weights_gb["on_device"] = sum(p.numel() * p.element_size()
                                  for m in (backend.unet, backend.vae, backend.text_encoder)
                                  for p in m.parameters() if p.device.type == dev.type) / GB
    result: dict = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": f"{a.preset}-shaped UNet2DConditionModel + AutoencoderKL + CLIPTextModel, random weights, "
                 f"{backend.dtype}, {backend.image_size} px",
        "teacher": "timm resnet18, random weights, 224 px", "ipc": a.ipc, "steps": a.steps,
        "model_weights_gb": weights_gb, "denoiser_rows_default": backend.denoiser_rows, "ff_tokens": SD_FF_TOKENS,
        "build_seconds": build_s,
        "paper_table5": {"seconds_per_image": 2.7, "bo_seconds_per_image": 0.7, "gpu_memory_gb": 2.6},
        "command": "python benchmarks/gpu_cost.py " + " ".join(sys.argv[1:]), "runs": [],
    }

    def save() -> None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))

    if a.probe:
        result["probe"] = probe(backend, teacher, [int(r) for r in a.probe_rows.split(",")])
        save()

    def distiller(mode: str, classes: int) -> Distiller:
        config = DistillConfig(data="uci-digits", model="sd15-random", classes=data.classes[:classes], ipc=a.ipc,
                               m_seed=min(10, a.ipc), device=a.device, sampler=SamplerConfig(steps=a.steps),
                               bo=BOConfig(mode=mode))
        return Distiller(config, backend, teacher, data)

    warm = distiller("paper", 1)
    seeds = data.tensor(warm.seed_plan(data.classes[0])[0][0], backend.image_size, 3)
    lam = backend.default_lambda

    def full(weight: float):
        return lambda: warm.generate(seeds, data.classes[0], 7.5, 0.7, list(range(len(seeds))), proxy=False,
                                     weight=weight)

    timed(full(0.0), dev), timed(full(lam), dev)  # warm-up: cuDNN autotuning, allocator
    default_rows = backend.denoiser_rows
    for mode, classes, rows in runs:
        backend.denoiser_rows = rows
        dist = distiller(mode, classes)
        if cuda:  # the run's own peaks: what the probe or an earlier run left cached is released first
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        done = next(ev for ev in dist.run() if isinstance(ev, RunDone))
        cfg = dist.config
        run = {"mode": mode, "classes": classes, "denoiser_rows": rows, "n_images": done.n_images,
               "m_seed": cfg.m_seed, "proxy_steps": cfg.sampler.proxy_steps or cfg.sampler.steps // 2,
               "bo": {k: v for k, v in cfg.to_dict()["bo"].items() if k not in ("betas", "gammas")},
               "seconds": done.seconds, "seconds_per_image": done.seconds / done.n_images,
               "seconds_bo_per_image": done.seconds_bo / done.n_images,
               "bo_share": done.seconds_bo / (done.seconds_bo + done.seconds_final),
               "peak_gpu_memory_allocated_gb": torch.cuda.max_memory_allocated() / GB if cuda else 0.0,
               "peak_gpu_memory_reserved_gb": torch.cuda.max_memory_reserved() / GB if cuda else 0.0}
        result["runs"].append(run)
        print(f"{mode:5s} {classes:2d} classes, rows {rows or '-':>3}: {run['seconds_per_image']:.3f} s/img, "
              f"BO {run['bo_share']:.0%}, peak {run['peak_gpu_memory_allocated_gb']:.2f} GB", flush=True)
        save()
    backend.denoiser_rows = default_rows
    plain, pushed = [], []
    for _ in range(a.repeats):
        plain.append(timed(full(0.0), dev))
        pushed.append(timed(full(lam), dev))
    result["repulsion"] = {"batch": len(seeds), "beta": 7.5, "gamma": 0.7, "lambda": lam,
                           "denoiser_rows": backend.denoiser_rows,
                           "seconds_lambda0_median": statistics.median(plain),
                           "seconds_lambda_median": statistics.median(pushed),
                           "ratio_median": statistics.median(b / c for c, b in zip(plain, pushed))}
    save()
    a.out.with_suffix(".md").write_text(markdown(result))
    print(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
