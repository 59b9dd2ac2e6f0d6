"""Train the bundled offline models, deterministically, and write them to assets/.

    python -m adaptive_dd.demo.train splits
    python -m adaptive_dd.demo.train backbone            # class-conditional UNet on mnist-5k (train split)
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
BACKBONE_SIZE = 16
TEACHER_SIZE = 32
NUM_CLASSES = 10


def backbone_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=BACKBONE_SIZE, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=NUM_CLASSES + 1,
    )


def train_backbone(steps: int, batch_size: int, lr: float, seed: int, out: Path, device: str = "cpu") -> None:
    """DDPM epsilon-prediction training with 10% label dropout to the null class, EMA weights saved.

    All randomness (batches, label dropout, noise, timesteps) is drawn on the CPU from one seeded generator,
    so the data a run sees does not depend on the device; on CUDA, cuDNN is set to deterministic algorithms.
    """
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    ds = load_builtin("mnist-5k", "train")
    x = ds.tensor(range(len(ds)), BACKBONE_SIZE, 1) * 2 - 1
    y = torch.from_numpy(ds.labels)
    unet = backbone_unet().to(device)
    ema = EMAModel(unet.parameters(), decay=0.999)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warmup = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps))))
    g = torch.Generator().manual_seed(seed)
    t0, losses = time.time(), []
    bar = tqdm(range(steps), desc="backbone", mininterval=10)
    for step in bar:
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        x0, labels = x[idx], y[idx].clone()
        labels[torch.rand(batch_size, generator=g) < 0.1] = NUM_CLASSES
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=g)
        x0, labels, noise, t = x0.to(device), labels.to(device), noise.to(device), t.to(device)
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t, class_labels=labels).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.step(unet.parameters())
        losses.append(loss.detach())
        if step % 50 == 0:  # the only host sync: keeps a GPU busy between reports
            bar.set_postfix(loss=f"{float(torch.stack(losses[-50:]).mean()):.4f}")
    ema.copy_to(unet.parameters())
    unet.cpu()
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    meta = {
        "type": "class-unet",
        "classes": [str(i) for i in range(NUM_CLASSES)],
        "null_class": NUM_CLASSES,
        "image_size": BACKBONE_SIZE,
        "channels": 1,
        "beta_grid": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
        "default_lambda": 5.0,
        "trained_on": "mnist-5k (train split, assets/splits/mnist-5k.json)",
        "training": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "ema_decay": 0.999,
                     "label_dropout": 0.1, "seconds": round(time.time() - t0, 1),
                     "final_loss": float(torch.stack(losses[-200:]).mean()),
                     "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
                     "command": f"python -m adaptive_dd.demo.train backbone --steps {steps} --batch-size "
                                f"{batch_size} --lr {lr:g} --seed {seed} --device {device}"},
    }
    (out / "adaptive_dd.json").write_text(json.dumps(meta, indent=2))
    print(f"backbone saved to {out} in {time.time() - t0:.0f} s, final loss {meta['training']['final_loss']:.4f}")


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
    b.add_argument("--steps", type=int, default=3000)
    b.add_argument("--batch-size", type=int, default=128)
    b.add_argument("--lr", type=float, default=1e-3)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", type=Path, default=BACKBONE_DIR)
    b.add_argument("--device", default="cpu", help="cpu, or cuda when a GPU is at hand")
    t = sub.add_parser("teacher")
    t.add_argument("--data", choices=["uci-digits", "mnist-5k"], required=True)
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if a.what == "splits":
        write_splits()
    elif a.what == "backbone":
        train_backbone(a.steps, a.batch_size, a.lr, a.seed, a.out, a.device)
    else:
        train_teacher(a.data, a.epochs, a.batch_size, a.lr, a.seed, a.out or ASSETS / f"teacher-{a.data}")


if __name__ == "__main__":
    main()
