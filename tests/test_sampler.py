from types import SimpleNamespace

import pytest
import torch

from adaptive_dd.repulsion import mean_pairwise_distance
from adaptive_dd.sampler import img2img, noise_seed, start_index


def _seeds_images(n, size=8, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


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


def test_lambda_zero_is_the_plain_sampler(tiny_backend):
    images, seeds = _seeds_images(4), [11, 12, 13, 14]
    ours = img2img(tiny_backend, images, ["3"] * 4, 2.0, 0.6, seeds, steps=10, repulsion_weight=0.0)
    ref = _plain_loop(tiny_backend, images, "3", 2.0, 0.6, seeds, 10)
    torch.testing.assert_close(ours.images, ref, rtol=0, atol=1e-6)


def test_repulsion_spreads_the_batch(tiny_backend):
    images = _seeds_images(1).repeat(6, 1, 1, 1)
    seeds = list(range(6))
    plain = img2img(tiny_backend, images, ["5"] * 6, 1.0, 0.8, seeds, steps=10)
    pushed = img2img(tiny_backend, images, ["5"] * 6, 1.0, 0.8, seeds, steps=10, repulsion_weight=2.0)
    d0, d1 = mean_pairwise_distance(plain.latents), mean_pairwise_distance(pushed.latents)
    assert d1 > d0 * 1.02, (d0, d1)


@pytest.mark.parametrize("scheduler,eta", [("DDIMScheduler", 0.0), ("DDIMScheduler", 0.5),
                                           ("DPMSolverMultistepScheduler", 0.0)])
def test_sample_does_not_depend_on_its_batch(tiny_backend, scheduler, eta):
    images = _seeds_images(4, seed=3)
    alone = img2img(tiny_backend, images[:1], ["7"], 2.0, 0.5, [99], steps=12, scheduler=scheduler, eta=eta)
    mixed = img2img(tiny_backend, images, ["7", "1", "7", "2"], [2.0, 0.0, 3.0, 1.0], [0.5, 0.9, 0.3, 1.0],
                    [99, 5, 6, 7], steps=12, scheduler=scheduler, eta=eta)
    torch.testing.assert_close(mixed.images[:1], alone.images, rtol=0, atol=1e-5)
    again = img2img(tiny_backend, images[[2, 0]], ["7", "7"], [3.0, 2.0], [0.3, 0.5], [6, 99], steps=12,
                    scheduler=scheduler, eta=eta)
    torch.testing.assert_close(again.images[1:], alone.images, rtol=0, atol=1e-5)


def test_different_seeds_give_different_images_and_seed_streams_are_distinct(tiny_backend):
    images = _seeds_images(1).repeat(2, 1, 1, 1)
    out = img2img(tiny_backend, images, ["0", "0"], 1.0, 0.9, [1, 2], steps=6)
    assert (out.images[0] - out.images[1]).abs().max() > 1e-3
    assert len({noise_seed(0, c, s) for c in range(10) for s in range(100)}) == 1000


def test_batch_wide_noise_schedulers_are_refused(tiny_backend):
    with pytest.raises(Exception, match="batch"):
        img2img(tiny_backend, _seeds_images(1), ["0"], 1.0, 0.5, [0], steps=4, scheduler="DDPMScheduler")
