"""The Stable Diffusion backend, end to end, on a tiny random pipeline saved to disk (no hub)."""
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    from adaptive_dd.demo.random_sd import build_random_sd

    return build_random_sd(tmp_path_factory.mktemp("tiny_sd"), "tiny")


def test_stable_diffusion_backend_runs_the_sampler_end_to_end(tiny_sd_dir):
    from adaptive_dd.backends import StableDiffusionBackend, create_backend
    from adaptive_dd.sampler import img2img

    backend = create_backend(str(tiny_sd_dir), prompt="a photo of a {name}", negative_prompt="cartoon")
    assert isinstance(backend, StableDiffusionBackend) and backend.image_size == 32 and backend.classes is None
    assert backend.default_betas[0] == 1.0 and backend.default_betas[-1] == 10.0
    seeds = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = img2img(backend, seeds, ["tench", "goldfish", "tench"], [2.0, 5.0, 2.0], [0.5, 0.8, 0.5], [1, 2, 1],
                  steps=6, repulsion_weight=50.0)
    assert out.images.shape == (3, 3, 32, 32) and out.latents.shape == (3, 4, 16, 16)
    assert torch.isfinite(out.images).all()
    # prompts differ per class: the condition embeddings differ, the null (negative prompt) one is shared
    c = backend.condition(["tench", "goldfish"])
    assert not torch.allclose(c[0], c[1]) and backend.null_condition(2).shape == c.shape
    # an ImageNet class folder named by its WordNet id prompts with the readable name
    torch.testing.assert_close(backend.condition(["n01440764"]), c[:1], rtol=0, atol=0)
    alone = img2img(backend, seeds[:1], ["tench"], 2.0, 0.5, [1], steps=6)
    pair = img2img(backend, seeds[:2], ["tench", "goldfish"], [2.0, 5.0], [0.5, 0.8], [1, 2], steps=6)
    torch.testing.assert_close(pair.images[:1], alone.images, rtol=0, atol=1e-4)


def test_a_directory_that_is_no_model_is_refused(tmp_path):
    from adaptive_dd.backends import create_backend
    from adaptive_dd.fidelity import ModelLoadError

    (tmp_path / "random.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="neither"):
        create_backend(str(tmp_path))
