"""Algorithm 1 as a stream of typed events.

For every class: draw mini-batches of seeds (without replacement), run GP-UCB over beta x gamma on proxy
generations that take a share of the steps of the final schedule (a BOStep event after every round), each scored by
the configured objective (eq. 5 by default), regenerate the seeds at the best OBSERVED (beta*, gamma*) with the
full sampler and repulsion (BatchDone), until the class has exactly IPC images (ClassDone); RunDone closes the
stream. The CLI, the app and the benchmarks consume this stream.

The BO mode sets what the search costs (config.BO_MODES): "paper" is Algorithm 1 as written (a fresh GP per
mini-batch, all seeds, every other step); "fast" warm-starts each mini-batch's GP from the finished batches of its
class and of the run's first class (the pilot), runs proxies on a few seeds and fewer steps, and spends a small
budget where a prior exists.

Every class and every mini-batch is seeded on its own (noise per (seed, class, slot), BO per (seed, class, batch)),
and a warm start's prior comes from finished batches only (a process without the pilot's searches them itself), so
classes can be spread over processes (Shard) and finished batches skipped (Progress) without changing a byte.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .backends import Backend, create_backend
from .bo import GridBO, GridPosterior, Observation
from .classmap import align_teacher, class_notes
from .config import ConfigError, DistillConfig, RepulsionConfig
from .data import BUILTIN_DATASETS, ImageDataset, load_dataset
from .fidelity import Teacher, load_teacher
from .repulsion import Bandwidth, mean_pairwise_distance
from .sampler import img2img, noise_seed


@dataclass
class BOStep:
    class_name: str
    class_index: int
    batch_index: int
    evaluations: int
    budget: int
    candidates: list[Observation]
    observations: list[Observation]
    posterior: GridPosterior
    best: Observation
    proxy_images: torch.Tensor  # (len(candidates), proxy seeds, C, H, W)
    seed_images: torch.Tensor
    prior: list[tuple[float, float, float]] = field(default_factory=list)  # (beta, gamma, mean f) seeding the GP


@dataclass(frozen=True)
class BatchSummary:
    """One finished mini-batch as reported per class (ClassDone.batches) and recorded for a resumed run."""

    batch: int
    beta: float
    gamma: float
    f_proxy: float | None  # None when the grid is a single point: no proxy was run
    f_final: float


@dataclass
class BatchDone:
    class_name: str
    class_index: int
    batch_index: int
    images: torch.Tensor
    seed_images: torch.Tensor
    seed_ids: list[str]
    slots: list[int]
    beta: float
    gamma: float
    f_proxy: float | None  # the objective at (beta*, gamma*); None when the grid is one point: no proxy was run
    f_final: float  # the same objective on the final images
    diversity: float
    observations: list[Observation]
    seconds_bo: float
    seconds_final: float

    def summary(self) -> BatchSummary:
        """The batch's row in ClassDone.batches; a resumed run gets the same rows back from Progress."""
        return BatchSummary(self.batch_index, self.beta, self.gamma, self.f_proxy, self.f_final)


@dataclass
class ClassDone:
    class_name: str
    class_index: int
    n_images: int
    wrapped: bool
    batches: list[BatchSummary] = field(default_factory=list)


@dataclass
class RunDone:
    n_images: int
    seconds: float
    seconds_bo: float
    seconds_final: float
    classes: list[str]


Event = BOStep | BatchDone | ClassDone | RunDone


def _no_wait() -> None:
    """The barrier of a single process: nothing to wait for."""


@dataclass(frozen=True)
class Shard:
    """This process's place among the processes sharing one run (accelerate's process index and count).

    wait is their barrier (accelerate's wait_for_everyone); process 0 is the one that writes shared files.
    """

    index: int = 0
    count: int = 1
    wait: Callable[[], None] = field(default=_no_wait, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.index == 0


ONE_PROCESS = Shard()


History = dict[str, dict[int, list[tuple[float, float, float]]]]  # class -> batch -> (beta, gamma, f) observed


@dataclass
class Progress:
    """What an interrupted run already wrote: the finished classes, and per class the finished batches'
    summaries, so a resumed run skips them and still reports them, and their BO observations as (beta, gamma, f),
    which a class- or run-scope search starts from."""

    classes: set[str] = field(default_factory=set)
    batches: dict[str, dict[int, BatchSummary]] = field(default_factory=dict)
    history: History = field(default_factory=dict)


@dataclass
class Regenerated:
    """Full-sampler images of one mini-batch with what the app and BatchDone report about them."""

    images: torch.Tensor
    latents: torch.Tensor
    f: float  # the run's objective over the batch, as BatchDone.f_final reports it
    diversity: float  # mean pairwise latent distance


def seed_plan(dataset: ImageDataset, class_name: str, ipc: int, m_seed: int,
              seed: int) -> tuple[list[np.ndarray], bool]:
    """Dataset indices of the seeds for each mini-batch, drawn without replacement; wraps (with a new
    permutation) only when the class has fewer images than IPC. Seeded per (seed, class) only, so a class's plan
    does not depend on which other classes run."""
    c = dataset.class_index(class_name)
    pool = dataset.indices_of(c)
    rng = np.random.default_rng([seed, c])
    order = np.concatenate([rng.permutation(pool) for _ in range(math.ceil(ipc / len(pool)))])[:ipc]
    return [order[i:i + m_seed] for i in range(0, len(order), m_seed)], len(pool) < ipc


def default_teacher(data: str) -> str:
    if data in BUILTIN_DATASETS:
        return data
    raise ConfigError(f"no bundled teacher for {data!r}: give one with --teacher NAME[:CHECKPOINT] or a directory")


class Distiller:
    """Holds the loaded models and runs Algorithm 1; models load once and serve many runs (the app)."""

    def __init__(self, config: DistillConfig, backend: Backend | None = None, teacher: Teacher | None = None,
                 dataset: ImageDataset | None = None):
        self.config = config.validate()
        self.dataset = dataset if dataset is not None else load_dataset(config.data, "train")
        self.classes = list(config.classes) if config.classes else list(self.dataset.classes)
        for c in self.classes:
            if len(self.dataset.indices_of(self.dataset.class_index(c))) == 0:
                raise ConfigError(f"class {c!r} has no images in {self.dataset.name}")
        teacher_spec = None if teacher is not None else (config.teacher or default_teacher(config.data))
        self.backend = backend or create_backend(config.model, config.device, config.prompt, config.negative_prompt)
        self.backend.check_classes(self.classes)
        # an ImageNet teacher on an ImageNet subset: only the subset's outputs (classmap.py)
        self.teacher = align_teacher(teacher or load_teacher(teacher_spec, config.device), self.dataset.classes)
        self.betas = tuple(config.bo.betas or self.backend.default_betas)
        weight = config.repulsion.weight
        self.weight = self.backend.default_lambda if weight is None else float(weight)
        self.objective = config.bo.make_objective()

    def describe(self) -> dict:
        """The loaded models and resolved defaults, for manifests and the app's models panel."""
        return {"backbone": self.backend.description, "teacher": self.teacher.config.model_name,
                "lambda": self.weight, "betas": list(self.betas), "objective": self.objective.name,
                "objective_temperature": self.objective.tau, **class_notes(self.classes, self.teacher)}

    def target_index(self, class_name: str) -> int:
        """The teacher output that stands for class_name: by the teacher's class names when it has them, else
        the dataset's class order (the bundled teachers were trained in it)."""
        names = self.teacher.classes
        if names and class_name in names:
            return names.index(class_name)
        return self.dataset.class_index(class_name) if class_name in self.dataset.classes else 0

    def seed_plan(self, class_name: str) -> tuple[list[np.ndarray], bool]:
        """This run's seed_plan for one class."""
        cfg = self.config
        return seed_plan(self.dataset, class_name, cfg.ipc, cfg.m_seed, cfg.seed)

    def n_batches(self, classes: list[str] | None = None, progress: Progress | None = None) -> int:
        """Mini-batches left to run over classes (default: all configured), not counting those progress holds."""
        done = progress.batches if progress else {}
        classes = self.classes if classes is None else classes
        return sum(len(self.seed_plan(c)[0]) - len(done.get(c, {})) for c in classes)

    def noise_seeds(self, class_name: str, slots: list[int]) -> list[int]:
        """The noise generator seed of each output slot of a class: what makes a slot's image reproducible."""
        c = self.dataset.class_index(class_name) if class_name in self.dataset.classes else 0
        return [noise_seed(self.config.seed, c, s) for s in slots]

    def repulsion(self, weight: float | None = None, bandwidth: Bandwidth | None = None) -> tuple[float, Bandwidth]:
        """The repulsion (lambda, bandwidth) a full generation uses: the run's, or validated overrides of either."""
        cfg = RepulsionConfig(weight=self.weight if weight is None else float(weight),
                              bandwidth=self.config.repulsion.bandwidth if bandwidth is None else bandwidth)
        cfg.validate()
        return cfg.weight, cfg.bandwidth

    def regenerate(self, seed_images: torch.Tensor, class_name: str, beta, gamma, slots: list[int], *,
                   weight: float | None = None, bandwidth: Bandwidth | None = None) -> Regenerated:
        """The full-sampler pass of a mini-batch (Algorithm 1, line 15) from its slots' noise, scored by the teacher.

        beta and gamma are scalars or one value per image; weight and bandwidth override the run's repulsion, which
        is how the app redraws a batch at another lambda from the same noise.
        """
        weight, bandwidth = self.repulsion(weight, bandwidth)
        out = self.generate(seed_images, class_name, beta, gamma, self.noise_seeds(class_name, slots), proxy=False,
                            weight=weight, bandwidth=bandwidth)
        f = self.objective(self.teacher.embed(seed_images), self.teacher.embed(out.images),
                           self.target_index(class_name))
        return Regenerated(out.images, out.latents, f, mean_pairwise_distance(out.latents))

    def generate(self, seed_images: torch.Tensor, class_name: str, beta, gamma, seeds: list[int], *, proxy: bool,
                 weight: float | None = None, bandwidth=None, groups=None, latents: torch.Tensor | None = None):
        """Proxy (the proxy steps of the final schedule, no repulsion) or full (repulsion) generation; latents: the
        seeds' encoding when the caller has it."""
        sc = self.config.sampler
        return img2img(self.backend, seed_images, [class_name] * len(seed_images), beta, gamma, seeds,
                       steps=sc.steps, stride=sc.proxy_stride if proxy else 1, scheduler=sc.scheduler, eta=sc.eta,
                       repulsion_weight=0.0 if proxy else (self.weight if weight is None else weight),
                       bandwidth=self.config.repulsion.bandwidth if bandwidth is None else bandwidth,
                       groups=groups, latents=latents)

    def search(self, seed_images: torch.Tensor, seed_view, class_name: str, batch_index: int, slots: list[int],
               prior: Sequence[tuple[float, float, float]] = (),
               seed_latents: torch.Tensor | None = None) -> Generator[BOStep, None, GridBO]:
        """BO over the grid for one mini-batch (Algorithm 1, lines 6-13): a BOStep per round; returns the GridBO.

        prior: (beta, gamma, f) from earlier mini-batches (the scope's), seeding the GP; with one, the search has
        bo.warm_budget evaluations (0: bo.budget). Proxies run on the batch's first bo.proxy_seeds seeds (0: all);
        with bo.early_stop the search ends once no unevaluated point's UCB beats the best observed.
        seed_latents: backend.encode(seed_images), which the final pass shares (default: encoded here).
        """
        cfg = self.config
        c = self.dataset.class_index(class_name) if class_name in self.dataset.classes else 0
        seeds = self.noise_seeds(class_name, slots)
        m = min(cfg.bo.proxy_seeds or len(seed_images), len(seed_images))
        x0 = (self.backend.encode(seed_images) if seed_latents is None else seed_latents)[:m]
        proxy_view = seed_view[:m]
        target = self.target_index(class_name)
        bo = GridBO(self.betas, cfg.bo.gammas, kappa=cfg.bo.kappa, n_initial=cfg.bo.n_initial,
                    seed=noise_seed(cfg.seed, c, batch_index, 1), warp=self.objective.warp, prior=prior,
                    freeze_after=cfg.bo.freeze_after)
        grid_size = len(self.betas) * len(cfg.bo.gammas)
        budget = cfg.bo.warm_budget if bo.prior and cfg.bo.warm_budget else cfg.bo.budget
        budget = 0 if grid_size == 1 else min(budget, grid_size)  # a one-point grid leaves nothing to choose
        while len(bo.observations) < budget and not (cfg.bo.early_stop and bo.observations and bo.should_stop()):
            points = bo.ask(min(cfg.bo.q, budget - len(bo.observations)))
            b = [bo.betas[i] for i, _ in points]
            g = [bo.gammas[j] for _, j in points]
            out = self.generate(seed_images[:m].repeat(len(points), 1, 1, 1), class_name,
                                np.repeat(b, m), np.repeat(g, m), seeds[:m] * len(points), proxy=True,
                                latents=x0.repeat(len(points), *([1] * (x0.dim() - 1))))
            gen_view = self.teacher.embed(out.images)
            values = [self.objective(proxy_view, gen_view[k * m:(k + 1) * m], target) for k in range(len(points))]
            bo.tell(points, values)
            yield BOStep(class_name, c, batch_index, len(bo.observations), budget, bo.observations[-len(points):],
                         list(bo.observations), bo.posterior(), bo.best,
                         out.images.view(len(points), m, *out.images.shape[1:]), seed_images, bo.prior_points)
        return bo

    def run_batch(self, seed_images: torch.Tensor, seed_ids: list[str], class_name: str, batch_index: int = 0,
                  slots: list[int] | None = None,
                  prior: Sequence[tuple[float, float, float]] = ()) -> Iterator[BOStep | BatchDone]:
        """BO for one mini-batch (search), then its full regeneration (Algorithm 1, lines 14-16).

        The seeds are encoded and seen by the teacher once, for the proxies and the final pass alike. seconds_bo
        counts what the search adds (proxies, their scores, GP fits); seconds_final counts the final pass and that
        shared work, which a run without BO does too (the final pass starts from the latents, f_final needs the view).
        """
        cfg = self.config
        c = self.dataset.class_index(class_name) if class_name in self.dataset.classes else 0
        slots = list(range(len(seed_images))) if slots is None else slots
        seeds = self.noise_seeds(class_name, slots)
        t0 = time.perf_counter()
        seed_latents = self.backend.encode(seed_images)
        seed_view = self.teacher.embed(seed_images)
        target = self.target_index(class_name)
        t1 = time.perf_counter()
        bo = yield from self.search(seed_images, seed_view, class_name, batch_index, slots, prior, seed_latents)
        beta, gamma, f_proxy = (bo.best.beta, bo.best.gamma, bo.best.f) if bo.observations else \
            (self.betas[0], cfg.bo.gammas[0], None)
        t2 = time.perf_counter()
        final = self.generate(seed_images, class_name, beta, gamma, seeds, proxy=False, latents=seed_latents)
        f_final = self.objective(seed_view, self.teacher.embed(final.images), target)
        t3 = time.perf_counter()
        yield BatchDone(class_name, c, batch_index, final.images, seed_images, list(seed_ids), slots, beta,
                        gamma, f_proxy, f_final, mean_pairwise_distance(final.latents), list(bo.observations),
                        t2 - t1, (t3 - t2) + (t1 - t0))

    @property
    def pilot(self) -> str:
        """The class whose observations seed every other class's search under the "run" scope: the first."""
        return self.classes[0]

    def prior(self, class_name: str, batch_index: int, history: History) -> list[tuple[float, float, float]]:
        """The observations that seed a mini-batch's GP under bo.scope: none ("batch", the paper's), the class's
        earlier batches ("class"), or those plus all of the pilot class's ("run").

        history (class -> batch -> observations) holds the finished batches', so a resumed run builds the same
        prior. A process without the pilot's (it went to another process) runs the pilot's searches itself and
        adds them to history: the same seeds and noise give the same observations, so the prior, and the images,
        do not depend on how the classes were spread over processes.
        """
        scope = self.config.bo.scope
        if scope == "batch":
            return []
        own = sorted((b, obs) for b, obs in history.get(class_name, {}).items() if b < batch_index)
        pilot: list[tuple[int, list]] = []
        if scope == "run" and class_name != self.pilot:
            pilot = sorted(self._pilot_history(history).items())
        return [o for _, obs in pilot + own for o in obs]

    def _pilot_history(self, history: History) -> dict[int, list[tuple[float, float, float]]]:
        """The pilot class's observations per batch, searching those history lacks (no final pass)."""
        done = history.setdefault(self.pilot, {})
        plan, _ = self.seed_plan(self.pilot)
        start = 0
        for b, idx in enumerate(plan):
            if b not in done:
                images = self.dataset.tensor(idx, self.backend.image_size, self.backend.channels)
                slots = list(range(start, start + len(idx)))
                steps = self.search(images, self.teacher.embed(images), self.pilot, b, slots,
                                    self.prior(self.pilot, b, history))
                while True:
                    try:
                        next(steps)
                    except StopIteration as stop:
                        done[b] = [(o.beta, o.gamma, o.f) for o in stop.value.observations]
                        break
            start += len(idx)
        return done

    def distill_class(self, class_name: str, finished: dict[int, BatchSummary] | None = None,
                      history: History | None = None) -> Iterator[Event]:
        """All mini-batches of one class; those in finished (batch index -> summary) are not run again.

        history (class -> batch -> observations) supplies the scope's prior and gains this class's batches.
        """
        plan, wrapped = self.seed_plan(class_name)
        c = self.dataset.class_index(class_name)
        finished = finished or {}
        history = {} if history is None else history
        done = 0
        summaries = []
        for b, idx in enumerate(plan):
            if b in finished:
                summaries.append(finished[b])
                done += len(idx)
                continue
            images = self.dataset.tensor(idx, self.backend.image_size, self.backend.channels)
            ids = [self.dataset.ids[i] for i in idx]
            t0 = time.perf_counter()
            prior = self.prior(class_name, b, history)
            t_prior = time.perf_counter() - t0  # nonzero only where this process searched the pilot class itself
            for ev in self.run_batch(images, ids, class_name, b, list(range(done, done + len(idx))), prior):
                if isinstance(ev, BatchDone):
                    ev.seconds_bo += t_prior
                    summaries.append(ev.summary())
                    history.setdefault(class_name, {})[b] = [(o.beta, o.gamma, o.f) for o in ev.observations]
                yield ev
            done += len(idx)
        yield ClassDone(class_name, c, done, wrapped, summaries)

    def assigned(self, shard: Shard = ONE_PROCESS, progress: Progress | None = None) -> list[str]:
        """This process's classes: the unfinished ones, dealt round-robin, so a resumed run stays balanced."""
        finished = progress.classes if progress else set()
        return [c for c in self.classes if c not in finished][shard.index::shard.count]

    def run(self, shard: Shard = ONE_PROCESS, progress: Progress | None = None) -> Iterator[Event]:
        """Algorithm 1 over this process's share of the configured classes, skipping what progress holds."""
        t0 = time.perf_counter()
        n, bo_s, final_s = 0, 0.0, 0.0
        history: History = {k: dict(v) for k, v in progress.history.items()} if progress else {}
        for name in self.assigned(shard, progress):
            for ev in self.distill_class(name, progress.batches.get(name) if progress else None, history):
                if isinstance(ev, BatchDone):
                    n += len(ev.images)
                    bo_s += ev.seconds_bo
                    final_s += ev.seconds_final
                yield ev
        yield RunDone(n, time.perf_counter() - t0, bo_s, final_s, list(self.classes))
