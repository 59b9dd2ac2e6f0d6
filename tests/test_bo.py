import numpy as np
import pytest

from adaptive_dd.bo import GridBO

BETAS = np.arange(1.0, 11.0)
GAMMAS = np.round(np.arange(0.3, 0.95, 0.1), 2)


def bump(b, g):
    """A smooth known objective on the grid with its maximum at (beta, gamma) = (7, 0.6)."""
    return -((b - 7.0) / 3.0) ** 2 - ((g - 0.6) / 0.25) ** 2


def corner(b, g):
    """Another, with its maximum near the grid's edge at (2, 0.4)."""
    return -((b - 2.0) / 2.5) ** 2 - ((g - 0.4) / 0.3) ** 2


def _run(seed, budget=8, q=1, f=bump):
    bo = GridBO(BETAS, GAMMAS, kappa=2.0, n_initial=3, seed=seed)
    steps = []
    while len(bo.observations) < budget:
        points = bo.ask(min(q, budget - len(bo.observations)))
        bo.tell(points, [f(BETAS[i], GAMMAS[j]) for i, j in points])
        steps.append(bo.posterior())
    return bo, steps


@pytest.mark.parametrize("f,optimum", [(bump, (7.0, 0.6)), (corner, (2.0, 0.4))])
def test_finds_known_optimum_in_most_seeds_beats_random_and_never_repeats(f, optimum):
    seeds = range(8)
    best_bo, best_random, hits = [], [], 0
    for s in seeds:
        bo, posts = _run(s, f=f)
        indices = [o.index for o in bo.observations]
        assert len(indices) == len(set(indices)) == 8
        assert all(p.mean.shape == p.std.shape == p.ucb.shape == (len(BETAS), len(GAMMAS)) for p in posts)
        hits += (bo.best.beta, bo.best.gamma) == optimum
        best_bo.append(bo.best.f)
        rng = np.random.default_rng(s)
        flat = rng.choice(len(BETAS) * len(GAMMAS), 8, replace=False)
        best_random.append(max(f(BETAS[k // len(GAMMAS)], GAMMAS[k % len(GAMMAS)]) for k in flat))
    assert hits >= 5, hits
    assert np.mean(best_bo) > np.mean(best_random)


def test_posterior_is_gp_mean_and_ucb_is_mean_plus_kappa_std():
    bo, _ = _run(0, budget=5)
    post = bo.posterior()
    np.testing.assert_allclose(post.ucb, post.mean + 2.0 * post.std)
    for o in bo.observations:  # the GP interpolates its observations (small learned noise)
        assert post.mean[o.index] == pytest.approx(o.f, abs=0.1)
        assert post.std[o.index] < post.std.max()


def test_q_rounds_keep_the_budget_and_spend_it_on_distinct_points():
    bo, _ = _run(1, budget=8, q=3)
    assert len({o.index for o in bo.observations}) == 8


def test_q_proposals_are_distinct_and_grid_exhaustion_is_exact():
    bo = GridBO([1.0, 2.0], [0.5, 0.7, 0.9], seed=3)
    seen = []
    while bo.remaining:
        points = bo.ask(4)
        assert len(points) == len(set(points)) <= 4
        assert not set(points) & set(seen)
        seen += points
        bo.tell(points, [float(i + j) for i, j in points])
    assert sorted(seen) == [(i, j) for i in range(2) for j in range(3)]
    assert bo.ask(2) == []
    assert bo.best.index == (1, 2)


def test_best_is_the_best_observed_point_and_repeats_are_refused():
    bo = GridBO([1.0], [0.5], seed=0)  # a one-point grid: nothing to choose, still well defined
    (p,) = bo.ask(1)
    bo.tell([p], [-0.25])
    assert bo.best.f == -0.25 and bo.posterior().mean.shape == (1, 1)
    with pytest.raises(ValueError, match="already evaluated"):
        bo.tell([p], [0.0])


RIDGE_BETAS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
RIDGE_GAMMAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def ridge(b, g):
    """f = -KL shaped like the bundled default's: a steep ramp in gamma (KL 0.007 to 2.5) and a faint ridge in beta
    (<= 0.03, under the GP's noise floor in f's own units) whose top, beta 1.5, is on the low-gamma edge."""
    return -(0.007 + 2.5 * ((g - 0.3) / 0.6) ** 1.5 + 0.03 * (1 - np.exp(-((b - 1.5) / 0.6) ** 2)))


def test_warped_gp_finds_the_faint_beta_ridge_on_the_grid_edge():
    hits = 0
    for s in range(10):
        bo = GridBO(RIDGE_BETAS, RIDGE_GAMMAS, seed=s, warp="neglog")
        while len(bo.observations) < 8:
            points = bo.ask(1)
            bo.tell(points, [ridge(RIDGE_BETAS[i], RIDGE_GAMMAS[j]) for i, j in points])
        hits += (bo.best.beta, bo.best.gamma) == (1.5, 0.3)
    assert hits >= 9, hits


def test_initial_design_reaches_both_ends_of_both_axes():
    bo = GridBO(RIDGE_BETAS, RIDGE_GAMMAS, n_initial=4, seed=0)
    points = bo.ask(4)
    assert {i for i, _ in points} >= {0, 6} and {j for _, j in points} >= {0, 6}
    assert len(set(points)) == 4


def test_posterior_is_reported_in_f_units_through_the_warp():
    from adaptive_dd.bo import unwarp, warp

    f = np.array([-2.5, -0.3, -0.01, 0.0])
    np.testing.assert_allclose(unwarp(warp(f, "neglog"), "neglog"), f, atol=1e-12)
    bo = GridBO(RIDGE_BETAS, RIDGE_GAMMAS, seed=1, warp="neglog")
    while len(bo.observations) < 6:
        points = bo.ask(1)
        bo.tell(points, [ridge(RIDGE_BETAS[i], RIDGE_GAMMAS[j]) for i, j in points])
    post = bo.posterior()
    for o in bo.observations:  # the posterior median passes through the observations, in f's units
        assert post.mean[o.index] == pytest.approx(o.f, rel=0.2, abs=2e-3)
    assert (post.mean <= 0).all() and (post.ucb >= post.mean).all() and (post.std >= 0).all()


def test_unknown_warp_is_refused():
    with pytest.raises(ValueError, match="unknown warp 'log2'"):
        GridBO([1.0], [0.5], warp="log2")
