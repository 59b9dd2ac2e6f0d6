import math

import pytest
import torch

from adaptive_dd.repulsion import (grouped_repulsion, kernel_matrix, mean_pairwise_distance, pairwise_sq_dists,
                                   repulsion_grad, two_sigma_sq, validate_bandwidth)


def _z(n, shape=(2, 3, 3), seed=0):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("sigma", [0.5, 2.0, 5.0])
def test_closed_form_equals_autograd_of_kernel_sum(sigma):
    z = _z(6).requires_grad_(True)
    flat = z.reshape(6, -1)
    d2 = ((flat[:, None] - flat[None]) ** 2).sum(-1)
    k = torch.exp(-d2 / (2 * sigma**2))
    total = k.sum() - k.diagonal().sum()  # sum over ordered pairs a != b
    (grad,) = torch.autograd.grad(total, z)
    # d/dz_i of sum_{a != b} k(z_a, z_b) = 2 sum_{j != i} grad_{z_i} k(z_i, z_j) (k is symmetric)
    torch.testing.assert_close(repulsion_grad(z.detach(), sigma), grad / 2, rtol=1e-10, atol=1e-12)


def test_auto_bandwidth_matches_autograd_with_per_particle_sigma():
    z = _z(5, seed=1)
    h = two_sigma_sq(pairwise_sq_dists(z), "auto")
    zi = z.clone().requires_grad_(True)
    flat_i, flat_j = zi.reshape(5, -1), z.reshape(5, -1)
    k = torch.exp(-((flat_i[:, None] - flat_j[None]) ** 2).sum(-1) / h)
    (grad,) = torch.autograd.grad(k.sum(), zi)
    torch.testing.assert_close(repulsion_grad(z, "auto"), grad, rtol=1e-8, atol=1e-10)


def test_auto_bandwidth_is_median_over_log_n_minus_1_and_guarded():
    z = _z(7, seed=2)
    d2 = pairwise_sq_dists(z)
    h = two_sigma_sq(d2, "auto")
    row0 = d2[0, 1:]
    assert float(h[0, 0]) == pytest.approx(float(row0.median()) / math.log(6))
    for n in (2, 3):
        g = repulsion_grad(_z(n, seed=3), "auto")
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert torch.equal(repulsion_grad(_z(1), "auto"), torch.zeros(1, 2, 3, 3, dtype=torch.float64))


def test_gradient_points_away_from_neighbour():
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    g = repulsion_grad(z, 1.0)
    # the sampler adds g to eps and subtracts eps: z_0 moves along -g, i.e. away from z_1 (negative x)
    assert g[0, 0] > 0 and g[1, 0] < 0


def test_groups_do_not_interact():
    z = _z(6, seed=4)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    g = grouped_repulsion(z, groups, 1.5)
    torch.testing.assert_close(g[:3], repulsion_grad(z[:3], 1.5))
    torch.testing.assert_close(g[3:], repulsion_grad(z[3:], 1.5))


def test_kernel_and_distance_readout():
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert mean_pairwise_distance(z) == pytest.approx(5.0)
    k = kernel_matrix(z, 5.0)
    assert float(k[0, 1]) == pytest.approx(math.exp(-25 / 50))


@pytest.mark.parametrize("bad", [0, -1.0, "wide", float("nan")])
def test_bad_bandwidth(bad):
    with pytest.raises(ValueError, match="bandwidth"):
        validate_bandwidth(bad)
