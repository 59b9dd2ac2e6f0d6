"""Evidence for a class backbone's default repulsion weight, measured on TRAIN seeds only.

    python -m adaptive_dd.demo.defaults --betas 1 2 --lambdas 0 5 10 20 50 100

For uci-digits train seeds of a few classes (the unaligned pair the bundled models exist to show), regenerated
at each (beta, gamma, lambda), prints the batch's mean within-class pixel and latent distance relative to
lambda = 0 and the share the uci-digits teacher keeps in the seed's class. The repulsion gradient's scale
depends on the latent size (repulsion.py), so a weight chosen for one backbone does not transfer to another.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ..backends import create_backend
from ..data import load_dataset
from ..fidelity import load_teacher
from ..repulsion import mean_pairwise_distance
from ..sampler import img2img, noise_seed


def repulsion_table(model: str, classes: list[str], n: int, betas: list[float], gammas: list[float],
                    lambdas: list[float], steps: int) -> list[dict]:
    backend, teacher = create_backend(model), load_teacher("uci-digits")
    train = load_dataset("uci-digits", "train")
    rng = np.random.default_rng(0)
    rows = []
    for beta in betas:
        for gamma in gammas:
            base: dict[str, tuple[float, float]] = {}
            for lam in lambdas:
                pix, lat, keep = [], [], []
                for name in classes:
                    c = train.class_index(name)
                    idx = rng.choice(train.indices_of(c), n, replace=False) if name not in base else base[name][2]
                    out = img2img(backend, train.tensor(idx, backend.image_size, backend.channels), [name] * n,
                                  beta, gamma, [noise_seed(7, int(i)) for i in idx], steps=steps,
                                  repulsion_weight=lam)
                    if name not in base:
                        base[name] = (mean_pairwise_distance(out.images), mean_pairwise_distance(out.latents), idx)
                    pix.append(mean_pairwise_distance(out.images) / base[name][0])
                    lat.append(mean_pairwise_distance(out.latents) / base[name][1])
                    keep.append(float((teacher.logits(out.images).argmax(1) == c).float().mean()))
                rows.append({"beta": beta, "gamma": gamma, "lambda": lam, "pixel_ratio": float(np.mean(pix)),
                             "latent_ratio": float(np.mean(lat)), "kept": float(np.mean(keep))})
                r = rows[-1]
                print(f"beta {beta:g} gamma {gamma:g} lambda {lam:g}: pixel distance {r['pixel_ratio']:.3f}x, "
                      f"latent distance {r['latent_ratio']:.3f}x lambda 0, kept in class {100 * r['kept']:.0f}%",
                      flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m adaptive_dd.demo.defaults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bundled")
    p.add_argument("--classes", nargs="+", default=["3", "8"])
    p.add_argument("--n", type=int, default=10, help="train seeds per class (one repulsion group)")
    p.add_argument("--betas", type=float, nargs="+", default=[1.0])
    p.add_argument("--gammas", type=float, nargs="+", default=[0.5, 0.7])
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 5.0, 15.0, 50.0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int)
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = repulsion_table(a.model, a.classes, a.n, a.betas, a.gammas, a.lambdas, a.steps)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
