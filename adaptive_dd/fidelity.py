"""Teachers, the fidelity objective of eq. 5, f = -KL(T(I) || T(G)) averaged over the mini-batch, and the other
objectives BO can maximise (named, recorded in the manifest).

A teacher is any timm classifier with its own preprocessing; the bundled ones are timm models too, loaded by
the same code from a directory holding config.json and model.safetensors.
"""
from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import ASSETS

BUNDLED_TEACHERS = {"uci-digits": ASSETS / "teacher-uci-digits", "mnist-5k": ASSETS / "teacher-mnist-5k"}


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message names the file and how to regenerate it."""


@dataclass
class TeacherConfig:
    """What is needed to rebuild a timm teacher and feed it: architecture, input size and normalisation."""

    model_name: str
    num_classes: int
    in_chans: int = 3
    input_size: int = 224
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    classes: list[str] | None = None
    model_kwargs: dict = field(default_factory=dict)

    def build(self) -> torch.nn.Module:
        import timm

        return timm.create_model(self.model_name, pretrained=False, num_classes=self.num_classes,
                                 in_chans=self.in_chans, **self.model_kwargs)


def fit_input(images: torch.Tensor, in_chans: int, size: int) -> torch.Tensor:
    """Images in [0, 1] of any channel count and size brought to a classifier's (teachers' and students' alike):
    grey from the channel mean, colour by repetition, bilinear antialiased resize."""
    x = images.float()
    if x.shape[1] != in_chans:
        x = x.mean(1, keepdim=True) if in_chans == 1 else x.expand(-1, in_chans, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


class Teacher(torch.nn.Module):
    """A classifier that takes images in [0, 1] at any size and channel count and returns logits."""

    def __init__(self, model: torch.nn.Module, config: TeacherConfig):
        super().__init__()
        self.model = model.eval()
        self.config = config
        self.register_buffer("mean", torch.tensor(config.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(config.std).view(1, -1, 1, 1))

    @property
    def classes(self) -> list[str] | None:
        return self.config.classes

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = fit_input(images.to(self.mean.device), self.config.in_chans, self.config.input_size)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(images))

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return torch.cat([self(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Penultimate-layer features (timm's pooled pre-logits)."""
        return self.embed(images, batch_size).features

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 256) -> "Embedding":
        """Logits and penultimate features from one pass of the trunk (the objectives need both)."""
        logits, feats = [], []
        for i in range(0, len(images), batch_size):
            h = self.model.forward_features(self.preprocess(images[i:i + batch_size]))
            logits.append(self.model.forward_head(h))
            feats.append(self.model.forward_head(h, pre_logits=True))
        return Embedding(torch.cat(logits), torch.cat(feats))


@dataclass
class Embedding:
    """A teacher's view of a batch of images: logits and penultimate-layer features, row per image."""

    logits: torch.Tensor
    features: torch.Tensor

    def __getitem__(self, rows) -> "Embedding":
        return Embedding(self.logits[rows], self.features[rows])


def save_teacher(model: torch.nn.Module, config: TeacherConfig, directory: str | Path) -> None:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config.__dict__, indent=2))


def _load_teacher_dir(directory: Path) -> Teacher:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_path, weights = directory / "config.json", directory / "model.safetensors"
    hint = ("regenerate it with `python -m adaptive_dd.demo.train teacher --data "
            f"{directory.name.removeprefix('teacher-')}`" if directory.parent == ASSETS else "")
    if not directory.is_dir():
        raise ModelLoadError(f"teacher folder {directory} is missing; {hint}")
    for p in (cfg_path, weights):
        if not p.exists():
            raise ModelLoadError(f"teacher file {p} is missing; {hint}".rstrip("; "))
    try:
        config = TeacherConfig(**json.loads(cfg_path.read_text()))
        model = config.build()
        model.load_state_dict(load_file(str(weights)), strict=True)
    except (RuntimeError, ValueError, TypeError, OSError, SafetensorError) as e:
        raise ModelLoadError(f"teacher {directory} does not load ({str(e).splitlines()[0]}); {hint}".rstrip("; ")) \
            from None
    return Teacher(model, config)


def load_teacher(spec: str, device: str | torch.device = "cpu", num_classes: int | None = None,
                 classes: list[str] | None = None) -> Teacher:
    """Load a teacher by bundled name, directory, or timm spec `NAME[:CHECKPOINT]`.

    A bare timm name loads pretrained weights from the hub (or the local cache); `NAME:CHECKPOINT` loads a
    local checkpoint (safetensors, or a torch file read with weights_only=True: never an arbitrary pickle).
    """
    path = BUNDLED_TEACHERS.get(spec, Path(spec))
    if spec in BUNDLED_TEACHERS or path.is_dir():
        return _load_teacher_dir(path).to(device)
    import timm

    name, _, ckpt = spec.partition(":")
    if ckpt and not Path(ckpt).is_file():
        raise ModelLoadError(f"teacher checkpoint {ckpt} is missing")
    try:
        model = timm.create_model(name, pretrained=not ckpt, **({"num_classes": num_classes} if num_classes else {}))
        if ckpt:
            model.load_state_dict(read_checkpoint(Path(ckpt)), strict=True)
    except (RuntimeError, OSError, ValueError) as e:
        raise ModelLoadError(f"teacher {spec!r} does not load: {str(e).splitlines()[0]}") from None
    data_cfg = timm.data.resolve_model_data_config(model, use_test_size=True)  # eval-time size and norm
    config = TeacherConfig(model_name=name, num_classes=model.num_classes, in_chans=data_cfg["input_size"][0],
                           input_size=data_cfg["input_size"][-1], mean=list(data_cfg["mean"]),
                           std=list(data_cfg["std"]), classes=classes)
    return Teacher(model, config).to(device)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a torch file read with weights_only=True, which refuses any pickled
    object but tensors and plain containers: a checkpoint cannot run code. Unwraps timm's training checkpoints
    (EMA weights first, as timm does) and DDP / torch.compile key prefixes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from timm.models import clean_state_dict

    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, EOFError):
        raise ModelLoadError(f"checkpoint {path} is refused: it is neither safetensors nor a torch file of plain "
                             f"tensors (read with weights_only=True, which never runs pickled code)") from None
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ModelLoadError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return clean_state_dict(state)


def kl_per_sample(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(p / T) || softmax(q / T)) for each row."""
    log_p = F.log_softmax(p_logits.float() / temperature, -1)
    log_q = F.log_softmax(q_logits.float() / temperature, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def fidelity(seed_logits: torch.Tensor, generated_logits: torch.Tensor, temperature: float = 1.0) -> float:
    """Eq. 5: minus the mean over the mini-batch of KL(T(I_i) || T(G_i)), G_i generated from seed I_i."""
    return -float(kl_per_sample(seed_logits, generated_logits, temperature).mean())


def novelty(seeds: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """How far each generation moved from its own seed in teacher features, in units of the seeds' spacing
    (the median distance between two seeds of the batch), capped at 1: an image as far from its seed as another
    real image is as novel as the objective pays for.

    A lone seed (IPC 1) has no spacing to measure against; any stand-in (its feature norm was tried) is far larger
    than a real spacing, so the cap is never reached and the largest edit always wins. It scores 0 instead, which
    makes kl_novelty plain kl for a batch of one."""
    seeds, generated = seeds.float(), generated.float()
    if len(seeds) < 2:
        return torch.zeros(len(generated))
    d = torch.cdist(seeds, seeds)
    spacing = d[~torch.eye(len(seeds), dtype=torch.bool)].median()
    return ((generated - seeds).norm(dim=1) / spacing.clamp_min(1e-8)).clamp(max=1.0)


OBJECTIVES = {
    "kl": "eq. 5: -KL(T(I) || T(G)) at a teacher temperature (default 1, the paper's)",
    "confidence": "the authors' released variant: mean p_T(c | G) - mean p_T(c | I) at temperature 20",
    "kl_novelty": "-KL(T(I) || T(G)) + w * novelty, novelty = feature distance to the own seed in units of the "
                  "seeds' spacing, capped at 1 (0 for a lone seed: plain kl at IPC 1)",
}
DEFAULT_TEMPERATURE = {"kl": 1.0, "confidence": 20.0, "kl_novelty": 1.0}


@dataclass(frozen=True)
class Objective:
    """What BO maximises for one mini-batch, from the teacher's view of the seeds and of their proxies.

    `warp` is the monotone transform the GP is fitted in: for "kl", f = -KL <= 0 spans decades (~-2.5 at strong
    edits, ~-0.01 at light ones), so differences in the light-edit column, where the optimum sits, drown under the
    GP's noise floor; -log(KL) spreads them out. The others are fitted as they are.
    """

    name: str = "kl"
    temperature: float | None = None
    novelty_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.name!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.temperature is not None and not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"objective temperature must be a positive number, got {self.temperature}")
        if not self.novelty_weight >= 0:
            raise ValueError(f"novelty weight must be >= 0, got {self.novelty_weight}")

    @property
    def tau(self) -> float:
        return DEFAULT_TEMPERATURE[self.name] if self.temperature is None else float(self.temperature)

    @property
    def warp(self) -> str:
        return "neglog" if self.name == "kl" else "none"

    def scores(self, seeds: Embedding, generated: Embedding, target: int) -> torch.Tensor:
        """Each seed's term of f (f is their mean, up to rounding): candidates scored on the same seeds and noise
        are compared seed by seed, and the spread of those paired differences tells a real gap from noise
        (bo.choose's "one_se" rule)."""
        if self.name == "confidence":
            p_gen = F.softmax(generated.logits.float() / self.tau, -1)[:, target]
            p_seed = F.softmax(seeds.logits.float() / self.tau, -1)[:, target]
            return p_gen - p_seed.mean()
        s = -kl_per_sample(seeds.logits, generated.logits, self.tau)
        if self.name == "kl_novelty":
            s = s + self.novelty_weight * novelty(seeds.features, generated.features)
        return s

    def __call__(self, seeds: Embedding, generated: Embedding, target: int) -> float:
        """f for one candidate: seeds and generated are row-aligned (generated[i] was made from seeds[i])."""
        if self.name == "confidence":
            p_gen = F.softmax(generated.logits.float() / self.tau, -1)[:, target]
            p_seed = F.softmax(seeds.logits.float() / self.tau, -1)[:, target]
            return float(p_gen.mean() - p_seed.mean())
        f = fidelity(seeds.logits, generated.logits, self.tau)
        if self.name == "kl_novelty":
            f += self.novelty_weight * float(novelty(seeds.features, generated.features).mean())
        return f
