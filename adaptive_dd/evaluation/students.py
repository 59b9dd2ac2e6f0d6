"""Students trained on a distilled set with the teacher's soft labels: RDED's protocol, and its digit-scale form.

The student sees only the distilled images. Every step draws a batch, augments it (random resized crop, and a
small rotation or a horizontal flip), asks the teacher for soft labels on exactly that augmented batch, and
minimises KL(softmax(t/T) || softmax(s/T)) * T^2 with AdamW and a cosine schedule. Accuracy is measured on the
target's test split, which is used for nothing else, read in batches.

Two protocols (PROTOCOLS): "digits", the default for the built-in sets, scales RDED (300 epochs, T = 20) down to a
fixed number of steps at 32 px so that a CPU can train the benchmark's 144 students (its values were set before
any student was evaluated and are not tuned; digits are not flipped); "rded" is RDED's ImageNet-subset setting
(rded_protocol): ResNet-18 at 224 px, AdamW lr 1e-3, wd 0.01, cosine, 300 epochs, batch 50 (IPC <= 10) or 100,
doubled from 100 classes, T = 20, RandomResizedCrop + flip, ImageNet normalisation. CutMix and ShufflePatches,
which RDED adds, are not part of either.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..fidelity import Teacher, fit_input

# Student names resolve to timm configurations scaled to 32 px digits (about 1M parameters each): the teacher's
# family (ResNet) and a different one (ConvNeXt: patchify stem, depthwise 7x7 convolutions, LayerNorm).
STUDENT_ARCHS: dict[str, tuple[str, dict]] = {
    "resnet10t": ("resnet10t", {"stem_width": 16, "channels": [32, 64, 128, 256]}),
    "convnext": ("convnext_atto", {"dims": (32, 64, 128, 256), "depths": (1, 1, 2, 1)}),
}


@dataclass
class StudentConfig:
    """How students are trained and tested; the defaults are the benchmark's."""

    archs: tuple[str, ...] = ("resnet10t", "convnext")
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    temperature: float = 4.0
    input_size: int = 32
    crop_scale: tuple[float, float] = (0.7, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    max_rotation: float = 10.0
    normalize: tuple = (0.5, 0.5)  # (mean, std): numbers, or one number per channel
    hflip: bool = False
    epochs: int | None = None  # when set, steps = epochs x batches per epoch of the set at hand

    def total_steps(self, n_images: int) -> int:
        return self.steps if self.epochs is None else self.epochs * math.ceil(n_images / self.batch_size)

    def validate(self) -> StudentConfig:
        unknown = [a for a in self.archs if a not in STUDENT_ARCHS and not _is_timm(a)]
        if unknown:
            raise ValueError(f"unknown student architecture(s) {unknown}: use {sorted(STUDENT_ARCHS)} or a timm name")
        if self.steps < 1 or self.batch_size < 1 or not self.seeds or (self.epochs is not None and self.epochs < 1):
            raise ValueError("students need steps (or epochs) >= 1, batch_size >= 1 and at least one seed")
        if "convnext" in self.archs and self.input_size < 32:
            raise ValueError(f"the convnext student downsamples 32x: input_size {self.input_size} must be >= 32")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale {self.crop_scale} must satisfy 0 < low <= high <= 1")
        return self


IMAGENET_NORMALIZE = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def rded_protocol(ipc: int, n_classes: int) -> StudentConfig:
    """RDED's student setting for ImageNet subsets (its scripts' values; see the module docstring)."""
    batch = (50 if ipc <= 10 else 100) * (2 if n_classes >= 100 else 1)
    return StudentConfig(archs=("resnet18",), seeds=(0, 1, 2), epochs=300, batch_size=batch, lr=1e-3,
                         weight_decay=0.01, temperature=20.0, input_size=224, crop_scale=(0.08, 1.0),
                         crop_ratio=(3 / 4, 4 / 3), max_rotation=0.0, normalize=IMAGENET_NORMALIZE, hflip=True)


PROTOCOLS = {"digits": "the built-in sets' scaled-down protocol (32 px, 300 steps, T = 4)",
             "rded": "RDED's ImageNet-subset protocol (ResNet-18, 224 px, 300 epochs, T = 20)"}


def protocol(name: str, ipc: int, n_classes: int) -> StudentConfig:
    """A PROTOCOLS entry for a set of n_classes classes with (at most) ipc images each."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}: use one of {', '.join(PROTOCOLS)}")
    return rded_protocol(ipc, n_classes) if name == "rded" else StudentConfig()


def _is_timm(name: str) -> bool:
    import timm

    return name in timm.list_models()


def build_student(arch: str, num_classes: int, in_chans: int) -> torch.nn.Module:
    """A randomly initialised student: a name from STUDENT_ARCHS, or any timm model name at its defaults."""
    import timm

    name, kwargs = STUDENT_ARCHS.get(arch, (arch, {}))
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


def augment(x: torch.Tensor, cfg: StudentConfig, g: torch.Generator) -> torch.Tensor:
    """Per-image random resized crop (area fraction in crop_scale, aspect in crop_ratio, anywhere inside the
    image), rotation and (hflip) a horizontal flip, as one affine resampling to the student's input size."""
    n = len(x)
    u = torch.rand(n, 5, generator=g)
    area = cfg.crop_scale[0] + (cfg.crop_scale[1] - cfg.crop_scale[0]) * u[:, 0]
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    sx, sy = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    tx, ty = (1 - sx) * (2 * u[:, 2] - 1), (1 - sy) * (2 * u[:, 3] - 1)
    angle = torch.deg2rad((2 * u[:, 4] - 1) * cfg.max_rotation)
    if cfg.hflip:  # drawn after the crop, so configurations without flips keep their random stream
        sx = sx * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([sx * cos, -sy * sin, tx], 1), torch.stack([sx * sin, sy * cos, ty], 1)], 1)
    size = [n, x.shape[1], cfg.input_size, cfg.input_size]
    return F.grid_sample(x, F.affine_grid(theta, size, align_corners=False), align_corners=False,
                         padding_mode="zeros")


def _normalizer(cfg: StudentConfig):
    """x -> (x - mean) / std with cfg.normalize's numbers, scalar or per channel."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in cfg.normalize)
    return lambda x: (x - mean) / std


def train_student(images: torch.Tensor, teacher: Teacher, arch: str, seed: int,
                  cfg: StudentConfig = StudentConfig()) -> torch.nn.Module:
    """Train one student on images (N, C, H, W) in [0, 1] with online soft labels; deterministic given seed.

    Images are brought to the student's input size a batch at a time, so a large input size costs one batch."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    in_chans, num_classes = teacher.config.in_chans, teacher.config.num_classes
    norm = _normalizer(cfg)
    model = build_student(arch, num_classes, in_chans).train()
    steps = cfg.total_steps(len(images))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    batch, t = min(cfg.batch_size, len(images)), cfg.temperature
    order = torch.randperm(len(images), generator=g)
    pos = 0
    for _ in range(steps):
        if pos + batch > len(order):  # epochs without replacement, a new permutation each time
            order, pos = torch.randperm(len(images), generator=g), 0
        xb = augment(fit_input(images[order[pos:pos + batch]], in_chans, cfg.input_size), cfg, g)
        pos += batch
        with torch.no_grad():
            soft = F.softmax(teacher(xb).float() / t, -1)
        loss = F.kl_div(F.log_softmax(model(norm(xb)) / t, -1), soft, reduction="batchmean") * t * t
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def batches_accuracy(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], in_chans: int,
                     cfg: StudentConfig = StudentConfig()) -> float:
    """Accuracy over (images, labels) batches, e.g. a test split streamed from disk."""
    norm = _normalizer(cfg)
    correct = total = 0
    for images, labels in batches:
        x = fit_input(images, in_chans, cfg.input_size)
        correct += int((model(norm(x)).argmax(1) == labels).sum())
        total += len(labels)
    return correct / total


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, in_chans: int,
             cfg: StudentConfig = StudentConfig(), batch_size: int = 500) -> float:
    return batches_accuracy(model, ((images[i:i + batch_size], labels[i:i + batch_size])
                                    for i in range(0, len(images), batch_size)), in_chans, cfg)
