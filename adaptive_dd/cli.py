"""Command line: `adaptive-dd distill ...` (also `python -m adaptive_dd distill ...`)."""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from .config import BOConfig, DistillConfig, RepulsionConfig, SamplerConfig


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _bandwidth(text: str):
    return text if text == "auto" else float(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adaptive-dd", description="Training-free diffusion dataset distillation "
                                "with adaptive (beta, gamma) sampling and repulsion.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distill", help="distill a dataset to IPC images per class",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # Read a value such as "-1,2" as a number list, not an option, so `--betas -1,2` reaches validation:
    # the pattern newer argparse releases use; older ones take only a single plain negative number.
    d._negative_number_matcher = re.compile(r"-\.?\d")
    d.add_argument("--data", default="uci-digits", help="uci-digits, mnist-5k, or an ImageFolder directory")
    d.add_argument("--out", required=True, help="output folder (ImageFolder layout + manifest.json)")
    d.add_argument("--classes", help="comma-separated class names (default: all)")
    d.add_argument("--ipc", type=int, default=10, help="images per class")
    d.add_argument("--m-seed", type=int, default=10, help="seed images per mini-batch")
    d.add_argument("--budget", type=int, default=8, help="BO evaluations per mini-batch")
    d.add_argument("--q", type=int, default=1, help="BO proposals evaluated together per round")
    d.add_argument("--kappa", type=float, default=2.0, help="UCB exploration weight")
    d.add_argument("--betas", type=_floats, help="CFG grid, e.g. 1,2,3 (default: the backbone's)")
    d.add_argument("--gammas", type=_floats, default=BOConfig().gammas, help="strength grid, in (0, 1]")
    d.add_argument("--steps", type=int, default=50, help="full sampler steps (proxies use half)")
    d.add_argument("--scheduler", default="DDIMScheduler", help="a diffusers scheduler class")
    d.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    d.add_argument("--lam", "--lambda", dest="lam", type=float, help="repulsion weight (default: the backbone's)")
    d.add_argument("--bandwidth", type=_bandwidth, default="auto", help="RBF sigma, or auto (median heuristic)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cuda" if _cuda() else "cpu")
    d.add_argument("--model", default="bundled", help="bundled, a class-UNet folder, or Stable Diffusion id/path")
    d.add_argument("--teacher", help="bundled name, a folder, or timm NAME[:CHECKPOINT] (default: the data's)")
    d.add_argument("--prompt", default="a photo of a {name}", help="Stable Diffusion prompt template")
    d.add_argument("--negative-prompt", default="")
    d.add_argument("--overwrite", action="store_true", help="replace an existing output folder that is not ours")
    d.add_argument("--zip", action="store_true", help="also write OUT.zip")
    return p


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def config_from_args(a: argparse.Namespace) -> DistillConfig:
    return DistillConfig(
        data=a.data, model=a.model, teacher=a.teacher,
        classes=[c.strip() for c in a.classes.split(",") if c.strip()] if a.classes is not None else None,
        ipc=a.ipc, m_seed=a.m_seed, seed=a.seed, device=a.device, prompt=a.prompt, negative_prompt=a.negative_prompt,
        sampler=SamplerConfig(steps=a.steps, scheduler=a.scheduler, eta=a.eta),
        repulsion=RepulsionConfig(weight=a.lam, bandwidth=a.bandwidth),
        bo=BOConfig(betas=a.betas, gammas=a.gammas, budget=a.budget, kappa=a.kappa, q=a.q),
    )


def distill(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .distill import BatchDone, ClassDone, Distiller, RunDone
    from .export import check_output, export

    config = config_from_args(a).validate()
    check_output(Path(a.out).absolute(), a.overwrite)
    dist = Distiller(config)
    n_batches = sum(len(dist.seed_plan(c)[0]) for c in dist.classes)
    bar = tqdm(total=n_batches, unit="batch", desc="distill", file=sys.stderr)
    for ev in export(dist.run(), a.out, config, dist.dataset.classes, dist.describe(), a.overwrite, a.zip):
        if isinstance(ev, BatchDone):
            bar.update(1)
            bar.set_postfix_str(f"class {ev.class_name} batch {ev.batch_index}")
        elif isinstance(ev, ClassDone):
            rows = "; ".join(f"beta*={b['beta']:g} gamma*={b['gamma']:g} f={b['f_proxy']:.4f}" for b in ev.batches)
            bar.write(f"class {ev.class_name}: {ev.n_images} images; {rows}"
                      + (" (seeds wrapped: fewer than IPC in class)" if ev.wrapped else ""))
        elif isinstance(ev, RunDone):
            bar.close()
            share = ev.seconds_bo / max(ev.seconds_bo + ev.seconds_final, 1e-9)
            print(f"{ev.n_images} images in {ev.seconds:.1f} s ({ev.seconds / max(ev.n_images, 1):.3f} s/image, "
                  f"BO {100 * share:.0f}% of sampling time) -> {os.path.abspath(a.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .config import ConfigError
    from .data import DataError
    from .export import ExportError
    from .fidelity import ModelLoadError

    a = build_parser().parse_args(argv)
    try:
        return distill(a)
    except (ConfigError, DataError, ExportError, ModelLoadError, ValueError) as e:
        print(f"adaptive-dd: error: {e}", file=sys.stderr)
        return 2
