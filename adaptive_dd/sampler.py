"""The batched img2img sampler: one denoising loop over a backend's components, shaped like diffusers'
pipeline_stable_diffusion_img2img.py (prepare latents, timesteps from strength, denoise loop), where every
sample carries its own CFG scale beta, strength gamma, noise generator and repulsion group.

Samples whose gamma gives a later start join the loop when their timestep comes, so one call evaluates many
(beta, gamma) candidates. Samples that start together share a copy of the scheduler, which keeps multistep
solvers' history consistent. Without repulsion a sample's result depends only on its own inputs.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

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
    images: torch.Tensor
    latents: torch.Tensor


def guided_noise(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """CFG as eps_u + beta * (eps_c - eps_u), beta per sample (see config.py for the paper's form)."""
    return eps_uncond + beta.view(-1, *([1] * (eps_cond.dim() - 1))) * (eps_cond - eps_uncond)


@torch.no_grad()
def img2img(
    backend: Backend,
    images: torch.Tensor,
    classes: list[str],
    betas,
    gammas,
    seeds: list[int],
    steps: int = 50,
    scheduler: str = "DDIMScheduler",
    eta: float = 0.0,
    repulsion_weight: float = 0.0,
    bandwidth: Bandwidth = "auto",
    groups=None,
    decode_batch: int = 16,
) -> SampleResult:
    """Regenerate `images` (N, C, H, W in [0, 1]) through the backbone.

    Args:
        classes: class name per sample (the condition; for Stable Diffusion, the prompt's {name}).
        betas, gammas: CFG scale and img2img strength per sample (or one value for all).
        seeds: one noise seed per sample; the same seed gives the same image whatever else is in the batch.
        steps: inference steps of the scheduler; gamma runs the last int(steps * gamma) of them.
        repulsion_weight, bandwidth, groups: eq. 6 within each group id (default: one group). 0 = plain sampler.
    """
    n = len(images)
    if not (len(classes) == len(seeds) == n):
        raise ValueError(f"{n} images but {len(classes)} classes and {len(seeds)} seeds")
    dev = backend.device
    beta = torch.as_tensor(betas, dtype=torch.float32).expand(n).to(dev)
    gamma = torch.as_tensor(gammas, dtype=torch.float64).expand(n)
    group = torch.zeros(n, dtype=torch.long) if groups is None else torch.as_tensor(groups).expand(n)

    base = backend.make_scheduler(scheduler)
    base.set_timesteps(steps, device=dev)
    timesteps, order = base.timesteps, base.order
    step_kwargs = {}
    if eta > 0:
        if "variance_noise" not in inspect.signature(base.step).parameters:
            raise ValueError(f"eta > 0 needs a scheduler that takes per-sample variance_noise (DDIMScheduler), "
                             f"not {scheduler}")
        step_kwargs["eta"] = eta
    starts = np.array([start_index(steps, float(g)) * order for g in gamma])
    if (starts >= len(timesteps)).any():
        raise ValueError(f"gamma {float(gamma.min())} with {steps} steps runs no denoising step")

    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    x0 = backend.encode(images)
    noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in generators]).to(dev, x0.dtype)
    cond = backend.condition(list(classes))
    null = backend.null_condition(n)

    cohorts = []
    z = torch.empty_like(x0)
    for s in sorted(set(starts.tolist())):
        idx = torch.from_numpy(np.flatnonzero(starts == s)).to(dev)
        sch = copy.deepcopy(base)
        if hasattr(sch, "set_begin_index"):
            sch.set_begin_index(s)
        z[idx] = sch.add_noise(x0[idx], noise[idx], timesteps[s:s + 1].repeat(len(idx)))
        cohorts.append((s, idx, sch))

    for k in range(int(starts.min()), len(timesteps)):
        t = timesteps[k]
        active = [(idx, sch) for s, idx, sch in cohorts if s <= k]
        idx = torch.cat([i for i, _ in active])
        x_in = torch.cat([sch.scale_model_input(z[i], t) for i, sch in active])
        eps_c, eps_u = backend.predict_noise(
            torch.cat([x_in, x_in]), t, torch.cat([cond[idx], null[idx]])).chunk(2)
        eps = guided_noise(eps_c, eps_u, beta[idx]).to(z.dtype)
        if repulsion_weight > 0:
            eps = eps + repulsion_weight * grouped_repulsion(z[idx], group[idx.cpu()], bandwidth).to(eps.dtype)
        offset = 0
        for i, sch in active:
            kw = dict(step_kwargs)
            if eta > 0:
                kw["variance_noise"] = torch.stack(
                    [torch.randn(z.shape[1:], generator=generators[j]) for j in i.tolist()]).to(dev, z.dtype)
            z[i] = sch.step(eps[offset:offset + len(i)], t, z[i], **kw).prev_sample
            offset += len(i)

    out = torch.cat([backend.decode(z[i:i + decode_batch]) for i in range(0, n, decode_batch)])
    return SampleResult(out.cpu(), z.float().cpu())
