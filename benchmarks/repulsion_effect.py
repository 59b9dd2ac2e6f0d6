"""Repulsion by its effect, end to end through the CLI's engine and the bundled models' real settings (their
scheduler config, default BO): within-class pixel distance of the final images and the bundled teacher's
agreement with their class, at lambda = 0, 1x, 3x and 10x the backbone's default.

    python benchmarks/repulsion_effect.py     # uci-digits classes 3, 5, 8, IPC 10, seed 2 (a few minutes)

Writes benchmarks/results/repulsion_effect.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adaptive_dd.backends import create_backend  # noqa: E402
from adaptive_dd.config import DistillConfig, RepulsionConfig  # noqa: E402
from adaptive_dd.distill import BatchDone, Distiller  # noqa: E402
from adaptive_dd.repulsion import mean_pairwise_distance  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    backend = create_backend("bundled")
    default = backend.default_lambda
    rows = []
    for factor in (0, 1, 3, 10):
        cfg = DistillConfig(data="uci-digits", classes=["3", "5", "8"], ipc=10, seed=2,
                            repulsion=RepulsionConfig(weight=factor * default))
        dist = Distiller(cfg, backend=backend)
        dists, kept, total, points, t0 = [], 0, 0, [], time.time()
        for ev in dist.run():
            if isinstance(ev, BatchDone):
                dists.append(mean_pairwise_distance(ev.images))
                pred = dist.teacher.logits(ev.images).argmax(1)
                kept += int((pred == dist.target_index(ev.class_name)).sum())
                total += len(pred)
                points.append((ev.beta, ev.gamma))
        rows.append({"lambda": factor * default, "factor": factor, "pixel_distance": float(np.mean(dists)),
                     "teacher_agreement": kept / total, "kept": kept, "images": total, "points": points,
                     "seconds": time.time() - t0})
        r = rows[-1]
        print(f"lambda {r['lambda']:g} ({factor}x): within-class pixel distance {r['pixel_distance']:.3f} "
              f"({r['pixel_distance'] / rows[0]['pixel_distance']:.3f}x lambda 0), teacher agreement "
              f"{kept}/{total} = {100 * r['teacher_agreement']:.1f}%, (beta*, gamma*) {points}", flush=True)
    out = Path(__file__).parent / "results" / "repulsion_effect.json"
    out.write_text(json.dumps({"command": "python benchmarks/repulsion_effect.py", "rows": rows,
                               "scheduler_config": backend.scheduler_config}, indent=1))


if __name__ == "__main__":
    main()
