"""Algorithm 1 as a stream of typed events.

For every class: draw mini-batches of seeds (without replacement), run GP-UCB over beta x gamma on proxy
generations that take a share of the steps of the final schedule (a BOStep event after every round), each scored by
the configured objective (eq. 5 by default), regenerate the seeds at the chosen observed (beta*, gamma*) (the best
observed in the paper's mode; bo.choose) with the full sampler and repulsion (BatchDone), until the class has exactly
IPC images (ClassDone); RunDone closes the stream. The CLI, the app and the benchmarks consume this stream.

The BO mode sets what the search costs (config.BO_MODES): "paper" is Algorithm 1 as written (a fresh GP per
mini-batch, all seeds, every other step); "fast" warm-starts each mini-batch's GP from the finished batches of its
class and of the run's first class (the pilot), runs proxies on a few seeds and fewer steps, and spends a small
budget where a prior exists.

A mini-batch's first proxy round is fixed before any of its proxies run (the design's first points, topped up with
GP-UCB picks on the prior: from the prior alone), so it rides in the final pass of the class's previous mini-batch:
one sampler call (sampler.img2img_jobs) for both. A class's first mini-batch has no predecessor: its first round runs
in one call with those of the other classes of its unit (bo.class_group classes in class order after the pilot, which
is a unit of its own), and a unit goes to one process. Which call a round runs in depends only on its class and batch
(a resumed run, or a process searching the pilot class, redoes the final pass a round rides in, and a unit's call
always holds every class of the unit), so the bytes do not depend on the process layout even where a sample's bits
depend on its batch mates. A round is charged its marginal time in a final pass, its share by rows of a unit's call.

Every class and every mini-batch is seeded on its own (noise per (seed, class, slot), BO per (seed, class, batch)),
and a warm start's prior comes from finished batches only (a process without the pilot's searches them itself), so
classes can be spread over processes (Shard) and finished batches skipped (Progress) without changing a byte.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from .backends import Backend, create_backend
from .bo import GridBO, GridPosterior, Observation
from .classmap import align_teacher, class_notes
from .config import ConfigError, DistillConfig, RepulsionConfig
from .data import BUILTIN_DATASETS, ImageDataset, load_dataset
from .fidelity import Embedding, Teacher, load_teacher
from .repulsion import Bandwidth, mean_pairwise_distance
from .sampler import Job, SampleResult, img2img_jobs, noise_seed


@dataclass
class BOStep:
    """One BO round: its candidates and proxy images, and the search as it stood after it (a GridBO.snapshot),
    from which the observations, the best point, the prior and the posterior are read."""

    class_name: str
    class_index: int
    batch_index: int
    budget: int
    candidates: list[Observation]
    search: GridBO
    proxy_images: torch.Tensor  # (len(candidates), proxy seeds, C, H, W)
    seed_images: torch.Tensor

    @property
    def observations(self) -> list[Observation]:
        return self.search.observations

    @property
    def evaluations(self) -> int:
        return len(self.search.observations)

    @property
    def best(self) -> Observation:
        return self.search.best

    @property
    def chosen(self) -> Observation:
        """The point the final pass would run at if the search ended now (bo.choice; the best under "best")."""
        return self.search.chosen

    @property
    def prior(self) -> list[tuple[float, float, float]]:
        """(beta, gamma, mean f) of the prior that seeded the GP."""
        return self.search.prior_points

    @cached_property
    def posterior(self) -> GridPosterior:
        """The GP posterior over the grid after this round, fitted when first read (the CLI never reads it)."""
        return self.search.posterior()


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


@dataclass
class _Batch:
    """One mini-batch made ready to run: its seeds loaded, encoded and seen by the teacher, its GP built on the
    scope's prior, and, when it rode in the previous batch's final pass, its first proxy round already generated."""

    class_name: str
    class_index: int
    index: int
    images: torch.Tensor
    ids: list[str]
    slots: list[int]
    noise: list[int]  # the slots' noise seeds
    latents: torch.Tensor
    view: Embedding
    bo: GridBO
    budget: int
    seconds_shared: float  # encoding and the teacher's view: final-pass time, a run without BO does it too
    seconds_bo: float  # the prior (and pilot searches this process ran for it), the GP, a ridden first round
    first: tuple[list[tuple[int, int]], torch.Tensor] | None = None  # (points, proxy images) of the first round


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


@dataclass(frozen=True)
class Searched:
    """A finished mini-batch's search as later ones need it: its observations as (beta, gamma, f), a prior for the
    scope's later searches, and the point its final pass ran at, in which the next mini-batch's first round rides."""

    observed: list[tuple[float, float, float]]
    beta: float
    gamma: float


History = dict[str, dict[int, Searched]]  # class -> batch -> its search


@dataclass
class Progress:
    """What an interrupted run already wrote: the finished classes, and per class the finished batches'
    summaries, so a resumed run skips them and still reports them, and their searches, which a class- or run-scope
    search starts from."""

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


def _outcome(steps: Generator[BOStep, None, GridBO]) -> GridBO:
    """Run a search to its end for its result alone (its events are not wanted)."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


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

    def job(self, seed_images: torch.Tensor, class_name: str, beta, gamma, seeds: list[int], *, proxy: bool,
            weight: float | None = None, bandwidth=None, groups=None, latents: torch.Tensor | None = None) -> Job:
        """A proxy (the proxy steps of the final schedule, no repulsion) or full (repulsion) sampler job; latents:
        the seeds' encoding when the caller has it."""
        return Job(seed_images, [class_name] * len(seed_images), beta, gamma, seeds,
                   stride=self.config.sampler.proxy_stride if proxy else 1,
                   repulsion_weight=0.0 if proxy else (self.weight if weight is None else weight),
                   bandwidth=self.config.repulsion.bandwidth if bandwidth is None else bandwidth,
                   groups=groups, latents=latents)

    def sample(self, jobs: list[Job]) -> list[SampleResult]:
        """Jobs in one denoising loop with the run's sampler settings."""
        sc = self.config.sampler
        return img2img_jobs(self.backend, jobs, steps=sc.steps, scheduler=sc.scheduler, eta=sc.eta)

    def generate(self, seed_images: torch.Tensor, class_name: str, beta, gamma, seeds: list[int], *, proxy: bool,
                 weight: float | None = None, bandwidth=None, groups=None,
                 latents: torch.Tensor | None = None) -> SampleResult:
        """One job (see job) run alone."""
        return self.sample([self.job(seed_images, class_name, beta, gamma, seeds, proxy=proxy, weight=weight,
                                     bandwidth=bandwidth, groups=groups, latents=latents)])[0]

    def prepare(self, seed_images: torch.Tensor, seed_ids: list[str], class_name: str, batch_index: int = 0,
                slots: list[int] | None = None, prior: Sequence[tuple[float, float, float]] = (),
                kernel_prior: Sequence[tuple[float, float, float]] = ()) -> _Batch:
        """A mini-batch ready for its search: seeds encoded and seen by the teacher once (for its proxies and its
        final pass), the GP built on prior (the scope's earlier observations), its kernel learned on kernel_prior
        when given (the class's first prior, under kernel_scope "class"), and the budget set: with a prior,
        bo.first_warm_budget evaluations for a class's first mini-batch and bo.warm_budget for its later ones (0:
        bo.warm_budget, then bo.budget), never more than bo.budget, none on a one-point grid (nothing to choose)."""
        cfg = self.config
        c = self.dataset.class_index(class_name) if class_name in self.dataset.classes else 0
        slots = list(range(len(seed_images))) if slots is None else slots
        t0 = time.perf_counter()
        latents = self.backend.encode(seed_images)
        view = self.teacher.embed(seed_images)
        t1 = time.perf_counter()
        bo = GridBO(self.betas, cfg.bo.gammas, kappa=cfg.bo.kappa, n_initial=cfg.bo.n_initial,
                    seed=noise_seed(cfg.seed, c, batch_index, 1), warp=self.objective.warp, prior=prior,
                    freeze_after=cfg.bo.freeze_after, kernel_prior=kernel_prior,
                    warm_design=self.warm_design(batch_index), choice=cfg.bo.choice)
        grid_size = len(self.betas) * len(cfg.bo.gammas)
        warm = cfg.bo.first_warm_budget if batch_index == 0 and cfg.bo.first_warm_budget else cfg.bo.warm_budget
        budget = min(warm, cfg.bo.budget) if bo.prior and warm else cfg.bo.budget
        budget = 0 if grid_size == 1 else min(budget, grid_size)
        return _Batch(class_name, c, batch_index, seed_images, list(seed_ids), slots,
                      self.noise_seeds(class_name, slots), latents, view, bo, budget, t1 - t0,
                      time.perf_counter() - t1)

    def warm_design(self, batch_index: int) -> str:
        """GridBO's warm design for a mini-batch: "top_then_ucb" / "top_then_low" leave the prior's best points only
        once the class has batches of its own, since a second point pays off in the class's later batches, and at
        one batch per class it is a noisy coin flip against the pilot's best (it cost resnet10t 4 points on val at
        IPC 10)."""
        design = self.config.bo.warm_design
        if design.startswith("top_then_"):
            return design.removeprefix("top_then_") if batch_index else "top"
        return design

    def _proxy_seeds(self, batch: _Batch) -> int:
        return min(self.config.bo.proxy_seeds or len(batch.images), len(batch.images))

    def proxy_job(self, batch: _Batch, points: list[tuple[int, int]]) -> Job:
        """The proxies of one BO round: every point on the batch's first bo.proxy_seeds seeds (0: all)."""
        m = self._proxy_seeds(batch)
        b = [batch.bo.betas[i] for i, _ in points]
        g = [batch.bo.gammas[j] for _, j in points]
        x0 = batch.latents[:m]
        return self.job(batch.images[:m].repeat(len(points), 1, 1, 1), batch.class_name, np.repeat(b, m),
                        np.repeat(g, m), batch.noise[:m] * len(points), proxy=True,
                        latents=x0.repeat(len(points), *([1] * (x0.dim() - 1))))

    def round_size(self, batch: _Batch) -> int:
        """Candidates in the batch's next BO round: while the initial design lasts, its points up to bo.design_q (they
        need no observation, so one sampler call runs them together; a design shorter than q, a warm "ucb" one, is
        topped up with GP-UCB picks), else bo.q; never past the budget."""
        bo, q = self.config.bo, self.config.bo.q
        if bo.design_q and batch.bo.design_left:
            q = max(q, min(bo.design_q, batch.bo.design_left))
        return min(q, batch.budget - len(batch.bo.observations))

    def first_round(self, batch: _Batch) -> list[tuple[int, int]]:
        """The points of the batch's first BO round: fixed before any proxy runs (the design's first points)."""
        return batch.bo.ask(self.round_size(batch)) if batch.budget else []

    def search(self, batch: _Batch) -> Generator[BOStep, None, GridBO]:
        """BO over the grid for one mini-batch (Algorithm 1, lines 6-13): a BOStep per round; returns the GridBO.

        With bo.early_stop the search ends once no unevaluated point's UCB beats the best observed. A first round
        the batch already holds (batch.first) is scored, not generated again.
        """
        cfg, bo = self.config, batch.bo
        m = self._proxy_seeds(batch)
        proxy_view = batch.view[:m]
        target = self.target_index(batch.class_name)
        first, batch.first = batch.first, None
        while len(bo.observations) < batch.budget and not (cfg.bo.early_stop and bo.observations
                                                           and bo.should_stop()):
            if first is not None:
                (points, images), first = first, None
            else:
                points = bo.ask(self.round_size(batch))
                images = self.sample([self.proxy_job(batch, points)])[0].images
            gen_view = self.teacher.embed(images)
            views = [gen_view[k * m:(k + 1) * m] for k in range(len(points))]
            bo.tell(points, [self.objective(proxy_view, v, target) for v in views],
                    [self.objective.scores(proxy_view, v, target).tolist() for v in views])
            yield BOStep(batch.class_name, batch.class_index, batch.index, batch.budget,
                         bo.observations[-len(points):], bo.snapshot(), images.view(len(points), m, *images.shape[1:]),
                         batch.images)
        return bo

    def run_batch(self, seed_images: torch.Tensor, seed_ids: list[str], class_name: str, batch_index: int = 0,
                  slots: list[int] | None = None, prior: Sequence[tuple[float, float, float]] = (),
                  kernel_prior: Sequence[tuple[float, float, float]] = ()) -> Iterator[BOStep | BatchDone]:
        """BO for one mini-batch (search), then its full regeneration (Algorithm 1, lines 14-16)."""
        yield from self._run(self.prepare(seed_images, seed_ids, class_name, batch_index, slots, prior,
                                          kernel_prior))

    def _run(self, batch: _Batch,
             after_search: Callable[[GridBO], _Batch | None] | None = None) -> Iterator[BOStep | BatchDone]:
        """Search, then the final pass. after_search(bo) may hand over the next mini-batch, whose first proxy round
        then rides in this final pass (and is its own time, not this batch's).

        seconds_bo counts what the search adds (proxies, their scores, GP fits); seconds_final counts the final
        pass and the work it shares with the proxies, which a run without BO does too (the encoding of the seeds,
        the teacher's view of them).
        """
        cfg = self.config
        t0 = time.perf_counter()
        bo = yield from self.search(batch)
        t_search = time.perf_counter() - t0
        beta, gamma, f_proxy = self._chosen(bo)
        nxt = after_search(bo) if after_search is not None else None
        final = self._final_with_ride(self._final_job(batch, beta, gamma), nxt)
        t2 = time.perf_counter()
        f_final = self.objective(batch.view, self.teacher.embed(final.images), self.target_index(batch.class_name))
        seconds_final = final.seconds + (time.perf_counter() - t2) + batch.seconds_shared
        yield BatchDone(batch.class_name, batch.class_index, batch.index, final.images, batch.images, batch.ids,
                        batch.slots, beta, gamma, f_proxy, f_final, mean_pairwise_distance(final.latents),
                        list(bo.observations), t_search + batch.seconds_bo, seconds_final)

    def _chosen(self, bo: GridBO) -> tuple[float, float, float | None]:
        """(beta*, gamma*, its proxy f) of a finished search under bo.choice; with no evaluation (a one-point grid)
        the grid's first point and no f."""
        c = bo.chosen
        return (self.betas[0], self.config.bo.gammas[0], None) if c is None else (c.beta, c.gamma, c.f)

    def _searched(self, bo: GridBO) -> Searched:
        beta, gamma, _ = self._chosen(bo)
        return Searched([(o.beta, o.gamma, o.f) for o in bo.observations], beta, gamma)

    def _final_job(self, batch: _Batch, beta: float, gamma: float) -> Job:
        return self.job(batch.images, batch.class_name, beta, gamma, batch.noise, proxy=False, latents=batch.latents)

    def _final_with_ride(self, final: Job, nxt: _Batch | None) -> SampleResult:
        """A final pass with nxt's first proxy round riding in it (its points are fixed before any of its proxies
        run); nxt is charged the round's marginal time."""
        points: list[tuple[int, int]] = []
        if nxt is not None:
            t0 = time.perf_counter()
            points = self.first_round(nxt)
            nxt.seconds_bo += time.perf_counter() - t0
        out, *ride = self.sample([final] + ([self.proxy_job(nxt, points)] if points else []))
        if ride:
            nxt.first = (points, ride[0].images)
            nxt.seconds_bo += ride[0].seconds
        return out

    def _ride_after(self, batch: _Batch, idx: np.ndarray, slots: list[int], beta: float, gamma: float) -> None:
        """Give batch the first round it gets in a run where its predecessor (seeds idx, output slots, final at
        (beta, gamma)) ran its final pass here: that final pass is redone for the sampler call alone, so that a
        resumed run, or a process searching the pilot class, puts the round in the same call as an uninterrupted
        run (a sample's bits may depend on its batch mates: on GPUs, or on a CPU for small batches). The redone
        pass counts as search time."""
        t0 = time.perf_counter()
        images = self._seed_images(idx)
        job = self.job(images, batch.class_name, beta, gamma, self.noise_seeds(batch.class_name, slots),
                       proxy=False, latents=self.backend.encode(images))
        seconds = batch.seconds_bo
        self._final_with_ride(job, batch)
        batch.seconds_bo = seconds + time.perf_counter() - t0

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
        own = sorted((b, s.observed) for b, s in history.get(class_name, {}).items() if b < batch_index)
        pilot: list[tuple[int, list]] = []
        if scope == "run" and class_name != self.pilot:
            pilot = sorted((b, s.observed) for b, s in self._pilot_history(history).items())
        return [o for _, obs in pilot + own for o in obs]

    def kernel_prior(self, class_name: str, batch_index: int, history: History) -> list[tuple[float, float, float]]:
        """Under bo.kernel_scope "class", the prior whose GP kernel a mini-batch keeps: its class's first non-empty
        prior, when that belongs to an earlier batch (none otherwise: the batch learns its own). Built from history
        alone, so a resumed or sharded run keeps the same kernel."""
        if self.config.bo.kernel_scope != "class":
            return []
        return next((p for p in (self.prior(class_name, b, history) for b in range(batch_index)) if p), [])

    def _pilot_history(self, history: History) -> dict[int, Searched]:
        """The pilot class's searches per batch, running those history lacks (and redoing the final pass before
        each, in which its first round rides)."""
        done = history.setdefault(self.pilot, {})
        batches = self._batches(self.seed_plan(self.pilot)[0])
        for b, idx, slots in batches:
            if b not in done:
                batch = self.prepare(self._seed_images(idx), self._seed_ids(idx), self.pilot, b, slots,
                                     self.prior(self.pilot, b, history), self.kernel_prior(self.pilot, b, history))
                if b > 0 and batch.budget:
                    prev = done[b - 1]
                    self._ride_after(batch, batches[b - 1][1], batches[b - 1][2], prev.beta, prev.gamma)
                done[b] = self._searched(_outcome(self.search(batch)))
        return done

    @staticmethod
    def _batches(plan: list[np.ndarray]) -> list[tuple[int, np.ndarray, list[int]]]:
        """(batch index, dataset indices of its seeds, its output slots) for each mini-batch of a class's seed plan."""
        starts = np.cumsum([0] + [len(idx) for idx in plan])
        return [(b, idx, list(range(starts[b], starts[b + 1]))) for b, idx in enumerate(plan)]

    def _seed_images(self, idx: np.ndarray) -> torch.Tensor:
        return self.dataset.tensor(idx, self.backend.image_size, self.backend.channels)

    def _seed_ids(self, idx: np.ndarray) -> list[str]:
        return [self.dataset.ids[i] for i in idx]

    def distill_class(self, class_name: str, finished: dict[int, BatchSummary] | None = None,
                      history: History | None = None) -> Iterator[Event]:
        """All mini-batches of one class; those in finished (batch index -> summary) are not run again.

        history (class -> batch -> observations) supplies the scope's prior and gains this class's batches.
        """
        yield from self._distill([(class_name, finished or {})], {} if history is None else history)

    def _distill(self, work: list[tuple[str, dict[int, BatchSummary]]], history: History) -> Iterator[Event]:
        """The mini-batches of the classes in work, in order, skipping the finished ones. Within a class, each
        batch's first proxy round rides in the previous batch's final pass, also when that batch was finished
        before a resume (its final pass is redone for the ride): which call a round runs in depends only on its
        class and batch, never on how classes are spread over processes or where a run was resumed."""
        unit_firsts: dict[str, _Batch] = {}  # first mini-batches of the unit being run, their first rounds done
        for name, finished in work:
            plan, wrapped = self.seed_plan(name)
            batches = self._batches(plan)
            summaries: list[BatchSummary] = []
            ahead: list[_Batch] = []
            for b, idx, slots in batches:
                if b in finished:
                    summaries.append(finished[b])
                    continue
                if ahead:
                    batch = ahead.pop()
                elif b == 0:
                    if name not in unit_firsts:  # a new unit: what the last one left (finished classes') goes
                        unit_firsts = self._unit_first_rounds(name, history)
                    batch = unit_firsts.pop(name)
                else:
                    batch = self._prepare_in_run(name, b, idx, slots, history)
                if b > 0 and batch.first is None and batch.budget:
                    prev = finished[b - 1]
                    self._ride_after(batch, batches[b - 1][1], batches[b - 1][2], prev.beta, prev.gamma)

                def after_search(bo: GridBO, b: int = b) -> _Batch | None:
                    history.setdefault(name, {})[b] = self._searched(bo)
                    if b + 1 == len(batches) or b + 1 in finished:
                        return None
                    ahead.append(self._prepare_in_run(name, *batches[b + 1], history))
                    return ahead[0]

                for ev in self._run(batch, after_search):
                    if isinstance(ev, BatchDone):
                        summaries.append(ev.summary())
                    yield ev
            yield ClassDone(name, self.dataset.class_index(name), sum(len(idx) for idx in plan), wrapped, summaries)

    def units(self) -> list[list[str]]:
        """The configured classes as the units a run deals to processes: the pilot alone (under the "run" scope every
        other class's first prior waits for its search), then bo.class_group classes at a time in class order. The
        first rounds of a unit's first mini-batches run in one sampler call."""
        g, rest = self.config.bo.class_group, self.classes[1:]
        return [[self.pilot]] + [rest[i:i + g] for i in range(0, len(rest), g)]

    def _unit_first_rounds(self, name: str, history: History) -> dict[str, _Batch]:
        """The first mini-batch of every class in name's unit, prepared, with its first proxy round generated: all
        the unit's rounds in one sampler call, which holds them all even when some class of the unit is finished or
        runs elsewhere, so its bits do not depend on the layout. Each round is charged its share of the call."""
        unit = next(u for u in self.units() if name in u)
        batches = {c: self._prepare_in_run(c, *self._batches(self.seed_plan(c)[0])[0], history) for c in unit}
        searched = [batch for batch in batches.values() if batch.budget]
        if searched:
            t0 = time.perf_counter()
            points = [self.first_round(batch) for batch in searched]
            t_ask = (time.perf_counter() - t0) / len(searched)
            for batch, p, out in zip(searched, points, self.sample([self.proxy_job(b, p)
                                                                      for b, p in zip(searched, points)])):
                batch.first = (p, out.images)
                batch.seconds_bo += t_ask + out.seconds
        return batches

    def _prepare_in_run(self, name: str, b: int, idx: np.ndarray, slots: list[int], history: History) -> _Batch:
        """prepare() for a batch of a run: its prior from history (time that counts as search)."""
        t0 = time.perf_counter()
        prior = self.prior(name, b, history)  # searches the pilot class where this process lacks it
        kernel_prior = self.kernel_prior(name, b, history)
        t_prior = time.perf_counter() - t0
        batch = self.prepare(self._seed_images(idx), self._seed_ids(idx), name, b, slots, prior, kernel_prior)
        batch.seconds_bo += t_prior
        return batch

    def assigned(self, shard: Shard = ONE_PROCESS, progress: Progress | None = None) -> list[str]:
        """This process's classes: the unfinished ones, dealt round-robin by unit (units), so a resumed run stays
        balanced and a unit's first rounds are generated once."""
        finished = progress.classes if progress else set()
        open_units = [[c for c in u if c not in finished] for u in self.units()]
        return [c for u in [u for u in open_units if u][shard.index::shard.count] for c in u]

    def run(self, shard: Shard = ONE_PROCESS, progress: Progress | None = None) -> Iterator[Event]:
        """Algorithm 1 over this process's share of the configured classes, skipping what progress holds."""
        t0 = time.perf_counter()
        n, bo_s, final_s = 0, 0.0, 0.0
        history: History = {k: dict(v) for k, v in progress.history.items()} if progress else {}
        work = [(name, progress.batches.get(name, {}) if progress else {}) for name in self.assigned(shard, progress)]
        for ev in self._distill(work, history):
            if isinstance(ev, BatchDone):
                n += len(ev.images)
                bo_s += ev.seconds_bo
                final_s += ev.seconds_final
            yield ev
        yield RunDone(n, time.perf_counter() - t0, bo_s, final_s, list(self.classes))
