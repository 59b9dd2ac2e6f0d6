from types import SimpleNamespace

import numpy as np
import pytest
import torch

from adaptive_dd.repulsion import mean_pairwise_distance
from adaptive_dd.sampler import img2img, noise_seed, start_index


def _seeds_images(n, size=8, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=["tiny_backend", "tiny_latent_backend"])
def backend(request):
    """Each sampler property holds for a pixel class-UNet and for a latent one (VAE encode / decode)."""
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("steps,gamma", [(50, 0.3), (50, 0.75), (25, 0.5), (10, 0.99), (7, 1.0), (20, 0.05)])
def test_gamma_to_start_step_matches_diffusers_img2img(tiny_backend, steps, gamma):
    from diffusers import StableDiffusionImg2ImgPipeline

    ours = tiny_backend.make_scheduler()
    ours.set_timesteps(steps)
    ref = SimpleNamespace(scheduler=tiny_backend.make_scheduler())
    ref.scheduler.set_timesteps(steps)
    expected, n = StableDiffusionImg2ImgPipeline.get_timesteps(ref, steps, gamma, "cpu")
    assert torch.equal(ours.timesteps[start_index(steps, gamma):], expected)
    assert steps - start_index(steps, gamma) == n


def _plain_loop(backend, images, name, beta, gamma, seeds, steps):
    """The textbook single-(beta, gamma) img2img loop, written out independently of the sampler."""
    sch = backend.make_scheduler()
    sch.set_timesteps(steps)
    t_start = max(steps - min(int(steps * gamma), steps), 0)
    ts = sch.timesteps[t_start:]
    x0 = backend.encode(images)
    noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])
    z = sch.add_noise(x0, noise, ts[:1].repeat(len(x0)))
    cond, null = backend.condition([name] * len(x0)), backend.null_condition(len(x0))
    with torch.no_grad():
        for t in ts:
            eps_c, eps_u = backend.predict_noise(torch.cat([z, z]), t, torch.cat([cond, null])).chunk(2)
            z = sch.step(eps_u + beta * (eps_c - eps_u), t, z).prev_sample
    return backend.decode(z)


def test_lambda_zero_is_the_plain_sampler(backend):
    images, seeds = _seeds_images(4, backend.image_size), [11, 12, 13, 14]
    ours = img2img(backend, images, ["3"] * 4, 2.0, 0.6, seeds, steps=10, repulsion_weight=0.0)
    ref = _plain_loop(backend, images, "3", 2.0, 0.6, seeds, 10)
    torch.testing.assert_close(ours.images, ref, rtol=0, atol=1e-6)


def test_repulsion_spreads_the_batch(backend):
    images = _seeds_images(1, backend.image_size).repeat(6, 1, 1, 1)
    seeds = list(range(6))
    plain = img2img(backend, images, ["5"] * 6, 1.0, 0.8, seeds, steps=10)
    pushed = img2img(backend, images, ["5"] * 6, 1.0, 0.8, seeds, steps=10,
                     repulsion_weight=2.0 * backend.default_lambda)
    d0, d1 = mean_pairwise_distance(plain.latents), mean_pairwise_distance(pushed.latents)
    assert d1 > d0 * 1.02, (d0, d1)


@pytest.mark.parametrize("scheduler,eta", [("DDIMScheduler", 0.0), ("DDIMScheduler", 0.5),
                                           ("DPMSolverMultistepScheduler", 0.0)])
def test_sample_does_not_depend_on_its_batch(backend, scheduler, eta):
    images = _seeds_images(4, backend.image_size, seed=3)
    alone = img2img(backend, images[:1], ["7"], 2.0, 0.5, [99], steps=12, scheduler=scheduler, eta=eta)
    mixed = img2img(backend, images, ["7", "1", "7", "2"], [2.0, 0.0, 3.0, 1.0], [0.5, 0.9, 0.3, 1.0],
                    [99, 5, 6, 7], steps=12, scheduler=scheduler, eta=eta)
    torch.testing.assert_close(mixed.images[:1], alone.images, rtol=0, atol=1e-5)
    again = img2img(backend, images[[2, 0]], ["7", "7"], [3.0, 2.0], [0.3, 0.5], [6, 99], steps=12,
                    scheduler=scheduler, eta=eta)
    torch.testing.assert_close(again.images[1:], alone.images, rtol=0, atol=1e-5)


def test_jobs_in_one_loop_give_each_job_its_own_images(backend):
    """A repelled final pass and strided proxies of another class and seeds share one loop: each job's images are
    what it gets alone (the repulsion of one job never reaches the other's samples), including when the proxy job
    runs more steps than the final one and joins the loop first."""
    from adaptive_dd.sampler import Job, img2img_jobs

    images = _seeds_images(6, backend.image_size, seed=4)
    final = Job(images[:4], ["3"] * 4, 2.0, 0.3, [1, 2, 3, 4], repulsion_weight=3.0 * backend.default_lambda,
                groups=[0, 0, 1, 1])
    proxies = Job(images[4:].repeat(2, 1, 1, 1), ["8"] * 4, [1.0, 1.0, 3.0, 3.0], [0.9, 0.9, 0.5, 0.5],
                  [7, 8, 7, 8], stride=2)
    both = img2img_jobs(backend, [final, proxies], steps=20)
    for job, got in zip((final, proxies), both):
        alone = img2img(backend, job.images, job.classes, job.betas, job.gammas, job.seeds, steps=20,
                        repulsion_weight=job.repulsion_weight, groups=job.groups, stride=job.stride)
        torch.testing.assert_close(got.images, alone.images, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.latents, alone.latents, rtol=0, atol=1e-6)
    plain = img2img(backend, final.images, final.classes, 2.0, 0.3, final.seeds, steps=20)
    assert (both[0].images - plain.images).abs().max() > 1e-4  # the final job was repelled


def test_a_shared_step_charges_the_first_job_its_solo_cost():
    """Steps 1-3 are the first job's alone (1 s each at 20 rows); steps 4-5 add 16 rows of a second job and take
    1.5 s: the first job pays 1 s of each (the median of its solo steps), the second the 0.5 s it added. A shared step with no solo step of as many
    rows, and a step without the first job, split by rows; a shared step faster than the solo ones is all the
    first job's."""
    from adaptive_dd.sampler import _step_shares

    rows = np.array
    record = [(1.0, rows([20, 0]))] * 3 + [(1.5, rows([20, 16]))] * 2
    np.testing.assert_allclose(_step_shares(record), [5.0, 1.0])
    slow_first = [(4.0, rows([20, 0]))] + record  # a slow solo step is the first job's, and sets no price
    np.testing.assert_allclose(_step_shares(slow_first), [9.0, 1.0])
    np.testing.assert_allclose(_step_shares([(1.0, rows([20, 0])), (2.0, rows([10, 30]))]), [1.5, 1.5])
    np.testing.assert_allclose(_step_shares([(3.0, rows([0, 10, 20]))]), [0.0, 1.0, 2.0])
    np.testing.assert_allclose(_step_shares([(1.0, rows([4, 0, 0])), (0.5, rows([4, 2, 6]))]), [1.5, 0.0, 0.0])


def test_different_seeds_give_different_images_and_seed_streams_are_distinct(tiny_backend):
    images = _seeds_images(1).repeat(2, 1, 1, 1)
    out = img2img(tiny_backend, images, ["0", "0"], 1.0, 0.9, [1, 2], steps=6)
    assert (out.images[0] - out.images[1]).abs().max() > 1e-3
    assert len({noise_seed(0, c, s) for c in range(10) for s in range(100)}) == 1000


def test_batch_wide_noise_schedulers_are_refused(tiny_backend):
    with pytest.raises(Exception, match="batch"):
        img2img(tiny_backend, _seeds_images(1), ["0"], 1.0, 0.5, [0], steps=4, scheduler="DDPMScheduler")


GRID_GAMMAS = (0.05, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "DPMSolverMultistepScheduler"])
@pytest.mark.parametrize("steps", [50, 20, 12, 6])
def test_proxy_starts_where_the_full_sampler_starts_and_takes_every_other_step(tiny_backend, scheduler, steps):
    from adaptive_dd.sampler import prepare_cohorts

    x0 = torch.zeros(len(GRID_GAMMAS), 1, 8, 8)
    gamma = torch.tensor(GRID_GAMMAS, dtype=torch.float64)
    gamma = gamma[[int(steps * g) >= 1 for g in GRID_GAMMAS]]
    full, _ = prepare_cohorts(tiny_backend, x0[:len(gamma)], x0[:len(gamma)], gamma, steps, scheduler, 1, 0.0)
    proxy, _ = prepare_cohorts(tiny_backend, x0[:len(gamma)], x0[:len(gamma)], gamma, steps, scheduler, 2, 0.0)
    assert len(full) == len(proxy)
    for f, p in zip(full, proxy):
        assert torch.equal(f.idx, p.idx)
        assert int(p.timesteps[0]) == int(f.timesteps[0])
        assert torch.equal(p.timesteps, f.timesteps[::2])
        assert torch.equal(p.scheduler.timesteps[-len(p.timesteps):].to(p.timesteps.dtype), p.timesteps)


def _ddim_by_hand(backend, images, name, beta, timesteps, seeds, clip: bool):
    """DDIM (eta 0) over an explicit list of timesteps, written out from the formula, clipping x0 when asked."""
    sch = backend.make_scheduler()
    a = sch.alphas_cumprod.double()
    x0 = backend.encode(images).double()
    noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])
    t0 = int(timesteps[0])
    z = a[t0].sqrt() * x0 + (1 - a[t0]).sqrt() * noise.double()
    cond, null = backend.condition([name] * len(x0)), backend.null_condition(len(x0))
    with torch.no_grad():
        for k, t in enumerate(timesteps):
            zin = z.float()
            eps_c, eps_u = backend.predict_noise(torch.cat([zin, zin]), t, torch.cat([cond, null])).chunk(2)
            eps = (eps_u + beta * (eps_c - eps_u)).double()
            a_t = a[int(t)]
            a_n = a[int(timesteps[k + 1])] if k + 1 < len(timesteps) else torch.tensor(1.0, dtype=torch.float64)
            pred = (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            if clip:
                pred = pred.clamp(-1, 1)
            z = a_n.sqrt() * pred + (1 - a_n).sqrt() * eps
    return backend.decode(z.float())


@pytest.mark.parametrize("steps,gamma", [(20, 0.3), (20, 0.55), (12, 0.5), (6, 1.0)])
def test_proxy_equals_ddim_by_hand_on_every_other_step_of_the_final_schedule(tiny_backend, steps, gamma):
    images, seeds = _seeds_images(3, seed=5), [3, 4, 5]
    full = tiny_backend.make_scheduler()
    full.set_timesteps(steps)
    wanted = full.timesteps[start_index(steps, gamma)::2]
    ref = _ddim_by_hand(tiny_backend, images, "2", 1.5, wanted, seeds, clip=True)
    proxy = img2img(tiny_backend, images, ["2"] * 3, 1.5, gamma, seeds, steps=steps, stride=2)
    torch.testing.assert_close(proxy.images, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode,proxy_calls", [("paper", 7), ("fast", 3)])
def test_distiller_proxy_runs_the_modes_share_of_the_unet_calls_of_the_final_pass(tiny_backend, tiny_teacher,
                                                                                   monkeypatch, mode, proxy_calls):
    """gamma 0.7 of 20 steps: the final pass runs 14; paper proxies every other one (7), fast ones every fifth
    (steps 6, 11 and 16 of the schedule: 3)."""
    from adaptive_dd.config import BOConfig, DistillConfig, SamplerConfig
    from adaptive_dd.distill import Distiller

    dist = Distiller(DistillConfig(classes=["1"], ipc=2, m_seed=2, sampler=SamplerConfig(steps=20),
                                   bo=BOConfig(betas=(1.0,), gammas=(0.7,), mode=mode)), backend=tiny_backend,
                     teacher=tiny_teacher)
    calls = []
    real = tiny_backend.predict_noise
    monkeypatch.setattr(tiny_backend, "predict_noise", lambda *a: calls.append(1) or real(*a))
    images = _seeds_images(2)
    dist.generate(images, "1", 1.0, 0.7, [1, 2], proxy=True)
    n_proxy = len(calls)
    dist.generate(images, "1", 1.0, 0.7, [1, 2], proxy=False)
    assert (n_proxy, len(calls) - n_proxy) == (proxy_calls, 14)


def test_a_row_cap_splits_every_step_into_equal_calls_and_keeps_the_images(tiny_backend, monkeypatch):
    """denoiser_rows bounds each denoiser call: a step's 10 CFG rows under a cap of 4 go as 4 + 3 + 3 (as few calls
    as the cap allows, of equal sizes), and the images are those of one call per step."""
    images, seeds = _seeds_images(5, seed=2), [1, 2, 3, 4, 5]
    args = (images, ["1", "2", "1", "3", "1"], [1.0, 3.0, 2.0, 1.0, 4.0], 0.5, seeds)
    whole = img2img(tiny_backend, *args, steps=10, repulsion_weight=5.0)
    calls = []
    real = tiny_backend.predict_noise
    monkeypatch.setattr(tiny_backend, "predict_noise", lambda x, t, c: calls.append(len(x)) or real(x, t, c))
    monkeypatch.setattr(tiny_backend, "denoiser_rows", 4)
    capped = img2img(tiny_backend, *args, steps=10, repulsion_weight=5.0)
    assert calls == [4, 3, 3] * 5
    torch.testing.assert_close(capped.images, whole.images, rtol=0, atol=1e-5)


def test_given_latents_replace_the_encoding_and_must_match_the_images(tiny_latent_backend):
    images, seeds = _seeds_images(3, tiny_latent_backend.image_size, seed=4), [3, 4, 5]
    encoded = img2img(tiny_latent_backend, images, ["1"] * 3, 2.0, 0.6, seeds, steps=10)
    given = img2img(tiny_latent_backend, images, ["1"] * 3, 2.0, 0.6, seeds, steps=10,
                    latents=tiny_latent_backend.encode(images))
    assert torch.equal(given.images, encoded.images)
    other = img2img(tiny_latent_backend, images, ["1"] * 3, 2.0, 0.6, seeds, steps=10,
                    latents=tiny_latent_backend.encode(images.flip(0)))  # the latents, not the images, are used
    assert torch.allclose(other.images[1], encoded.images[1], atol=1e-6)  # the middle one is where it was
    assert not torch.allclose(other.images[0], encoded.images[0], atol=1e-3)
    with pytest.raises(ValueError, match="3 images but 2 latents"):
        img2img(tiny_latent_backend, images, ["1"] * 3, 2.0, 0.6, seeds, steps=10,
                latents=tiny_latent_backend.encode(images[:2]))


def test_a_batch_encodes_its_seeds_once_for_its_proxies_and_final_pass(tiny_latent_backend, tiny_teacher, monkeypatch):
    from adaptive_dd.config import BOConfig, DistillConfig, SamplerConfig
    from adaptive_dd.distill import BatchDone, Distiller

    dist = Distiller(DistillConfig(classes=["1"], ipc=3, m_seed=3, sampler=SamplerConfig(steps=10),
                                   bo=BOConfig(betas=(1.0, 2.0), gammas=(0.5, 0.7), budget=3, mode="paper")),
                     backend=tiny_latent_backend, teacher=tiny_teacher)
    encoded = []
    real = tiny_latent_backend.encode
    monkeypatch.setattr(tiny_latent_backend, "encode", lambda x: encoded.append(len(x)) or real(x))
    images = _seeds_images(3, tiny_latent_backend.image_size, seed=6)
    done = list(dist.run_batch(images, ["a", "b", "c"], "1"))[-1]
    assert isinstance(done, BatchDone) and len(done.observations) == 3 and encoded == [3]
    again = dist.regenerate(images, "1", done.beta, done.gamma, done.slots)
    assert torch.equal(again.images, done.images)


def _bundled_seeds(class_name: str, n: int):
    from adaptive_dd.data import load_dataset

    data = load_dataset("uci-digits", "train")
    idx = data.indices_of(data.class_index(class_name))[:n]
    return data, idx


@pytest.mark.parametrize("clip", [True, False])
def test_repulsion_displacement_points_away_from_group_mates_at_every_step(clip):
    """Bundled backbone with its real scheduler (clip_sample off) and with clipping on: at every step, the latents
    with repulsion minus those without, from the same state, equal d(z')/d(eps) * lambda * g (eq. 6 through an
    unclipped DDIM step) and have a positive projection on the repulsive direction -g of every sample."""
    from adaptive_dd.backends import create_backend
    from adaptive_dd.repulsion import grouped_repulsion
    from adaptive_dd.sampler import denoise_step, prepare_cohorts

    backend = create_backend("bundled")
    assert backend.scheduler_config["clip_sample"] is False
    if clip:
        backend.scheduler_config = {**backend.scheduler_config, "clip_sample": True}
    data, idx = _bundled_seeds("3", 6)
    x0 = backend.encode(data.tensor(idx, backend.image_size, backend.channels))
    gens = [torch.Generator().manual_seed(s) for s in range(6)]
    noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens])
    gamma = torch.full((6,), 0.5, dtype=torch.float64)
    cohorts, z = prepare_cohorts(backend, x0, noise, gamma, 50, "DDIMScheduler", 1, 0.0)
    (cohort,) = cohorts
    cond, null = backend.condition(["3"] * 6), backend.null_condition(6)
    beta, group, lam = torch.full((6,), 2.0), torch.zeros(6, dtype=torch.long), 10 * backend.default_lambda
    job = torch.zeros(6, dtype=torch.long)
    with torch.no_grad():
        for k in range(len(cohort.timesteps)):
            state = __import__("copy").deepcopy(cohort.scheduler)
            plain = denoise_step(backend, z, [(cohort, k)], cond, null, beta, group, job, [(0.0, "auto")], 0.0, gens)
            cohort.scheduler = state
            pushed = denoise_step(backend, z, [(cohort, k)], cond, null, beta, group, job, [(lam, "auto")], 0.0, gens)
            g = grouped_repulsion(z, group, "auto")
            move = (pushed - plain).flatten(1)
            assert ((move * -g.flatten(1)).sum(1) > 0).all(), k
            torch.testing.assert_close(pushed - plain, cohort.eps_to_latent[k] * lam * g, rtol=1e-4, atol=1e-6)
            z = pushed


def test_within_class_distance_grows_with_lambda_under_the_bundled_scheduler():
    """End to end on the bundled backbone and scheduler, 10 seeds of one class."""
    from adaptive_dd.backends import create_backend

    backend = create_backend("bundled")
    data, idx = _bundled_seeds("5", 10)
    images = data.tensor(idx, backend.image_size, backend.channels)
    lam = backend.default_lambda
    d = [mean_pairwise_distance(img2img(backend, images, ["5"] * 10, 2.0, 0.5, list(range(10)), steps=50,
                                        repulsion_weight=w).images) for w in (0.0, lam, 3 * lam, 10 * lam)]
    assert d[0] < d[1] < d[2] < d[3], d
    assert d[3] >= 1.25 * d[0], d
