"""The batched img2img sampler: one denoising loop over a backend's components, in the stages of diffusers'
pipeline_stable_diffusion_img2img.py (check inputs, prepare latents and timesteps from strength, denoise loop,
decode), where every sample carries its own CFG scale beta, strength gamma, noise generator and repulsion group.

Cohorts: samples whose gamma gives the same start timestep share one copy of the scheduler (multistep solvers keep
a history per copy, which must not mix samples that started at different times). Cohorts join the loop when
their first timestep comes and all end on the same final step, so one UNet call per step evaluates many
(beta, gamma) candidates. `order` is the scheduler's number of model calls per step (2 for Heun-type solvers):
a start index counts timesteps, so it is the step index times order.

Proxies (BO's cheap generations, Algorithm 1 line 10) run on the final sampler's own schedule: a proxy for gamma
starts at exactly the timestep the full sampler starts at and takes every `stride`-th of its steps.

Jobs: several img2img requests (each with its own stride, repulsion and groups) can share one denoising loop, so a
mini-batch's final pass and the next mini-batch's first proxies cost one UNet call per step instead of two; on a
call-bound device (a CPU, or a GPU at small batches) the proxies then ride almost free. Rows of one call do not
interact (CFG, scheduler and repulsion all act per job), so every job's images are those it gets alone.

Repulsion (eq. 6) is a displacement of the latents, not an edit of the noise the scheduler sees: eq. 6 adds
lambda * g (g = sum_j grad k) to eps, which an unclipped DDIM step turns into z_prev += d(z_prev)/d(eps) * lambda * g.
The scheduler steps with the guided eps alone and the sampler adds that displacement after it, so schedulers that
clip or threshold the predicted clean image (which would keep only part of the term, reversing its sign in clipped
pixels) still move every latent away from its group mates by the amount eq. 6 gives.
"""
from __future__ import annotations

import copy
import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache

import numpy as np
import torch

from .backends import Backend
from .repulsion import Bandwidth, grouped_repulsion


def start_index(steps: int, gamma: float) -> int:
    """Index of the first of `steps` timesteps that strength gamma runs, as diffusers' img2img computes it."""
    init_timestep = min(int(steps * gamma), steps)
    return max(steps - init_timestep, 0)


def noise_seed(*keys: int) -> int:
    """A 63-bit generator seed from integer keys (run seed, class, slot): independent streams per sample."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclass
class SampleResult:
    """A job's images and final latents; seconds is its share of the call's wall time (see img2img_jobs)."""

    images: torch.Tensor
    latents: torch.Tensor
    seconds: float = 0.0


@dataclass
class Job:
    """One img2img request (img2img's per-request arguments, documented there) in a loop shared with others."""

    images: torch.Tensor
    classes: Sequence[str]
    betas: float | Sequence[float]
    gammas: float | Sequence[float]
    seeds: Sequence[int]
    stride: int = 1
    repulsion_weight: float = 0.0
    bandwidth: Bandwidth = "auto"
    groups: Sequence[int] | None = None
    latents: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Cohort:
    """Samples that start at the same timestep: their indices, their scheduler copy, the timesteps it runs and,
    per step, d(z_prev)/d(eps), the factor that turns eq. 6's noise term into a latent displacement."""

    idx: torch.Tensor
    scheduler: object
    timesteps: torch.Tensor
    eps_to_latent: list[float]

    def joins_at(self, loop_length: int) -> int:
        return loop_length - len(self.timesteps)


def guided_noise(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """CFG as eps_u + beta * (eps_c - eps_u), beta per sample (see config.py for the paper's form)."""
    return eps_uncond + beta.view(-1, *([1] * (eps_cond.dim() - 1))) * (eps_cond - eps_uncond)


def _alpha_bar(scheduler, t: int | None) -> float:
    """Cumulative alpha at timestep t; None is the end of the chain (the scheduler's final alpha, else 1)."""
    if t is None or t < 0:
        return float(getattr(scheduler, "final_alpha_cumprod", 1.0))
    return float(scheduler.alphas_cumprod[int(t)])


def eps_to_latent(scheduler, t: int, t_next: int | None, eta: float = 0.0) -> float:
    """d(z_next)/d(eps) of one unclipped first-order step from t to t_next (None: the last step).

    Variance-preserving latents (DDIM, DPM-Solver, UniPC): sqrt(1 - a' - s^2) - sqrt(a' / a) sqrt(1 - a), with
    a, a' the cumulative alphas and s DDIM's eta-scaled noise; exact for DDIM, the first-order term for
    multistep solvers. Variance-exploding latents (Euler-type, init_noise_sigma > 1): sigma' - sigma.
    The value is negative, so adding it times lambda * g moves z against g, i.e. away from its neighbours.
    """
    a, a_next = _alpha_bar(scheduler, t), _alpha_bar(scheduler, t_next)
    if float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0:
        return math.sqrt((1 - a_next) / a_next) - math.sqrt((1 - a) / a)
    var = eta ** 2 * (1 - a_next) / (1 - a) * (1 - a / a_next) if eta > 0 else 0.0
    return math.sqrt(max(1 - a_next - var, 0.0)) - math.sqrt(a_next / a) * math.sqrt(1 - a)


@cache
def _takes(cls: type, method: str, parameter: str) -> bool:
    """Whether a scheduler class's method has the parameter (asked once per class: inspect is slow)."""
    return parameter in inspect.signature(getattr(cls, method)).parameters


def _strided_scheduler(backend: Backend, name: str, stride: int, wanted: torch.Tensor):
    """A scheduler that runs exactly the timesteps `wanted` (every stride-th of the full schedule's tail).

    Schedulers whose set_timesteps takes a list get it. DDIM-type ones step from t to
    t - num_train_timesteps // num_inference_steps; an exact Fraction num_train_timesteps / gap makes that
    gap exactly the proxy's, whatever the rounding of steps // stride would give.
    """
    sch = backend.make_scheduler(name)
    if _takes(type(sch), "set_timesteps", "timesteps"):
        sch.set_timesteps(timesteps=[int(t) for t in wanted], device=wanted.device)
        if not torch.equal(sch.timesteps.to(wanted.device, wanted.dtype), wanted):
            raise ValueError(f"{name} did not accept the proxy timesteps {wanted.tolist()}")
        return sch
    gaps = set((wanted[:-1] - wanted[1:]).tolist()) or {int(wanted[0]) + 1}
    if not hasattr(sch, "final_alpha_cumprod") or len(gaps) != 1:
        raise ValueError(f"{name} cannot run proxies on every {stride}th step of the final schedule: use "
                         f"DDIMScheduler or a scheduler whose set_timesteps takes a list of timesteps")
    sch.set_timesteps(1, device=wanted.device)
    sch.timesteps = wanted.clone()
    sch.num_inference_steps = Fraction(int(sch.config.num_train_timesteps), int(gaps.pop()))
    return sch


def check_inputs(images: torch.Tensor, classes: Sequence[str], seeds: Sequence[int], steps: int, stride: int,
                 eta: float, scheduler, latents: torch.Tensor | None = None) -> None:
    n = len(images)
    if not (len(classes) == len(seeds) == n):
        raise ValueError(f"{n} images but {len(classes)} classes and {len(seeds)} seeds")
    if latents is not None and len(latents) != n:
        raise ValueError(f"{n} images but {len(latents)} latents")
    if stride < 1 or stride > steps:
        raise ValueError(f"stride must be in [1, steps = {steps}], got {stride}")
    if stride > 1 and scheduler.order != 1:
        raise ValueError(f"proxies on every {stride}th step need a first-order scheduler, not "
                         f"{type(scheduler).__name__} (order {scheduler.order})")
    if eta > 0 and not _takes(type(scheduler), "step", "variance_noise"):
        raise ValueError(f"eta > 0 needs a scheduler that takes per-sample variance_noise (DDIMScheduler), "
                         f"not {type(scheduler).__name__}")


def prepare_cohorts(backend: Backend, x0: torch.Tensor, noise: torch.Tensor, gamma: torch.Tensor, steps: int,
                    scheduler: str, stride: int | Sequence[int], eta: float) -> tuple[list[Cohort], torch.Tensor]:
    """Timesteps from strength per cohort, and the seeds' latents noised to each cohort's first timestep.

    stride: one for all samples or one per sample; a cohort is the samples of one (stride, start)."""
    base = backend.make_scheduler(scheduler)
    base.set_timesteps(steps, device=x0.device)
    full, order = base.timesteps, base.order
    starts = np.array([start_index(steps, float(g)) * order for g in gamma])
    if (starts >= len(full)).any():
        raise ValueError(f"gamma {float(gamma.min())} with {steps} steps runs no denoising step")
    strides = np.broadcast_to(np.asarray(stride, dtype=np.int64), starts.shape)
    cohorts, z = [], torch.empty_like(x0)
    for stride, s in sorted(set(zip(strides.tolist(), starts.tolist()))):
        idx = torch.from_numpy(np.flatnonzero((starts == s) & (strides == stride))).to(x0.device)
        if stride == 1:
            sch = copy.deepcopy(base)
            if hasattr(sch, "set_begin_index"):
                sch.set_begin_index(s)
            ts = full[s:]
        else:
            ts = full[s::stride]
            sch = _strided_scheduler(backend, scheduler, stride, ts)
        coef = [eps_to_latent(sch, int(t), int(ts[k + 1]) if k + 1 < len(ts) else None, eta)
                for k, t in enumerate(ts)]
        z[idx] = sch.add_noise(x0[idx], noise[idx], ts[:1].repeat(len(idx)))
        cohorts.append(Cohort(idx, sch, ts, coef))
    return cohorts, z


def denoise_step(backend: Backend, z: torch.Tensor, active: list[tuple[Cohort, int]], cond: torch.Tensor,
                 null: torch.Tensor, beta: torch.Tensor, group: torch.Tensor, job: torch.Tensor,
                 repulsion: Sequence[tuple[float, Bandwidth]], eta: float,
                 generators: list[torch.Generator]) -> torch.Tensor:
    """One step of every active (cohort, its step index): guided eps, the scheduler's step, then eq. 6's
    displacement d(z_prev)/d(eps) * lambda * sum_j grad k(z_i, z_j), computed on the latents before the step.

    job: each sample's job, repulsion: each job's (lambda, bandwidth); group ids repel within one job only."""
    idx = torch.cat([c.idx for c, _ in active])
    t_in = torch.cat([c.timesteps[k].expand(len(c.idx)) for c, k in active])
    x_in = torch.cat([c.scheduler.scale_model_input(z[c.idx], c.timesteps[k]) for c, k in active])
    eps_c, eps_u = backend.denoise(torch.cat([x_in, x_in]), torch.cat([t_in, t_in]),
                                   torch.cat([cond[idx], null[idx]])).chunk(2)
    eps = guided_noise(eps_c, eps_u, beta[idx]).to(z.dtype)
    rows_job, rows_group = job[idx.cpu()], group[idx.cpu()]
    push, z_rows = None, None
    for j, (weight, bandwidth) in enumerate(repulsion):
        if weight > 0 and (mine := rows_job == j).any():
            if push is None:
                z_rows = z[idx]
                push = torch.zeros_like(z_rows)
            at = mine.to(z.device)
            push[at] = grouped_repulsion(z_rows[at], rows_group[mine], bandwidth).to(z.dtype)
    out, offset = z.clone(), 0
    for c, k in active:
        n = len(c.idx)
        kw = {}
        if eta > 0:
            kw = {"eta": eta, "variance_noise": torch.stack(
                [torch.randn(z.shape[1:], generator=generators[j]) for j in c.idx.tolist()]).to(z.device, z.dtype)}
        out[c.idx] = c.scheduler.step(eps[offset:offset + n], c.timesteps[k], z[c.idx], **kw).prev_sample
        if push is not None:
            for j in rows_job[offset:offset + n].unique().tolist():
                weight = repulsion[j][0]
                if weight > 0:
                    sel = (rows_job[offset:offset + n] == j).nonzero().flatten().to(z.device)
                    out[c.idx[sel]] += (c.eps_to_latent[k] * weight) * push[offset + sel]
        offset += n
    return out


def decode(backend: Backend, z: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([backend.decode(z[i:i + batch]) for i in range(0, len(z), batch)]).cpu()


@torch.no_grad()
def img2img(
    backend: Backend,
    images: torch.Tensor,
    classes: Sequence[str],
    betas: float | Sequence[float],
    gammas: float | Sequence[float],
    seeds: Sequence[int],
    steps: int = 50,
    scheduler: str = "DDIMScheduler",
    eta: float = 0.0,
    repulsion_weight: float = 0.0,
    bandwidth: Bandwidth = "auto",
    groups: Sequence[int] | None = None,
    stride: int = 1,
    decode_batch: int = 16,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    latents: torch.Tensor | None = None,
) -> SampleResult:
    """Regenerate `images` (N, C, H, W in [0, 1]) through the backbone.

    Args:
        classes: class name per sample (the condition; for Stable Diffusion, the prompt's {name}).
        betas, gammas: CFG scale and img2img strength per sample (or one value for all).
        seeds: one noise seed per sample; the same seed gives the same image whatever else is in the batch.
        steps: inference steps of the full schedule; gamma runs the last int(steps * gamma) of them.
        repulsion_weight, bandwidth, groups: eq. 6 within each group id (default: one group). 0 = plain sampler.
        stride: take every stride-th step of the gamma's full schedule from its start (BO proxies: 2).
        callback: called as callback(loop_step, latents) after every step (latents of all samples, not copied).
        latents: backend.encode(images), when the caller has it already (a mini-batch's proxies and its final pass
            share one encoding of the seeds); the images are not encoded again.
    """
    job = Job(images, classes, betas, gammas, seeds, stride, repulsion_weight, bandwidth, groups, latents)
    return img2img_jobs(backend, [job], steps, scheduler, eta, decode_batch, callback)[0]


@torch.no_grad()
def img2img_jobs(backend: Backend, jobs: Sequence[Job], steps: int = 50, scheduler: str = "DDIMScheduler",
                 eta: float = 0.0, decode_batch: int = 16,
                 callback: Callable[[int, torch.Tensor], None] | None = None) -> list[SampleResult]:
    """img2img for several jobs in one denoising loop (one UNet call per step for all), a result per job.

    A job's images equal those of img2img on that job alone: its samples keep their seeds, their schedules and
    their repulsion groups, and decoding runs per job. SampleResult.seconds splits the call's wall time as "what
    each job adds": a step or a decode that serves one job is that job's; on a step shared with the first job, the
    first job is charged what its steps with the same rows cost when it ran alone in this call (their median: one
    slow step must not make the others look free), the rest goes to the other jobs by rows; so riding jobs pay their
    marginal cost where it can be measured, else a row share.
    """
    if not jobs:
        raise ValueError("img2img_jobs needs at least one job")
    t_setup = time.perf_counter()
    probe = backend.make_scheduler(scheduler)
    for j in jobs:
        check_inputs(j.images, j.classes, j.seeds, steps, j.stride, eta, probe, j.latents)
    dev = backend.device
    sizes = [len(j) for j in jobs]
    job = torch.repeat_interleave(torch.arange(len(jobs)), torch.tensor(sizes))
    beta = torch.cat([torch.as_tensor(j.betas, dtype=torch.float32).expand(n) for j, n in zip(jobs, sizes)]).to(dev)
    gamma = torch.cat([torch.as_tensor(j.gammas, dtype=torch.float64).expand(n) for j, n in zip(jobs, sizes)])
    group = torch.cat([torch.zeros(n, dtype=torch.long) if j.groups is None else torch.as_tensor(j.groups).expand(n)
                       for j, n in zip(jobs, sizes)])
    stride = np.repeat([j.stride for j in jobs], sizes)

    generators = [torch.Generator("cpu").manual_seed(int(s)) for j in jobs for s in j.seeds]
    x0 = torch.cat([backend.encode(j.images) if j.latents is None else j.latents.to(dev) for j in jobs])
    if x0.dim() == 4:  # one memory layout whatever the jobs' latents had: the UNet's bits depend on it
        x0 = x0.contiguous(memory_format=torch.channels_last)
    noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators]).to(dev, x0.dtype)
    cohorts, z = prepare_cohorts(backend, x0, noise, gamma, steps, scheduler, stride, eta)
    cond = backend.condition([c for j in jobs for c in j.classes])
    null = backend.null_condition(len(job))
    repulsion = [(float(j.repulsion_weight), j.bandwidth) for j in jobs]
    seconds = np.array(sizes, float) / sum(sizes) * (time.perf_counter() - t_setup)

    length = max(len(c.timesteps) for c in cohorts)
    record: list[tuple[float, np.ndarray]] = []  # per step: seconds, rows per job
    for k in range(length):
        t0 = time.perf_counter()
        active = [(c, k - c.joins_at(length)) for c in cohorts if k >= c.joins_at(length)]
        z = denoise_step(backend, z, active, cond, null, beta, group, job, repulsion, eta, generators)
        if callback is not None:
            callback(k, z)
        rows = np.bincount(torch.cat([job[c.idx.cpu()] for c, _ in active]).numpy(), minlength=len(jobs))
        record.append((time.perf_counter() - t0, rows))
    seconds += _step_shares(record)

    results, offset = [], 0
    for j, n in enumerate(sizes):
        t0 = time.perf_counter()
        images = decode(backend, z[offset:offset + n], decode_batch)
        results.append(SampleResult(images, z[offset:offset + n].float().cpu(),
                                    float(seconds[j] + time.perf_counter() - t0)))
        offset += n
    return results


def _step_shares(record: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """Each job's part of the loop's step times (img2img_jobs' rule): shared steps charge the first job what its
    solo steps with as many rows took (their median), the other jobs the rest by rows; without such a solo step, or
    when the first job is not in the step, the step is split by rows."""
    solo: dict[int, list[float]] = {}
    for t, rows in record:
        if rows[0] and not rows[1:].any():
            solo.setdefault(int(rows[0]), []).append(t)
    shares = np.zeros(len(record[0][1]))
    for t, rows in record:
        alone = solo.get(int(rows[0]))
        if rows[0] and rows[1:].any() and alone:
            first = min(t, float(np.median(alone)))
            shares[0] += first
            shares[1:] += (t - first) * rows[1:] / rows[1:].sum()
        else:
            shares += t * rows / rows.sum()
    return shares
