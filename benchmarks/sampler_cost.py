"""Cost of the full sampler with repulsion against the same batch without it (target ratio <= 1.05).

    python benchmarks/sampler_cost.py [--model bundled] [--batch 10] [--steps 50] [--repeats 7]

Runs lambda = 0 and lambda > 0 interleaved on the same seeds, noise and (beta, gamma), so both see the same
machine load; reports the median of per-pair ratios and writes benchmarks/results/sampler_cost.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adaptive_dd.backends import create_backend  # noqa: E402
from adaptive_dd.data import load_dataset  # noqa: E402
from adaptive_dd.sampler import img2img  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bundled")
    p.add_argument("--data", default="uci-digits")
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--gamma", type=float, default=0.7)
    p.add_argument("--beta", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sampler_cost.json")
    a = p.parse_args()
    backend = create_backend(a.model, a.device)
    data = load_dataset(a.data, "train")
    idx = data.indices_of(data.class_index(data.classes[0]))[: a.batch]
    images = data.tensor(idx, backend.image_size, backend.channels)
    names = [data.classes[0]] * len(images)
    lam = backend.default_lambda or 1.0

    def run(weight: float) -> float:
        if backend.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        img2img(backend, images, names, a.beta, a.gamma, list(range(len(images))), steps=a.steps,
                repulsion_weight=weight)
        if backend.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(0.0), run(lam)  # warm-up
    plain, pushed = [], []
    for _ in range(a.repeats):
        plain.append(run(0.0))
        pushed.append(run(lam))
    ratios = [b / a_ for a_, b in zip(plain, pushed)]
    result = {"backbone": backend.description, "batch": len(images), "steps": a.steps, "gamma": a.gamma,
              "lambda": lam, "seconds_lambda0_median": statistics.median(plain),
              "seconds_lambda_median": statistics.median(pushed), "ratio_median": statistics.median(ratios),
              "ratios": ratios, "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
              "command": "python benchmarks/sampler_cost.py " + " ".join(sys.argv[1:])}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"full sampler, batch {len(images)}, {a.steps} steps x gamma {a.gamma}: lambda=0 "
          f"{result['seconds_lambda0_median']:.3f} s, lambda={lam:g} {result['seconds_lambda_median']:.3f} s, "
          f"ratio {result['ratio_median']:.3f} (median of {a.repeats} interleaved pairs)")


if __name__ == "__main__":
    main()
