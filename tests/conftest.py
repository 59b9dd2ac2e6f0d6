"""Tiny models built in code, saved to disk and loaded through the same loaders users' models go through."""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import time
import urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402

DIGITS = [str(i) for i in range(10)]


def save_tiny_class_unet(directory, size: int = 8, seed: int = 0, default_lambda: float = 1.0) -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=size, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=len(DIGITS) + 1)
    unet.save_pretrained(directory / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(directory / "scheduler")
    (directory / "adaptive_dd.json").write_text(json.dumps({
        "type": "class-unet", "classes": DIGITS, "null_class": len(DIGITS), "image_size": size, "channels": 1,
        "beta_grid": [0.0, 1.0, 2.0, 3.0], "default_lambda": default_lambda}))


def save_tiny_class_latent_unet(directory, size: int = 16, seed: int = 0, latent_channels: int = 4,
                                default_lambda: float = 10.0) -> None:
    """A latent class-UNet folder as `demo.train backbone` writes it: 1-channel AutoencoderKL (one downsampling,
    16 px -> 4 x 8 x 8 latents) + class UNet over its latents + scheduler with clip_sample off."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=latent_channels, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=size, scaling_factor=1.5)
    vae.save_pretrained(directory / "vae")
    latent = size // 2
    UNet2DModel(sample_size=latent, in_channels=latent_channels, out_channels=latent_channels,
                block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                num_class_embeds=len(DIGITS) + 1).save_pretrained(directory / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                  clip_sample=False).save_pretrained(directory / "scheduler")
    (directory / "adaptive_dd.json").write_text(json.dumps({
        "type": "class-latent-unet", "classes": DIGITS, "null_class": len(DIGITS), "image_size": size,
        "channels": 1, "latent_shape": [latent_channels, latent, latent], "beta_grid": [0.0, 1.0, 2.0],
        "default_lambda": default_lambda}))


def save_tiny_teacher(directory, seed: int = 0) -> None:
    from adaptive_dd.fidelity import TeacherConfig, save_teacher

    torch.manual_seed(seed)
    cfg = TeacherConfig(model_name="resnet10t", num_classes=10, in_chans=1, input_size=16, mean=[0.5], std=[0.5],
                        classes=DIGITS, model_kwargs={"stem_width": 8, "channels": [8, 8, 16, 16]})
    model = cfg.build()
    with torch.no_grad():  # a random head, scaled so that teacher distributions differ between images
        model.get_classifier().weight.mul_(20.0)
    save_teacher(model, cfg, directory)


@pytest.fixture(scope="session")
def tiny_unet_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_unet")
    save_tiny_class_unet(d)
    return d


@pytest.fixture(scope="session")
def tiny_backend(tiny_unet_dir):
    from adaptive_dd.backends import create_backend

    return create_backend(str(tiny_unet_dir))


@pytest.fixture(scope="session")
def tiny_latent_unet_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_latent_unet")
    save_tiny_class_latent_unet(d)
    return d


@pytest.fixture(scope="session")
def tiny_latent_backend(tiny_latent_unet_dir):
    from adaptive_dd.backends import create_backend

    return create_backend(str(tiny_latent_unet_dir))


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_teacher")
    save_tiny_teacher(d)
    return d


@pytest.fixture(scope="session")
def tiny_teacher(tiny_teacher_dir):
    from adaptive_dd.fidelity import load_teacher

    return load_teacher(str(tiny_teacher_dir))


APP_SESSION_DIRS = f"{get_upload_folder()}/adaptive_dd-app-*"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, timeout: float = 60.0) -> None:
    """Ready when /gradio_api/info answers (GET: Gradio 6.31 answers HEAD with 405), not on "Running on"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "gradio_api/info", timeout=5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture(scope="session")
def app_url(tiny_unet_dir, tiny_teacher_dir):
    """The app launched once on a free port over the tiny models; its session folders are removed after."""
    import app

    demo = app.build_demo(app.S.load_models(str(tiny_unet_dir), str(tiny_teacher_dir), "cpu", None))
    before = set(glob.glob(APP_SESSION_DIRS))
    port = _free_port()
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, **app.LAUNCH)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_ready(url)
        yield url
    finally:
        demo.close()
        for folder in set(glob.glob(APP_SESSION_DIRS)) - before:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_dit_dir(tmp_path_factory):
    """A 1000-class DiT with random weights in diffusers' layout (16 px images), as `demo.random_dit` writes it."""
    from adaptive_dd.demo.random_dit import build_random_dit

    return build_random_dit(tmp_path_factory.mktemp("tiny_dit") / "dit", num_classes=1000)


@pytest.fixture(scope="session")
def resnet18_checkpoint(tmp_path_factory):
    """A random timm resnet18 with ImageNet's 1000 outputs, saved as safetensors (as `--teacher resnet18:CKPT`)."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("resnet18") / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(path))
    return path


@pytest.fixture(scope="session")
def wnid_folder(tmp_path_factory):
    """An ImageFolder with two ImageNet class folders (tench, English springer), train/ and test/, 16 px RGB."""
    from PIL import Image

    root = tmp_path_factory.mktemp("wnids") / "subset"
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 3), ("test", 4)):
        for wnid in ("n01440764", "n02102040"):
            (root / split / wnid).mkdir(parents=True)
            for k in range(n):
                pixels = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / wnid / f"{k}.png")
    return root
