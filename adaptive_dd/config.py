"""Run configuration as dataclasses; the CLI, the app and the benchmarks all build these.

CFG convention, kept here and in the sampler only: eps = eps_uncond + beta * (eps_cond - eps_uncond), the form
of diffusers' guidance_scale (beta = 1 is the plain conditional model). The paper's eq. 3 writes
eps_cond + beta' * (eps_cond - eps_uncond), i.e. beta = beta' + 1.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .bo import CHOICES
from .fidelity import Objective
from .repulsion import validate_bandwidth

DEFAULT_GAMMAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
BO_SCOPES = ("batch", "class", "run")
KERNEL_SCOPES = ("batch", "class")
WARM_DESIGNS = ("top", "ucb", "low", "top_then_ucb", "top_then_low")
# What each BO mode sets when a field is left None. "paper": Algorithm 1 as written (a fresh GP per mini-batch, every
# seed in every proxy, proxies on every other step, the whole budget). "fast": the issue 12 search, chosen by
# benchmarks/bo_cost.py and the validation stage of benchmarks/run.py (see README, "Cost"); a warm batch evaluates
# its points in one sampler call and keeps the best on its own seeds: a class's first batch the prior's three best
# points (the pilot's evidence alone; first_warm_budget 3, the most whose call keeps the CLI's BO share within
# issue 12's bars on a CPU: four matched the paper's search on val at IPC 10 but cost 27% there), its later batches
# the prior's best and the lowest beta at its gamma (q 2, warm_design "top_then_low"), so the class can leave the
# pilot's optimum, a noisy pick on a nearly flat f, once it has evidence of its own, for the least guidance its own
# seeds cannot tell from it (bo_cost.py's validation at IPC 50, 10 student seeds: "top_then_ucb", GP-UCB's pick in
# place of the lowest beta, trailed it by 1.2 points on resnet10t and tied on convnext; IPC 10 has no later
# batches). A cold search runs its 4-point design in one call (design_q), and a class's later batches keep the GP
# kernel learned on its first prior (kernel_scope). Its final pass runs at the least guidance within one standard
# error of the best observed (choice "one_se", chosen on val at IPC 10 and 50; README, "Cost"), not at the best
# observed ("best").
# proxy_stride None leaves SamplerConfig.proxy_steps None: every other step of the final schedule. class_group 0: by
# device (CPU_CLASS_GROUP on a CPU, 1 elsewhere; see BOConfig).
BO_MODES: dict[str, dict[str, object]] = {
    "paper": {"q": 1, "design_q": 0, "scope": "batch", "kernel_scope": "batch", "warm_design": "top",
              "proxy_seeds": 0, "warm_budget": 0, "first_warm_budget": 0, "early_stop": False, "freeze_after": 0,
              "class_group": 1, "choice": "best", "proxy_stride": None},
    "fast": {"q": 2, "design_q": 4, "scope": "run", "kernel_scope": "class", "warm_design": "top_then_low",
             "proxy_seeds": 4, "warm_budget": 2, "first_warm_budget": 3, "early_stop": True, "freeze_after": 4,
             "class_group": 0, "choice": "one_se", "proxy_stride": 5},
}
# A CPU runs the bundled UNet's small calls at a fixed cost per call (~13 ms, then ~0.9 ms per row), so the first
# rounds of 4 classes in one call cost little more than one; an accelerator's cost grows with rows, and the call
# would hold 4 rounds' activations at once.
CPU_CLASS_GROUP = 4


class ConfigError(ValueError):
    """A setting out of its range; the message names the setting."""


@dataclass
class SamplerConfig:
    """The full sampler's steps and the BO proxies' share of them (Algorithm 1, line 10: half).

    A proxy for strength gamma starts at the full sampler's start timestep for gamma and takes every
    (steps // proxy_steps)-th step of its schedule, so proxy_steps (default steps // 2) must divide steps.
    """

    steps: int = 50
    proxy_steps: int | None = None
    scheduler: str = "DDIMScheduler"
    eta: float = 0.0

    @property
    def proxy_stride(self) -> int:
        return 2 if self.proxy_steps is None else self.steps // self.proxy_steps

    def validate(self) -> None:
        if self.steps < 2:
            raise ConfigError(f"steps must be >= 2 (proxies take every other step), got {self.steps}")
        if self.proxy_steps is not None and not (1 <= self.proxy_steps <= self.steps
                                                 and self.steps % self.proxy_steps == 0):
            raise ConfigError(f"proxy_steps must divide steps ({self.steps}): proxies take every "
                              f"(steps // proxy_steps)-th step of the final schedule; got {self.proxy_steps}")
        if self.eta < 0:
            raise ConfigError(f"eta must be >= 0, got {self.eta}")


def proxy_steps_for(steps: int, stride: int) -> int:
    """The proxy step count of a mode's stride: the largest divisor of steps that is at most steps // stride."""
    return next(d for d in range(max(1, steps // stride), 0, -1) if steps % d == 0)


@dataclass
class RepulsionConfig:
    """Eq. 6: weight lambda (None: the backend's default) and RBF bandwidth sigma (a number or "auto")."""

    weight: float | None = None
    bandwidth: float | str = "auto"

    def validate(self) -> None:
        if self.weight is not None and not self.weight >= 0:
            raise ConfigError(f"lambda (repulsion weight) must be >= 0, got {self.weight}")
        try:
            self.bandwidth = validate_bandwidth(self.bandwidth)
        except ValueError as e:
            raise ConfigError(str(e)) from None


@dataclass
class BOConfig:
    """GP-UCB over betas x gammas; betas None means the backend's own grid.

    objective names what a proxy is scored by (fidelity.OBJECTIVES; "kl" is the paper's eq. 5; the default,
    the authors' released "confidence", won the benchmark's validation stage); temperature None is the objective's own
    default (1 for the KL objectives, 20 for "confidence"); novelty_weight is w of "kl_novelty".

    mode names a preset (BO_MODES) for the cost settings left None, which DistillConfig.validate fills in, so the
    manifest records every value: q (candidates per round, evaluated in one sampler call), design_q (candidates per
    round while the initial design lasts: its points need no observation; 0: q), scope (which earlier observations
    seed a mini-batch's GP: none, the class's earlier batches, or also those of the run's first class, the pilot),
    kernel_scope (where the GP kernel's hyper-parameters are learned: by every mini-batch, or once per class on its
    first prior, which its later mini-batches keep), warm_design (where a search seeded by a prior starts: the prior's
    n_initial best points, "top"; its best point, then GP-UCB's picks, "ucb"; its best point and the lowest beta at
    its gamma, "low"; or "top" on a class's first mini-batch and "ucb" or "low" on its later ones, "top_then_ucb" /
    "top_then_low"), proxy_seeds (seeds each proxy runs on, the batch's first ones; 0: all), warm_budget
    (evaluations of a batch whose GP starts from a prior; 0: the budget), first_warm_budget
    (the same for a class's first mini-batch, whose prior is the pilot's alone: it has no evidence of its own, so it
    tries more of the prior's best points, in one call under design_q; 0: warm_budget; either at most the budget),
    early_stop (stop when no unevaluated point's UCB beats the best observed), freeze_after (the kernel's
    hyper-parameters are fixed at the first GP fit to at least that many points, the prior's included; 0: never),
    class_group (the first proxy rounds of the first mini-batches of this many classes run in one sampler call, and
    the classes go to one process together; 0: by device, CPU_CLASS_GROUP on a CPU and 1 elsewhere) and choice (the
    point the final pass runs at: "best", the best observed, or "one_se", the least guidance within one standard
    error of it; bo.choose).
    """

    betas: tuple[float, ...] | None = None
    gammas: tuple[float, ...] = DEFAULT_GAMMAS
    budget: int = 8
    kappa: float = 2.0
    q: int | None = None
    design_q: int | None = None
    n_initial: int = 4
    objective: str = "confidence"  # chosen on the val split by benchmarks/run.py (validation.md)
    temperature: float | None = None
    novelty_weight: float = 1.0
    mode: str = "fast"
    scope: str | None = None
    kernel_scope: str | None = None
    warm_design: str | None = None
    proxy_seeds: int | None = None
    warm_budget: int | None = None
    first_warm_budget: int | None = None
    early_stop: bool | None = None
    freeze_after: int | None = None
    class_group: int | None = None
    choice: str | None = None

    def resolve(self) -> None:
        """Fill the fields left None from the mode's preset."""
        if self.mode not in BO_MODES:
            raise ConfigError(f"BO mode must be one of {', '.join(BO_MODES)}, got {self.mode!r}")
        for k, v in BO_MODES[self.mode].items():
            if k != "proxy_stride" and getattr(self, k) is None:
                setattr(self, k, v)

    def make_objective(self) -> Objective:
        return Objective(self.objective, self.temperature, self.novelty_weight)

    def validate(self) -> None:
        try:
            self.make_objective()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.n_initial < 1:
            raise ConfigError(f"n_initial must be >= 1, got {self.n_initial}")
        if self.betas is not None:
            if not self.betas:
                raise ConfigError("the beta grid is empty")
            if any(b < 0 for b in self.betas):
                raise ConfigError(f"beta (CFG scale) must be >= 0, got {min(self.betas)}")
        if not self.gammas:
            raise ConfigError("the gamma grid is empty")
        bad = [g for g in self.gammas if not 0 < g <= 1]
        if bad:
            raise ConfigError(f"gamma (img2img strength) must be in (0, 1], got {bad[0]}")
        if self.budget < 1:
            raise ConfigError(f"BO budget must be >= 1, got {self.budget}")
        if self.kappa < 0:
            raise ConfigError(f"kappa must be >= 0, got {self.kappa}")
        self.resolve()
        if self.q < 1:
            raise ConfigError(f"q must be >= 1, got {self.q}")
        if self.design_q < 0:
            raise ConfigError(f"design q (candidates per round of the initial design) must be >= 0 (0: q), "
                              f"got {self.design_q}")
        if self.scope not in BO_SCOPES:
            raise ConfigError(f"BO scope must be one of {', '.join(BO_SCOPES)}, got {self.scope!r}")
        if self.kernel_scope not in KERNEL_SCOPES:
            raise ConfigError(f"kernel scope must be one of {', '.join(KERNEL_SCOPES)}, got {self.kernel_scope!r}")
        if self.choice not in CHOICES:
            raise ConfigError(f"choice (the point the final pass runs at) must be one of {', '.join(CHOICES)}, "
                              f"got {self.choice!r}")
        if self.warm_design not in WARM_DESIGNS:
            raise ConfigError(f"warm design must be one of {', '.join(WARM_DESIGNS)}, got {self.warm_design!r}")
        if self.proxy_seeds < 0:
            raise ConfigError(f"proxy seeds must be >= 0 (0: all seeds of the batch), got {self.proxy_seeds}")
        if self.warm_budget < 0:
            raise ConfigError(f"warm budget (evaluations of a warm-started batch) must be >= 0 (0: the budget), "
                              f"got {self.warm_budget}")
        if self.first_warm_budget < 0:
            raise ConfigError(f"first warm budget (evaluations of a class's first mini-batch when warm-started) must "
                              f"be >= 0 (0: the warm budget), got {self.first_warm_budget}")
        if self.freeze_after < 0:
            raise ConfigError(f"freeze_after (points the GP is fitted to before its kernel is fixed) must be >= 0, "
                              f"got {self.freeze_after}")
        if self.class_group < 0:
            raise ConfigError(f"class group (classes whose first proxy rounds share one sampler call) must be >= 0 "
                              f"(0: by device), got {self.class_group}")
        if len(set(self.gammas)) != len(self.gammas) or (self.betas and len(set(self.betas)) != len(self.betas)):
            raise ConfigError("grid values must be distinct")


@dataclass
class DistillConfig:
    """Everything that decides the distilled images; recorded whole in the manifest."""

    data: str = "uci-digits"
    model: str = "bundled"
    teacher: str | None = None
    classes: list[str] | None = None
    ipc: int = 10
    m_seed: int = 10
    seed: int = 0
    device: str = "cpu"
    prompt: str = "a photo of a {name}"
    negative_prompt: str = ""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    repulsion: RepulsionConfig = field(default_factory=RepulsionConfig)
    bo: BOConfig = field(default_factory=BOConfig)

    def validate(self) -> "DistillConfig":
        if self.ipc < 1:
            raise ConfigError(f"IPC must be >= 1, got {self.ipc}")
        if self.m_seed < 1:
            raise ConfigError(f"m_seed must be >= 1, got {self.m_seed}")
        if self.classes is not None and not self.classes:
            raise ConfigError("the class list is empty")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            twice = next(c for c in self.classes if self.classes.count(c) > 1)
            raise ConfigError(f"class {twice!r} is listed twice")
        if "{name}" not in self.prompt:
            raise ConfigError(f"the prompt template must contain {{name}}, got {self.prompt!r}")
        self.bo.validate()
        if self.bo.class_group == 0:
            self.bo.class_group = CPU_CLASS_GROUP if self.device.split(":")[0] == "cpu" else 1
        stride = BO_MODES[self.bo.mode]["proxy_stride"]
        if self.sampler.proxy_steps is None and stride is not None:
            self.sampler.proxy_steps = proxy_steps_for(self.sampler.steps, int(stride))
        self.sampler.validate()
        self.repulsion.validate()
        low = min(self.bo.gammas)
        if int(self.sampler.steps * low) < 1:
            raise ConfigError(f"gamma {low} with {self.sampler.steps} steps runs no denoising step "
                              f"(int(steps * gamma) = 0): raise the steps or the smallest gamma")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        d = dict(d)
        sampler = SamplerConfig(**d.pop("sampler", {}))
        repulsion = RepulsionConfig(**d.pop("repulsion", {}))
        bo = dict(d.pop("bo", {}))
        for k in ("betas", "gammas"):
            if bo.get(k) is not None:
                bo[k] = tuple(bo[k])
        return cls(**d, sampler=sampler, repulsion=repulsion, bo=BOConfig(**bo))
