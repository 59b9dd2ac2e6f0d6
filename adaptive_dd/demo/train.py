"""Train the bundled offline models, deterministically, and write them to assets/.

    python -m adaptive_dd.demo.train splits
    python -m adaptive_dd.demo.train backbone   # AutoencoderKL + class-conditional latent UNet, mnist-5k train split
    python -m adaptive_dd.demo.train teacher --data uci-digits
    python -m adaptive_dd.demo.train teacher --data mnist-5k
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data import ASSETS, load_builtin, write_splits
from ..fidelity import TeacherConfig, save_teacher

BACKBONE_DIR = ASSETS / "backbone-mnist-5k"
BACKBONE_SIZE = 32
LATENT_CHANNELS = 4
TEACHER_SIZE = 32
NUM_CLASSES = 10
BETA_GRID = [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0]
DEFAULT_LAMBDA = 9.0


def backbone_vae():
    """A small 1-channel AutoencoderKL: 32 px images to 4 x 8 x 8 latents (two downsamplings, as SD's three)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=LATENT_CHANNELS, block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, norm_num_groups=8, sample_size=BACKBONE_SIZE,
    )


def backbone_unet(latent_size: int = BACKBONE_SIZE // 4):
    """Class-conditional UNet over the VAE's latents; class embedding NUM_CLASSES is the null class for CFG."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=latent_size, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
        block_out_channels=(48, 96, 96), norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=NUM_CLASSES + 1,
    )


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup: int = 200):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps))))


def clipped_step(loss: torch.Tensor, model: torch.nn.Module, opt: torch.optim.Optimizer, sched) -> None:
    """One optimiser and lr-schedule step with the gradient norm clipped at 1 (both backbone stages)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()


def train_vae(x: torch.Tensor, steps: int, batch_size: int, lr: float, kl_weight: float, g: torch.Generator,
              device: str):
    """L1 reconstruction + kl_weight x KL (per image, summed over latent numbers); returns (vae, last losses).

    The small KL weight keeps the latents near a unit Gaussian's scale without blurring the strokes; the
    reparameterised sample draws from g, so the run is reproducible from the seed.
    """
    vae = backbone_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps)
    losses = []
    bar = tqdm(range(steps), desc="vae", mininterval=10)
    for step in bar:
        x0 = x[torch.randint(0, len(x), (batch_size,), generator=g)]
        posterior = vae.encode(x0.to(device)).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g).to(device)
        rec = F.l1_loss(vae.decode(z).sample, x0.to(device))
        loss = rec + kl_weight * posterior.kl().mean()
        clipped_step(loss, vae, opt, sched)
        losses.append(rec.detach())
        if step % 50 == 0:
            bar.set_postfix(l1=f"{float(torch.stack(losses[-50:]).mean()):.4f}")
    return vae.eval().requires_grad_(False), float(torch.stack(losses[-200:]).mean())


@torch.no_grad()
def latent_means(vae, x: torch.Tensor, device: str, batch: int = 250) -> torch.Tensor:
    """Posterior means (the deterministic encoding the backend uses), unscaled."""
    return torch.cat([vae.encode(x[i:i + batch].to(device)).latent_dist.mean.cpu() for i in range(0, len(x), batch)])


def train_backbone(steps: int, batch_size: int, lr: float, seed: int, out: Path, device: str = "cpu",
                   vae_steps: int = 1500, vae_batch_size: int = 64, vae_lr: float = 1e-3,
                   kl_weight: float = 1e-5) -> None:
    """A latent backbone like Stable Diffusion's: an AutoencoderKL, then a class-conditional UNet on its latents.

    The UNet is DDPM epsilon-prediction trained on the VAE's scaled posterior means, with 10% label dropout to
    the null class and EMA weights saved. scaling_factor = 1 / std of the training latents, so the diffusion
    sees unit-variance latents. All randomness (init, batches, posterior samples, label dropout, noise,
    timesteps) comes from `seed`, drawn on the CPU, so the data a run sees does not depend on the device.
    The scheduler has clip_sample off: latents are unbounded, and clipping the predicted x0 would reverse the
    repulsion term in clipped entries.
    """
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    ds = load_builtin("mnist-5k", "train")
    x = ds.tensor(range(len(ds)), BACKBONE_SIZE, 1) * 2 - 1
    y = torch.from_numpy(ds.labels)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    vae, vae_loss = train_vae(x, vae_steps, vae_batch_size, vae_lr, kl_weight, g, device)
    vae_seconds = time.time() - t0
    means = latent_means(vae, x, device)
    scaling = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = means * scaling
    print(f"vae trained in {vae_seconds:.0f} s, L1 {vae_loss:.4f}, latent std {means.std():.3f} "
          f"(scaling_factor {scaling:.4f}), latents {tuple(latents.shape[1:])}")

    unet = backbone_unet(latents.shape[-1]).to(device)
    ema = EMAModel(unet.parameters(), decay=0.999)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps)
    t1, losses = time.time(), []
    bar = tqdm(range(steps), desc="unet", mininterval=10)
    for step in bar:
        idx = torch.randint(0, len(latents), (batch_size,), generator=g)
        z0, labels = latents[idx], y[idx].clone()
        labels[torch.rand(batch_size, generator=g) < 0.1] = NUM_CLASSES
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=g)
        z0, labels, noise, t = z0.to(device), labels.to(device), noise.to(device), t.to(device)
        loss = F.mse_loss(unet(scheduler.add_noise(z0, noise, t), t, class_labels=labels).sample, noise)
        clipped_step(loss, unet, opt, sched)
        ema.step(unet.parameters())
        losses.append(loss.detach())
        if step % 50 == 0:  # the only host sync: keeps a GPU busy between reports
            bar.set_postfix(loss=f"{float(torch.stack(losses[-50:]).mean()):.4f}")
    ema.copy_to(unet.parameters())
    out.mkdir(parents=True, exist_ok=True)
    vae.cpu().save_pretrained(out / "vae", safe_serialization=True)
    unet.cpu().save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    seconds = time.time() - t0
    threads = torch.get_num_threads()
    meta = {
        "type": "class-latent-unet",
        "classes": [str(i) for i in range(NUM_CLASSES)],
        "null_class": NUM_CLASSES,
        "image_size": BACKBONE_SIZE,
        "channels": 1,
        "latent_shape": list(latents.shape[1:]),
        "beta_grid": BETA_GRID,
        "default_lambda": DEFAULT_LAMBDA,
        "trained_on": "mnist-5k (train split, assets/splits/mnist-5k.json)",
        "training": {
            "seed": seed, "seconds": round(seconds, 1), "threads": threads,
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
            "vae": {"steps": vae_steps, "batch_size": vae_batch_size, "lr": vae_lr, "kl_weight": kl_weight,
                    "loss": "L1 + kl_weight * KL", "final_l1": vae_loss, "seconds": round(vae_seconds, 1),
                    "scaling_factor": scaling},
            "unet": {"steps": steps, "batch_size": batch_size, "lr": lr, "ema_decay": 0.999, "label_dropout": 0.1,
                     "final_loss": float(torch.stack(losses[-200:]).mean()), "seconds": round(time.time() - t1, 1)},
            "command": f"python -m adaptive_dd.demo.train backbone --steps {steps} --batch-size {batch_size} "
                       f"--lr {lr:g} --vae-steps {vae_steps} --vae-batch-size {vae_batch_size} --vae-lr {vae_lr:g} "
                       f"--kl-weight {kl_weight:g} --seed {seed} --device {device} --threads {threads}"},
    }
    (out / "adaptive_dd.json").write_text(json.dumps(meta, indent=2))
    print(f"backbone saved to {out} in {seconds:.0f} s, final loss {meta['training']['unet']['final_loss']:.4f}")


def teacher_config(data: str) -> TeacherConfig:
    return TeacherConfig(model_name="resnet10t", num_classes=NUM_CLASSES, in_chans=1, input_size=TEACHER_SIZE,
                         mean=[0.5], std=[0.5], classes=[str(i) for i in range(NUM_CLASSES)],
                         model_kwargs={"stem_width": 16, "channels": [32, 64, 128, 256]})


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Small random rotation, scale and shift: digits tolerate these, not flips."""
    n = len(x)
    angle = (torch.rand(n, generator=g) - 0.5) * (2 * math.radians(12))
    scale = 0.9 + 0.2 * torch.rand(n, generator=g)
    shift = (torch.rand(n, 2, generator=g) - 0.5) * 0.2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def train_teacher(data: str, epochs: int, batch_size: int, lr: float, seed: int, out: Path) -> None:
    torch.manual_seed(seed)
    cfg = teacher_config(data)
    model = cfg.build()
    train, test = load_builtin(data, "train"), load_builtin(data, "test")
    x, y = train.tensor(range(len(train)), TEACHER_SIZE, 1), torch.from_numpy(train.labels)
    xt, yt = test.tensor(range(len(test)), TEACHER_SIZE, 1), torch.from_numpy(test.labels)
    norm = lambda a: (a - 0.5) / 0.5  # noqa: E731
    steps = epochs * math.ceil(len(x) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for _ in tqdm(range(epochs), desc=f"teacher {data}", mininterval=10):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(norm(augment(x[idx], g))), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(norm(xt)).argmax(1) == yt).float().mean())
    save_teacher(model, cfg, out)
    print(f"teacher {data} saved to {out} in {time.time() - t0:.0f} s; test accuracy {acc:.4f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m adaptive_dd.demo.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("splits", help="write assets/splits/*.json")
    b = sub.add_parser("backbone")
    b.add_argument("--steps", type=int, default=3500, help="UNet steps")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--lr", type=float, default=1e-3)
    b.add_argument("--vae-steps", type=int, default=1500)
    b.add_argument("--vae-batch-size", type=int, default=64)
    b.add_argument("--vae-lr", type=float, default=1e-3)
    b.add_argument("--kl-weight", type=float, default=1e-5)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", type=Path, default=BACKBONE_DIR)
    b.add_argument("--device", default="cpu", help="cpu, or cuda when a GPU is at hand")
    b.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    t = sub.add_parser("teacher")
    t.add_argument("--data", choices=["uci-digits", "mnist-5k"], required=True)
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if getattr(a, "threads", None):
        torch.set_num_threads(a.threads)
    if a.what == "splits":
        write_splits()
    elif a.what == "backbone":
        train_backbone(a.steps, a.batch_size, a.lr, a.seed, a.out, a.device, a.vae_steps, a.vae_batch_size,
                       a.vae_lr, a.kl_weight)
    else:
        train_teacher(a.data, a.epochs, a.batch_size, a.lr, a.seed, a.out or ASSETS / f"teacher-{a.data}")


if __name__ == "__main__":
    main()
