"""GP-UCB Bayesian optimisation over a discrete grid, with skopt's ask/tell split.

The surrogate is scikit-optimize's GaussianProcessRegressor with skopt's "GP" kernel (a constant times a
Matern 5/2) over grid coordinates scaled to [0, 1], plus a white-noise term bounded to at most 1% of the
normalised variance: proxies reuse the same seeds and noise for every candidate, so f is nearly noise-free, and
an unbounded noise term lets the GP explain away a whole axis after a few points. Length scales are bounded
to [0.3, 2] grid widths for the same reason.
UCB(x) = m(x) + kappa * sigma(x) is computed over the whole grid here, with evaluated and pending points
masked, rather than by skopt's Optimizer, whose duplicate avoidance on a small grid can re-propose a point.

The GP is fitted to a monotone warp of f (the objective's choice, e.g. -log(-f) for f = -KL, whose useful
differences are small next to its range) and its posterior is mapped back through the inverse warp, which keeps
quantiles: the reported mean is the posterior median and UCB the same quantile, both in f's own units.
The initial design is a Latin hypercube that includes both ends of each axis (the optimum of these surfaces
tends to sit on an edge, which a centred design never samples).

Cheaper searches (issue 12): prior observations (earlier mini-batches' f, averaged per grid point) enter the GP
but are not this batch's evaluations, so a point they cover can still be evaluated for the new seeds; with a prior
the design is the prior's n_initial best points (by posterior median), best first (warm_design "top"), its best
point alone, after which GP-UCB picks ("ucb"), or its best point and the least guidance at that point's gamma
("low": the challenger the one_se choice prefers, which it can take only if evaluated). should_stop() says when no
unevaluated point's UCB beats the best observed. freeze_after fixes the kernel's hyper-parameters at the first
fit to at least that many points (later fits only solve the GP): with a prior that is the first fit. kernel_prior
fixes them from the start at those learned on another prior (a class's first one, so a class's later mini-batches
solve their GPs without learning a kernel each). A GP with fixed hyper-parameters is solved by FixedGP, skopt's
arithmetic without skopt's per-fit overhead. A GP with a prior optimises its hyper-parameters from one start,
not three: the prior's many points pin them down.

The point a finished search hands to the final pass is `choose`'s: the best observed (Algorithm 1, line 14), or
the least guidance within one standard error of it ("one_se", the fast mode's), from each proxy's per-seed scores.

GP algebra runs with one BLAS thread: on a few dozen points threads gain nothing, and OpenBLAS workers keep
spinning after each call, taking the cores from the sampler's next UNet call (on a 2-core CPU that made a default
IPC 10 run 1.4x slower).
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy.linalg import cho_solve, cholesky, solve_triangular
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process.kernels import ConstantKernel, Kernel, Matern, WhiteKernel
from skopt.learning import GaussianProcessRegressor
from threadpoolctl import ThreadpoolController


@dataclass(frozen=True)
class Observation:
    beta: float
    gamma: float
    f: float
    step: int
    index: tuple[int, int]
    scores: tuple[float, ...] = ()  # each proxy seed's term of f (Objective.scores), for choose's "one_se"


CHOICES = ("best", "one_se")
GRID_WARM_DESIGNS = ("top", "ucb", "low")


def _checked_choice(choice: str) -> str:
    if choice not in CHOICES:
        raise ValueError(f"unknown choice {choice!r}; use one of {', '.join(CHOICES)}")
    return choice


def _within_one_se(top: Observation, other: Observation) -> bool:
    """Whether other's f trails top's by at most one standard error of their paired per-seed differences."""
    if len(top.scores) < 2 or len(top.scores) != len(other.scores):
        return False
    d = np.subtract(top.scores, other.scores)
    return bool(d.mean() <= d.std(ddof=1) / np.sqrt(len(d)))


def choose(observations: Sequence[Observation], choice: str = "best") -> Observation | None:
    """The point a search hands to its final pass.

    "best": the best observed (Algorithm 1, line 14). "one_se": the one-standard-error rule of model selection: of
    the points whose f is within one standard error of the best's, the one with the least guidance (lowest beta,
    then the higher f). The proxies of a search share their seeds and noise, so the gap to the best is measured seed
    by seed, and a gap under its standard error is one another draw of seeds could reverse. Where f is that flat in
    beta (the bundled digits at gamma 0.3) the best observed is a coin toss, tilted towards more guidance by an
    objective that rewards the teacher's confidence, while less guidance keeps more of the diversity CFG takes away.
    Points without per-seed scores have no standard error and count only as the best.
    """
    _checked_choice(choice)
    if not observations:
        return None
    top = max(observations, key=lambda o: o.f)
    if choice == "best":
        return top
    return min([top] + [o for o in observations if o is not top and _within_one_se(top, o)],
               key=lambda o: (o.beta, -o.f))


WARP_EPS = 1e-4
WARPS = ("none", "neglog")


def warp(f: np.ndarray, kind: str) -> np.ndarray:
    """The GP's target: "neglog" maps f = -KL <= 0 to -log(KL + 1e-4); "none" keeps f."""
    f = np.asarray(f, float)
    if kind == "none":
        return f
    return -np.log(np.maximum(-f, 0.0) + WARP_EPS)


def unwarp(y: np.ndarray, kind: str) -> np.ndarray:
    y = np.asarray(y, float)
    return -(np.exp(-y) - WARP_EPS) if kind == "neglog" else y


@cache
def _blas() -> ThreadpoolController:
    """The process's BLAS pools, found once."""
    return ThreadpoolController()


def _one_blas_thread():
    """The context GP fits and predictions run in (see above)."""
    return _blas().limit(limits=1, user_api="blas")


@dataclass(frozen=True, eq=False)
class FixedGP:
    """A GP posterior under given kernel hyper-parameters, in the arithmetic of skopt's GaussianProcessRegressor
    (normalize_y, jitter alpha = 1e-10, the variance through the precomputed inverse): the same floats.

    A search solves such a GP every round once its kernel is fixed; skopt's fit then spends most of its few
    milliseconds on parameter validation, cloning the kernel and a log marginal likelihood nobody reads. With
    this (and the prior's points matched to the grid in one array operation) a default uci-digits IPC 50 run
    spends 4% of its search in GP code, not 8%.
    """

    kernel_: Kernel
    x: np.ndarray
    alpha: np.ndarray
    k_inv: np.ndarray
    y_mean: float
    y_std: float

    @classmethod
    def solve(cls, kernel: Kernel, x: np.ndarray, y: np.ndarray) -> "FixedGP":
        y = np.asarray(y, float)
        y_mean, y_std = np.mean(y, axis=0), np.std(y, axis=0)
        y_std = 1.0 if y_std == 0.0 else y_std
        k = kernel(x)
        k[np.diag_indices_from(k)] += 1e-10
        cho = cholesky(k, lower=True, check_finite=False)
        alpha = cho_solve((cho, True), (y - y_mean) / y_std, check_finite=False)
        cho_inv = solve_triangular(cho.T, np.eye(len(cho)))
        return cls(kernel, x, alpha, cho_inv.dot(cho_inv.T), y_mean, y_std)

    @classmethod
    def of(cls, gp: GaussianProcessRegressor) -> "FixedGP":
        """The posterior of a fitted skopt GP (one that learned its kernel)."""
        return cls(gp.kernel_, gp.X_train_, gp.alpha_, gp.K_inv_, gp.y_train_mean_, gp.y_train_std_)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at x (a variance rounded below 0 counts as 0)."""
        k_trans = self.kernel_(x, self.x)
        mean = self.y_std * k_trans.dot(self.alpha) + self.y_mean
        var = self.kernel_.diag(x)
        var -= np.einsum("ki,kj,ij->k", k_trans, k_trans, self.k_inv)
        var[var < 0] = 0.0
        return mean, np.sqrt(var * self.y_std ** 2)


PRIOR_FITS_KEPT = 64
# (grid, warp, prior, fixed kernel's theta or None) -> the GP fitted to the prior alone; read-only once stored
_PRIOR_FITS: dict[tuple, FixedGP] = {}


@dataclass(frozen=True)
class GridPosterior:
    """The GP posterior of f over the full grid, in f's units: arrays shaped (len(betas), len(gammas)).

    mean is the posterior median (the warp's inverse of the GP mean), std half the width of the +-1 sigma
    interval, ucb the inverse warp of m + kappa * sigma.
    """

    betas: tuple[float, ...]
    gammas: tuple[float, ...]
    mean: np.ndarray
    std: np.ndarray
    ucb: np.ndarray


class GridBO:
    """Maximise f over betas x gammas: ask(q) proposes unevaluated grid points, tell() records their f.

    prior: (beta, gamma, f) observed on other seeds (points off this grid are ignored); freeze_after: the kernel's
    hyper-parameters are fixed at the first fit to at least this many points (0: optimised at every fit);
    kernel_prior: observations whose GP's learned hyper-parameters this one keeps from the start (none: it learns
    its own); warm_design: where a search with a prior starts, "top" (the prior's n_initial best points), "ucb" (its
    best point, then GP-UCB's picks, so a warm round of q also explores) or "low" (its best point and the lowest beta
    at that point's gamma, then GP-UCB's picks); choice: the rule of `chosen` (see choose).
    """

    def __init__(self, betas, gammas, kappa: float = 2.0, n_initial: int = 4, seed: int = 0, warp: str = "none",
                 prior: Sequence[tuple[float, float, float]] = (), freeze_after: int = 0,
                 kernel_prior: Sequence[tuple[float, float, float]] = (), warm_design: str = "top",
                 choice: str = "best"):
        self.betas = tuple(float(b) for b in betas)
        self.gammas = tuple(float(g) for g in gammas)
        self.kappa = float(kappa)
        if warp not in WARPS:
            raise ValueError(f"unknown warp {warp!r}; use one of {', '.join(WARPS)}")
        self.warp = warp
        if warm_design not in GRID_WARM_DESIGNS:
            raise ValueError(f"unknown warm design {warm_design!r}; use one of {', '.join(GRID_WARM_DESIGNS)}")
        self.warm_design = warm_design
        self.choice = _checked_choice(choice)
        self.n_initial = max(1, int(n_initial))
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        nb, ng = len(self.betas), len(self.gammas)
        ii, jj = np.meshgrid(np.arange(nb), np.arange(ng), indexing="ij")
        self.indices = np.stack([ii.ravel(), jj.ravel()], 1)
        self.coords = np.stack([ii.ravel() / max(nb - 1, 1), jj.ravel() / max(ng - 1, 1)], 1)
        self.observations: list[Observation] = []
        self._evaluated = np.zeros(len(self.indices), bool)
        self.freeze_after = int(freeze_after)
        self.kernel = None
        self.prior = self._prior(prior)
        learned = self._prior(kernel_prior)
        if learned:
            self.kernel = self._prior_gp(learned).kernel_
        # observations seen -> the GP fitted to them (and the prior), shared with snapshots: fitted when first needed
        self._fits: dict[int, FixedGP] = {0: self._prior_gp(self.prior)} if self.prior else {}
        self._design = self._prior_best() if self.prior else self._initial_design()

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.betas), len(self.gammas)

    @property
    def remaining(self) -> int:
        return int((~self._evaluated).sum())

    @property
    def design_left(self) -> int:
        """Design points not yet evaluated: they need no observation, so one round may take them all."""
        return sum(not self._evaluated[p] for p in self._design) if len(self.observations) < len(self._design) else 0

    def _gp(self) -> FixedGP | None:
        """The GP on the observations so far (and the prior), fitted on first use after a tell: a search whose last
        posterior nobody reads (the CLI's) skips that fit. Waiting never changes a result: a fit that may fix the
        kernel runs at its tell (see tell)."""
        n = len(self.observations)
        if n and n not in self._fits:
            self._fits[n] = self._fit([self._flat(o.index) for o in self.observations],
                                      [o.f for o in self.observations])
        return self._fits.get(n)

    def snapshot(self) -> "GridBO":
        """This search as it stands, unchanged by later tells (what a BOStep carries): its posterior is read, and
        the GP fitted, only if asked for, and a fit made for either serves both."""
        view = copy.copy(self)
        view.observations, view._evaluated = list(self.observations), self._evaluated.copy()
        return view

    def _flat(self, index: tuple[int, int]) -> int:
        return int(index[0]) * len(self.gammas) + int(index[1])

    def _prior(self, prior: Sequence[tuple[float, float, float]]) -> dict[int, float]:
        """Flat grid index -> mean warped f of the prior observations at that point."""
        sums: dict[int, list[float]] = {}
        p = np.asarray(prior, float).reshape(-1, 3)
        on_b = np.abs(p[:, :1] - np.asarray(self.betas)) <= 1e-9
        on_g = np.abs(p[:, 1:2] - np.asarray(self.gammas)) <= 1e-9
        keep = on_b.any(1) & on_g.any(1) & np.isfinite(p[:, 2])
        flat = on_b.argmax(1) * len(self.gammas) + on_g.argmax(1)
        for k, f in zip(flat[keep].tolist(), p[keep, 2].tolist()):
            sums.setdefault(k, []).append(float(warp(f, self.warp)))
        return {k: float(np.mean(v)) for k, v in sorted(sums.items())}

    @property
    def prior_points(self) -> list[tuple[float, float, float]]:
        """The prior as (beta, gamma, mean f) per grid point, in f's units (what the app marks as prior)."""
        return [(self.betas[k // len(self.gammas)], self.gammas[k % len(self.gammas)], float(unwarp(v, self.warp)))
                for k, v in self.prior.items()]

    def _prior_best(self) -> list[int]:
        """The design with a prior: the points where the prior's posterior median is highest, best first; n_initial
        of them ("top": a q-batch evaluates the top q on the new seeds), or the best alone ("ucb": the rest of a
        q-batch is GP-UCB's, picked with the constant liar, so a warm batch also tries a point the prior has not
        ruled out instead of inheriting the prior's noisy ranking), or the best and the lowest beta at its gamma
        ("low"; the same where the best has the lowest beta): one_se chooses among evaluated points only, and f is
        so flat in beta that a two-point warm batch without the least-guidance point almost never reaches it."""
        mean, _ = self._predict(self._gp())
        order = np.argsort(-mean, kind="stable")
        if self.warm_design == "top":
            return [int(p) for p in order[:min(self.n_initial, len(order))]]
        best = int(order[0])
        low = self._flat((int(np.argmin(self.betas)), best % len(self.gammas)))
        return [best] + ([low] if self.warm_design == "low" and low != best else [])

    def _prior_gp(self, prior: dict[int, float]) -> FixedGP:
        """The GP on a prior alone, fitted once per distinct (grid, warp, prior, fixed kernel): under the run scope
        every class's first mini-batch starts from the same prior (the pilot's), and that fit depends on nothing
        else (one optimiser start, so not on the seed)."""
        fixed = None if self.kernel is None else tuple(self.kernel.theta)
        key = (self.betas, self.gammas, self.warp, tuple(prior.items()), fixed)
        gp = _PRIOR_FITS.get(key)
        if gp is None:
            gp = self._fit([], [], prior=prior)
            if len(_PRIOR_FITS) >= PRIOR_FITS_KEPT:
                _PRIOR_FITS.pop(next(iter(_PRIOR_FITS)))
            _PRIOR_FITS[key] = gp
        if prior is self.prior:
            self._freeze(gp, len(prior))
        return gp

    def _freeze(self, gp: GaussianProcessRegressor | FixedGP, n_points: int) -> None:
        """Fix the kernel at gp's once a fit has seen freeze_after points (the prior's included)."""
        if self.kernel is None and self.freeze_after and n_points >= self.freeze_after:
            self.kernel = gp.kernel_

    def _fit(self, flat_idx: list[int], y: list[float], learn: bool = True,
             prior: dict[int, float] | None = None) -> FixedGP:
        """The GP on this batch's points plus the prior's (a point observed here drops the prior's value).

        learn: may fix the kernel (not for the constant-liar fits of a q-batch, whose made-up values would);
        prior: in place of this GP's own prior, for a fit to a prior alone (_prior_gp, which freezes)."""
        learn = learn and prior is None
        prior = self.prior if prior is None else prior
        own = set(flat_idx)
        extra = [k for k in prior if k not in own]
        x = self.coords[list(flat_idx) + extra]
        target = np.concatenate([warp(y, self.warp), [prior[k] for k in extra]])
        if self.kernel is not None:
            with _one_blas_thread():
                return FixedGP.solve(self.kernel, x, target)
        kernel = ConstantKernel(1.0, (0.01, 1000.0)) * Matern(
            length_scale=np.full(2, 0.5), length_scale_bounds=[(0.3, 2.0)] * 2, nu=2.5) \
            + WhiteKernel(1e-3, (1e-6, 1e-2))
        gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=0 if prior else 2,
                                      random_state=self.seed % 2**32)
        with warnings.catch_warnings(), _one_blas_thread():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(x, target)
        if learn:
            self._freeze(gp, len(target))
        return FixedGP.of(gp)

    def _predict(self, model: FixedGP | None) -> tuple[np.ndarray, np.ndarray]:
        if model is None:
            n = len(self.coords)
            return np.zeros(n), np.ones(n)
        with _one_blas_thread():
            return model.predict(self.coords)

    def _initial_design(self) -> list[int]:
        """An edge-inclusive Latin hypercube of n_initial points snapped to the grid: on each axis the points sit
        at 0, 1/(n-1), ..., 1 of its range, so both ends of beta and of gamma are sampled (a centred design never
        reaches the edges, where the optimum of these surfaces tends to sit) and the interior is too."""
        n = min(self.n_initial, len(self.indices))
        picks: list[int] = []
        for a, b in zip(self.rng.permutation(n), self.rng.permutation(n)):
            target = np.array([a, b]) / max(n - 1, 1)
            order = np.argsort(np.linalg.norm(self.coords - target, axis=1), kind="stable")
            picks.append(int(next(p for p in order if p not in picks)))
        return picks

    def ask(self, q: int = 1) -> list[tuple[int, int]]:
        """Up to q distinct unevaluated grid points (fewer when the grid runs out).

        The first points come from the design (the Latin design, or the prior's best points); after that each pick
        maximises UCB over the grid with evaluated and already-picked points masked, refitting with a constant
        liar (the mean of the observations, else of the prior) for each pick after the first.
        """
        taken = self._evaluated.copy()
        design = len(self.observations) < len(self._design)
        picks = [p for p in self._design if not taken[p]][:q] if design else []
        taken[picks] = True
        obs_idx = [self._flat(o.index) for o in self.observations]
        obs_f = [o.f for o in self.observations]
        lie_w = np.mean(warp(obs_f, self.warp)) if obs_f else np.mean(list(self.prior.values()) or [0.0])
        lie = float(unwarp(lie_w, self.warp))
        while len(picks) < q and not taken.all():
            model = self._fit(obs_idx + picks, obs_f + [lie] * len(picks), learn=False) if picks else self._gp()
            mean, std = self._predict(model)
            ucb = np.where(taken, -np.inf, mean + self.kappa * std)
            best = np.flatnonzero(ucb >= ucb.max() - 1e-12)
            p = int(best[self.rng.integers(len(best))])
            picks.append(p)
            taken[p] = True
        return [tuple(int(v) for v in self.indices[p]) for p in picks]

    def tell(self, points: list[tuple[int, int]], values: list[float],
             scores: Sequence[Sequence[float]] | None = None) -> None:
        """Record f at points; scores: each point's per-seed terms of f (for the "one_se" choice)."""
        for index, f, s in zip(points, values, scores or [()] * len(points), strict=True):
            flat = self._flat(index)
            if self._evaluated[flat]:
                raise ValueError(f"grid point {index} was already evaluated")
            if not np.isfinite(f):
                raise ValueError(f"f at {index} is not finite: {f}")
            self._evaluated[flat] = True
            self.observations.append(Observation(self.betas[index[0]], self.gammas[index[1]], float(f),
                                                 len(self.observations) + 1, (int(index[0]), int(index[1])),
                                                 tuple(float(v) for v in s)))
        if self.kernel is None and self.freeze_after:
            self._gp()  # this fit may fix the kernel, so it runs now

    def should_stop(self) -> bool:
        """Early stopping: once the design is done, True when no unevaluated point's UCB exceeds the best
        observed f of this batch (prior points count as unevaluated: they may still be run on these seeds)."""
        if len(self.observations) < len(self._design) or self._gp() is None or not self.remaining:
            return not self.remaining
        mean, std = self._predict(self._gp())
        ucb = (mean + self.kappa * std)[~self._evaluated]
        return bool(ucb.max() <= float(warp(self.best.f, self.warp)))

    def posterior(self) -> GridPosterior:
        model = self._gp()
        mean, std = self._predict(model)
        shape, w = self.shape, self.warp
        if model is None:
            return GridPosterior(self.betas, self.gammas, np.full(shape, np.nan), np.full(shape, np.nan),
                                 np.full(shape, np.nan))
        half = (unwarp(mean + std, w) - unwarp(mean - std, w)) / 2
        return GridPosterior(self.betas, self.gammas, unwarp(mean, w).reshape(shape), half.reshape(shape),
                             unwarp(mean + self.kappa * std, w).reshape(shape))

    @property
    def best(self) -> Observation | None:
        """The best OBSERVED point (Algorithm 1, line 14), not the GP's argmax."""
        return choose(self.observations)

    @property
    def chosen(self) -> Observation | None:
        """The point the final pass runs at, under this search's choice rule (choose)."""
        return choose(self.observations, self.choice)
