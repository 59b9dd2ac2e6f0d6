"""Repulsion regularisation, the extra term of eq. 6.

For the latents z_1..z_N of one group (one class's mini-batch), every denoising step adds

    lambda * sum_{j != i} grad_{z_i} k(z_i, z_j),   k(x, y) = exp(-||x - y||^2 / (2 sigma^2)),

to the noise prediction of z_i. The step subtracts the noise prediction, so z_i moves away from its
neighbours. grad_{z_i} k(z_i, z_j) = -k(z_i, z_j) (z_i - z_j) / sigma^2, computed here in closed form for the
whole group at once (no autograd inside the sampling loop).
"""
from __future__ import annotations

import math

import torch

Bandwidth = float | str


def validate_bandwidth(bandwidth: Bandwidth) -> Bandwidth:
    if bandwidth == "auto":
        return bandwidth
    try:
        value = float(bandwidth)
    except (TypeError, ValueError):
        raise ValueError(f"bandwidth must be a positive number or 'auto', got {bandwidth!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"bandwidth must be a positive number or 'auto', got {bandwidth!r}")
    return value


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16 latents (Stable Diffusion on CUDA) are summed in fp32; fp64 stays fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def pairwise_sq_dists(z: torch.Tensor) -> torch.Tensor:
    """||z_i - z_j||^2 for flattened rows of z, exact zero on the diagonal."""
    flat = _at_least_fp32(z.reshape(len(z), -1))
    sq = flat.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * flat @ flat.T).clamp_min_(0)
    return d2.fill_diagonal_(0)


def two_sigma_sq(d2: torch.Tensor, bandwidth: Bandwidth) -> torch.Tensor:
    """2 sigma_i^2 for every particle i, as a column (N, 1).

    A number is a fixed sigma. "auto" is the median heuristic of particle guidance (Corso et al. 2024):
    h_i = median_{j != i} ||z_i - z_j||^2 / log(N - 1), with log(N - 1) floored at log 2 so that N = 2
    (where log 1 = 0) and N = 3 share one finite bandwidth.
    """
    n = d2.shape[0]
    if bandwidth != "auto":
        return torch.full((n, 1), 2.0 * float(bandwidth) ** 2, dtype=d2.dtype, device=d2.device)
    off = d2[~torch.eye(n, dtype=torch.bool, device=d2.device)].view(n, n - 1)
    med = off.median(dim=1).values.clamp_min(1e-12)
    return (med / max(math.log(n - 1), math.log(2)))[:, None]


def kernel_matrix(z: torch.Tensor, bandwidth: Bandwidth) -> torch.Tensor:
    """k(z_i, z_j) with row i using particle i's bandwidth."""
    d2 = pairwise_sq_dists(z)
    return torch.exp(-d2 / two_sigma_sq(d2, bandwidth))


def repulsion_grad(z: torch.Tensor, bandwidth: Bandwidth) -> torch.Tensor:
    """sum_{j != i} grad_{z_i} k(z_i, z_j) for every i, in closed form, shaped like z.

    = -(1 / sigma_i^2) * (z_i * sum_j k_ij - sum_j k_ij z_j); the j = i term is zero, so the sums may run
    over all j. With N < 2 there is nothing to repel and the result is zero.
    """
    n = len(z)
    if n < 2:
        return torch.zeros_like(z)
    flat = _at_least_fp32(z.reshape(n, -1))
    d2 = pairwise_sq_dists(flat)
    h = two_sigma_sq(d2, bandwidth)
    k = torch.exp(-d2 / h)
    grad = -(2.0 / h) * (k.sum(1, keepdim=True) * flat - k @ flat)
    return grad.view_as(z).to(z.dtype)


def grouped_repulsion(z: torch.Tensor, groups: torch.Tensor, bandwidth: Bandwidth) -> torch.Tensor:
    """repulsion_grad applied within each group id; latents of different groups never interact."""
    out = torch.zeros_like(z)
    for g in torch.unique(groups):
        idx = torch.nonzero(groups == g).flatten()
        out[idx] = repulsion_grad(z[idx], bandwidth)
    return out


def mean_pairwise_distance(z: torch.Tensor) -> float:
    """Mean ||z_i - z_j|| over pairs i < j: the batch-diversity readout."""
    n = len(z)
    if n < 2:
        return 0.0
    d = pairwise_sq_dists(z).sqrt()
    return float(d.sum() / (n * (n - 1)))
