"""Measure the bundled models against the model card's bars and draw the beta x gamma figure.

    python -m adaptive_dd.demo.quality            # prints the figures, writes assets/quality.json and the PNG

Bars: teachers >= 97% test accuracy; backbone pure generation (gamma = 1, from a flat grey seed, i.e. from
noise) classified as its condition by the mnist-5k teacher >= 95% at the best beta of its grid. Also reported,
without a bar: the backbone's VAE reconstruction of the mnist-5k and uci-digits test splits (PSNR, and the set's
teacher's accuracy on the reconstructions next to its accuracy on the originals), and img2img from uci-digits train seeds
at gamma = 0.5 kept in the seed's class by the uci-digits teacher.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..backends import create_backend
from ..config import DEFAULT_GAMMAS
from ..data import ASSETS, load_dataset, to_pil
from ..fidelity import fidelity, load_teacher
from ..sampler import img2img, noise_seed


def teacher_accuracy(name: str, device: str = "cpu") -> float:
    teacher, test = load_teacher(name, device), load_dataset(name, "test")
    pred = teacher.logits(test.tensor(range(len(test)), teacher.config.input_size, 1)).argmax(1).cpu().numpy()
    return float((pred == test.labels).mean())


@torch.no_grad()
def vae_reconstruction(backend, teacher, data: str, batch: int = 200) -> dict[str, float]:
    """How much the latent backbone's autoencoder alone loses: encode + decode of a test split, scored by that
    set's teacher (on uci-digits, data the VAE never saw, this is the floor of what any gamma can keep)."""
    test = load_dataset(data, "test")
    x = test.tensor(range(len(test)), backend.image_size, backend.channels)
    rec = torch.cat([backend.decode(backend.encode(x[i:i + batch])).cpu() for i in range(0, len(x), batch)])
    mse = ((rec - x) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    acc = [float((teacher.logits(a).argmax(1).cpu().numpy() == test.labels).mean()) for a in (x, rec)]
    return {"psnr_db": float((10 * torch.log10(1 / mse)).mean()), "teacher_accuracy_original": acc[0],
            "teacher_accuracy_reconstructed": acc[1]}


def pure_generation(backend, teacher, per_class: int, steps: int) -> dict[float, float]:
    """Class consistency of generations from noise for every beta of the backbone's grid."""
    classes = backend.classes
    names = [c for c in classes for _ in range(per_class)]
    grey = torch.full((len(names), backend.channels, backend.image_size, backend.image_size), 0.5)
    seeds = [noise_seed(1234, i) for i in range(len(names))]
    labels = np.array([classes.index(n) for n in names])
    out = {}
    for beta in backend.default_betas:
        images = img2img(backend, grey, names, beta, 1.0, seeds, steps=steps).images
        out[beta] = float((teacher.logits(images).argmax(1).cpu().numpy() == labels).mean())
    return out


def img2img_consistency(backend, teacher, gamma: float, steps: int, per_class: int) -> dict[float, float]:
    """Share of uci-digits train seeds regenerated at gamma whose class the uci-digits teacher keeps."""
    train = load_dataset("uci-digits", "train")
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.choice(train.indices_of(c), per_class, replace=False) for c in range(10)])
    seeds_img = train.tensor(idx, backend.image_size, backend.channels)
    names = [train.classes[train.labels[i]] for i in idx]
    seeds = [noise_seed(99, int(i)) for i in idx]
    out = {}
    for beta in backend.default_betas:
        images = img2img(backend, seeds_img, names, beta, gamma, seeds, steps=steps).images
        out[beta] = float((teacher.logits(images).argmax(1).cpu().numpy() == train.labels[idx]).mean())
    return out


def beta_gamma_figure(backend, teacher, class_name: str, steps: int, path) -> None:
    """The paper's Figure 3 on our model: one uci-digits seed of a class over the beta x gamma grid, f per cell."""
    train = load_dataset("uci-digits", "train")
    i = int(train.indices_of(train.class_index(class_name))[0])
    seed = train.tensor([i], backend.image_size, backend.channels)
    betas, gammas = backend.default_betas, DEFAULT_GAMMAS
    nb, ng = len(betas), len(gammas)
    images = img2img(backend, seed.repeat(nb * ng, 1, 1, 1), [class_name] * (nb * ng),
                     np.repeat(betas, ng), np.tile(gammas, nb), [noise_seed(5, i)] * (nb * ng),
                     steps=steps).images.cpu()
    f = [fidelity(teacher.logits(seed), teacher.logits(images[k:k + 1])) for k in range(nb * ng)]
    cell, pad, left, top = 64, 18, 70, 40
    canvas = Image.new("RGB", (left + (ng + 1) * (cell + 4), top + nb * (cell + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), f"class {class_name}: seed (left), then gamma ->; rows beta; f = -KL under each", fill="black")
    for r, beta in enumerate(betas):
        y = top + r * (cell + pad)
        draw.text((4, y + cell // 2), f"beta={beta:g}", fill="black")
        canvas.paste(to_pil(seed)[0].resize((cell, cell), Image.Resampling.NEAREST).convert("RGB"), (left, y))
        for c, gamma in enumerate(gammas):
            k = r * ng + c
            x = left + (c + 1) * (cell + 4)
            tile = to_pil(images[k:k + 1])[0].resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile.convert("RGB"), (x, y))
            draw.text((x, y + cell + 2), f"{f[k]:.2f}", fill="black")
            if r == 0:
                draw.text((x, top - 14), f"g={gamma:g}", fill="black")
    canvas.save(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m adaptive_dd.demo.quality", description=__doc__)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--figure-class", default="3")
    p.add_argument("--device", default="cpu", help="cpu, or cuda when a GPU is at hand")
    a = p.parse_args(argv)
    t0 = time.time()
    torch.manual_seed(0)
    backend = create_backend("bundled", a.device)
    report = {"teacher_accuracy": {n: teacher_accuracy(n, a.device) for n in ("uci-digits", "mnist-5k")}}
    if hasattr(backend, "vae"):
        for data in ("mnist-5k", "uci-digits"):
            report[f"vae_reconstruction_{data.replace('-', '_')}_test"] = vae_reconstruction(
                backend, load_teacher(data, a.device), data)
    gen = pure_generation(backend, load_teacher("mnist-5k", a.device), a.per_class, a.steps)
    best = max(gen, key=gen.get)
    report["pure_generation"] = {"by_beta": gen, "best_beta": best, "best": gen[best]}
    keep = img2img_consistency(backend, load_teacher("uci-digits", a.device), 0.5, a.steps, a.per_class)
    report["img2img_uci_gamma_0.5"] = {"by_beta": keep, "best_beta": max(keep, key=keep.get),
                                       "best": max(keep.values())}
    beta_gamma_figure(backend, load_teacher("uci-digits", a.device), a.figure_class, a.steps,
                      ASSETS / f"beta_gamma_grid_class{a.figure_class}.png")
    report["seconds"] = round(time.time() - t0, 1)
    report["device"] = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    report["command"] = "python -m adaptive_dd.demo.quality " + " ".join(sys.argv[1:] if argv is None else argv)
    (ASSETS / "quality.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
