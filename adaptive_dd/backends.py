"""Diffusion backbones behind one small interface, loaded by name or path (one entry point, like timm).

A backend encodes images to latents, predicts noise for a batch of latents under a batch of conditions
(class names mapped to class embeddings or to prompt embeddings), and decodes latents to images. The sampler
owns the loop; a backend owns the weights.

    create_backend("bundled")                      # the offline default in assets/backbone-mnist-5k
    create_backend("path/to/class-unet")           # a folder with adaptive_dd.json, unet/, scheduler/ (+ vae/)
    create_backend("runwayml/stable-diffusion-v1-5")  # Stable Diffusion by hub id or local directory
    create_backend("facebook/DiT-XL-2-256")        # DiT (a DiTPipeline folder) by hub id or local directory
"""
from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from pathlib import Path

import torch

from . import imagenet
from .data import ASSETS
from .fidelity import ModelLoadError

BUNDLED_BACKBONE = ASSETS / "backbone-mnist-5k"
SD_BETAS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
SD_LAMBDA = 2000.0
SD_LATENT_NUMEL = 4 * 64 * 64
# Stable Diffusion's memory settings, chosen by benchmarks/gpu_cost.py (SD-1.5 shapes, fp16, 512 px; README, "GPU
# memory"): a UNet call holds ~68 MB per row at 64 x 64 latents, ~42 MB with the feed-forward of its 4,096-token
# transformer blocks in chunks of SD_FF_TOKENS tokens; a call takes at most SD_DENOISER_ROWS rows (a 10-seed
# mini-batch with CFG in one call), 2.83 GB at the peak of a run with the weights.
SD_FF_TOKENS = 1024
SD_DENOISER_ROWS = 20
DIT_BETAS = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0)
# Schedulers whose step draws noise from one batch-wide generator, which would tie a sample to its batch.
STOCHASTIC_SCHEDULERS = {"DDPMScheduler", "EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
                         "DPMSolverSDEScheduler", "LCMScheduler", "TCDScheduler"}


class Backend(ABC):
    """What the sampler needs from a diffusion model; a new backbone implements the five abstract methods.

    Attributes: classes (names it can condition on; None = any name, as a text prompt), image_size and
    channels of its images, default_betas (its usable CFG range), default_lambda (repulsion weight whose
    effect is visible at its latent size), scheduler_config, device, dtype and denoiser_rows (the most rows one
    denoiser call takes, a bound on its activations; None: a step's rows in one call).
    """

    classes: list[str] | None
    image_size: int
    channels: int
    default_betas: tuple[float, ...]
    default_lambda: float
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    description: str
    denoiser_rows: int | None = None

    def make_scheduler(self, name: str = "DDIMScheduler", **overrides):
        """A fresh scheduler of class `name` from the backbone's scheduler config (overrides win).

        A copy of one built per (name, config, overrides): building one computes its 1,000-step noise schedule in Python,
        a few ms that every sampler call paid three times (a BO proxy on a small model takes ~50 ms).
        """
        import diffusers

        if name in STOCHASTIC_SCHEDULERS:
            raise ModelLoadError(f"scheduler {name} draws batch-wide noise in its step, so a sample's image would "
                                 f"depend on its batch; use DDIMScheduler (eta >= 0) or a deterministic solver")
        cls = getattr(diffusers, name, None)
        if cls is None or not hasattr(cls, "from_config"):
            raise ModelLoadError(f"unknown scheduler {name!r}: not a diffusers scheduler class")
        built = self.__dict__.setdefault("_schedulers", {})
        key = (name, json.dumps(self.scheduler_config, sort_keys=True, default=str),
               json.dumps(overrides, sort_keys=True, default=str))
        if key not in built:
            built[key] = cls.from_config(self.scheduler_config, **overrides)
        return copy.deepcopy(built[key])

    def supports(self, name: str) -> bool:
        """Whether the backbone can condition on the class name."""
        return self.classes is None or name in self.classes

    def check_classes(self, names: list[str]) -> None:
        missing = [n for n in names if not self.supports(n)]
        if missing:
            shown = ", ".join(self.classes[:12]) + (f", ... ({len(self.classes)} in all)" if len(self.classes) > 12
                                                     else "")
            raise ValueError(f"class {missing[0]!r} is not one of the backbone's classes ({shown})")

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @abstractmethod
    def condition(self, names: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @abstractmethod
    def null_condition(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    @abstractmethod
    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def denoise(self, latents: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """predict_noise in as few calls of at most denoiser_rows rows as there can be (None: one call), of equal
        sizes, which bounds the activations a step holds: a step's rows are its samples twice over (CFG) plus any
        proxies riding in it, and a GPU pays a fixed cost per call, so 44 rows go as 15 + 15 + 14, not 20 + 20 + 4."""
        n = self.denoiser_rows
        if not n or len(latents) <= n:
            return self.predict_noise(latents, t, cond)
        k = -(-len(latents) // n)
        return torch.cat([self.predict_noise(*c) for c in zip(latents.tensor_split(k), t.tensor_split(k),
                                                              cond.tensor_split(k))])


class VAELatents:
    """Latent-space backends (class-latent UNet, Stable Diffusion, DiT): latents are the AutoencoderKL posterior's
    mean times its scaling factor (a deterministic encoding); grey images are repeated to RGB for an RGB VAE and
    a one-channel VAE takes them as they are.

    vae_chunk: samples per VAE call (None: the whole batch). At 512 px the VAE's activations, not the denoiser's,
    set a run's peak memory (its last decoder block holds 128 channels at full resolution; measured on a CPU in
    fp32 with SD-1.5's VAE shape: 3 latents decoded at once +2.4 GB, one at a time +1.0 GB), so the hub backbones
    encode and decode one image at a time, which also makes each image's bits independent of its batch mates. The
    bundled 32 px VAE takes whole batches.
    """

    vae: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    vae_chunk: int | None = None

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _by_chunk(self, fn, x: torch.Tensor) -> torch.Tensor:
        """fn over x in chunks of vae_chunk samples (one call when vae_chunk is None)."""
        if not self.vae_chunk or len(x) <= self.vae_chunk:
            return fn(x)
        return torch.cat([fn(c) for c in x.split(self.vae_chunk)])

    @torch.no_grad()
    def encode(self, images):
        x = images.to(self.device, self.dtype) * 2 - 1
        if x.shape[1] == 1 and self.vae.config.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return self._by_chunk(lambda c: self.vae.encode(c).latent_dist.mean, x) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents):
        z = latents.to(self.dtype) / self.vae.config.scaling_factor
        x = self._by_chunk(lambda c: self.vae.decode(c).sample, z)
        return ((x.float() + 1) / 2).clamp(0, 1)


class ClassUNetBackend(Backend):
    """A class-conditional pixel-space diffusers UNet2DModel ("type": "class-unet" in adaptive_dd.json); the class
    index num_classes is the null class.

    A folder holds adaptive_dd.json (classes, image_size, channels, beta_grid, default_lambda), unet/ and
    scheduler/. Every disagreement between the json and the weights' configs is a ModelLoadError naming the file.
    """

    TYPE = "class-unet"

    def __init__(self, directory: str | Path, device: str | torch.device = "cpu"):
        from diffusers import UNet2DModel

        directory = self._bind(directory)
        meta_path = directory / "adaptive_dd.json"
        self._require([meta_path, directory / "unet" / "config.json",
                       directory / "unet" / "diffusion_pytorch_model.safetensors",
                       directory / "scheduler" / "scheduler_config.json"])
        meta = read_backbone_meta(directory)
        unet = self._load(UNet2DModel, "unet")
        self.meta_file = meta_path
        try:
            self.classes = list(meta["classes"])
            self.image_size = int(meta["image_size"])
            self.channels = int(meta["channels"])
            self.default_betas = tuple(float(b) for b in meta["beta_grid"])
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"{meta_path}: missing or malformed key ({e}){self.hint}") from None
        self.null_class = int(meta.get("null_class", len(self.classes)))
        self.default_lambda = float(meta.get("default_lambda", 0.0))
        self.meta = meta
        if unet.config.num_class_embeds != len(self.classes) + 1:
            raise ModelLoadError(f"backbone {directory}: {len(self.classes)} classes in {meta_path.name} but the "
                                 f"UNet ({directory / 'unet' / 'config.json'}) has {unet.config.num_class_embeds} "
                                 f"class embeddings (expected classes + 1 for the null class){self.hint}")
        self.device = torch.device(device)
        self.dtype = torch.float32
        # the sampler hands the UNet channels-last latents; weights in the same layout spare every convolution a
        # conversion (the bundled run 5-11% faster on this CPU, byte-identical images)
        self.unet = unet.to(self.device, memory_format=torch.channels_last).eval().requires_grad_(False)
        self._check_shapes()
        self.scheduler_config = json.loads((directory / "scheduler" / "scheduler_config.json").read_text())
        self.description = f"class-conditional UNet2DModel {directory.name} ({self.image_size} px, " \
                           f"{sum(p.numel() for p in self.unet.parameters()) / 1e6:.2f}M params) on {self.device}"

    def _bind(self, directory: str | Path) -> Path:
        """Remember the folder; errors about the bundled one say how to regenerate it."""
        self.directory = Path(directory)
        self.hint = ("; regenerate it with `python -m adaptive_dd.demo.train backbone`"
                     if self.directory.resolve() == BUNDLED_BACKBONE.resolve() else "")
        return self.directory

    def _require(self, paths: list[Path]) -> None:
        for p in paths:
            if not p.exists():
                raise ModelLoadError(f"backbone file {p} is missing{self.hint}")

    def _load(self, cls, sub: str):
        """A diffusers model from the folder's `sub`/ (safetensors only); any failure names the folder."""
        from safetensors import SafetensorError

        try:
            return cls.from_pretrained(self.directory / sub, use_safetensors=True, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as e:
            raise ModelLoadError(f"backbone {self.directory} does not load: {sub}/ "
                                 f"({str(e).splitlines()[0]}){self.hint}") from None

    def _mismatch(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"backbone {self.directory}: {what}{self.hint}")

    def _check_shapes(self) -> None:
        cfg, unet_cfg = self.unet.config, self.directory / "unet" / "config.json"
        if cfg.in_channels != self.channels or cfg.sample_size != self.image_size:
            raise self._mismatch(f"{self.meta_file.name} says {self.channels} x {self.image_size} px images but "
                                 f"{unet_cfg} takes {cfg.in_channels} x {cfg.sample_size}")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, self.dtype) * 2 - 1

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents.float() + 1) / 2).clamp(0, 1)

    def condition(self, names: list[str]) -> torch.Tensor:
        self.check_classes(names)
        return torch.tensor([self.classes.index(n) for n in names], device=self.device)

    def null_condition(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.null_class, device=self.device, dtype=torch.long)

    def predict_noise(self, latents, t, cond):
        return self.unet(latents, t, class_labels=cond).sample


class ClassLatentUNetBackend(VAELatents, ClassUNetBackend):
    """A class-conditional UNet2DModel over the latents of the folder's own AutoencoderKL ("type":
    "class-latent-unet"): Stable Diffusion's encode / denoise / decode path with a class index for the prompt.

    The folder adds vae/ and, in adaptive_dd.json, "latent_shape" [channels, size, size]; image_size stays in
    pixels. The bundled backbone is one; any user may train and load another by folder.
    """

    TYPE = "class-latent-unet"

    def __init__(self, directory: str | Path, device: str | torch.device = "cpu"):
        from diffusers import AutoencoderKL

        directory = self._bind(directory)
        self._require([directory / "vae" / "config.json", directory / "vae" / "diffusion_pytorch_model.safetensors"])
        self.vae = self._load(AutoencoderKL, "vae").eval().requires_grad_(False)
        super().__init__(directory, device)
        self.vae = self.vae.to(self.device)
        c, h, w = self.latent_shape
        self.description = (f"class-conditional latent UNet2DModel {directory.name} ({self.image_size} px, latents "
                            f"{c}x{h}x{w}, UNet {sum(p.numel() for p in self.unet.parameters()) / 1e6:.2f}M + VAE "
                            f"{sum(p.numel() for p in self.vae.parameters()) / 1e6:.2f}M params) on {self.device}")

    def _check_shapes(self) -> None:
        unet, vae = self.unet.config, self.vae.config
        unet_cfg, vae_cfg = self.directory / "unet" / "config.json", self.directory / "vae" / "config.json"
        if vae.latent_channels != unet.in_channels or unet.out_channels != unet.in_channels:
            raise self._mismatch(f"{vae_cfg} has {vae.latent_channels} latent channels but {unet_cfg} takes "
                                 f"{unet.in_channels} in and gives {unet.out_channels} out")
        if vae.in_channels != self.channels or vae.out_channels != self.channels:
            raise self._mismatch(f"{self.meta_file.name} says {self.channels}-channel images but {vae_cfg} takes "
                                 f"{vae.in_channels} and gives {vae.out_channels}")
        if unet.sample_size * self.vae_scale != self.image_size:
            raise self._mismatch(f"{self.meta_file.name} says {self.image_size} px images but {unet_cfg} samples "
                                 f"{unet.sample_size} x {unet.sample_size} latents, which {vae_cfg} (downsampling "
                                 f"x{self.vae_scale}) decodes to {unet.sample_size * self.vae_scale} px")
        shape = [unet.in_channels, unet.sample_size, unet.sample_size]
        declared = self.meta.get("latent_shape")
        if declared is not None and list(declared) != shape:
            raise self._mismatch(f"{self.meta_file.name} says latent_shape {list(declared)} but {unet_cfg} and "
                                 f"{vae_cfg} give {shape}")
        self.latent_shape = tuple(shape)


CLASS_BACKBONES = {cls.TYPE: cls for cls in (ClassUNetBackend, ClassLatentUNetBackend)}


def read_backbone_meta(directory: Path) -> dict:
    """adaptive_dd.json of a class backbone folder, as a dict; unreadable or not an object is a ModelLoadError."""
    path = directory / "adaptive_dd.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: unreadable ({str(e).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return meta


def load_class_backbone(directory: str | Path, device: str | torch.device = "cpu") -> ClassUNetBackend:
    """The class backbone a folder's adaptive_dd.json names by "type" (a pixel or a latent class UNet)."""
    directory = Path(directory)
    meta = read_backbone_meta(directory)
    kind = meta.get("type", ClassUNetBackend.TYPE)
    if kind not in CLASS_BACKBONES:
        raise ModelLoadError(f"{directory / 'adaptive_dd.json'}: unknown type {kind!r}; expected one of "
                             f"{', '.join(CLASS_BACKBONES)}")
    return CLASS_BACKBONES[kind](directory, device)


def chunk_feed_forward(unet: torch.nn.Module, tokens: int) -> list[int]:
    """Run the feed-forward of a UNet2DConditionModel's transformer blocks that see more than `tokens` tokens (a
    multiple of it) in chunks of `tokens` (diffusers' set_chunk_feed_forward): its GEGLU widens each token 8x, so
    at 64 x 64 latents it set a UNet call's peak memory. Returns the token counts of the chunked levels."""
    size, depth = int(unet.config.sample_size), len(unet.down_blocks)
    levels = [(b, size // 2 ** i) for i, b in enumerate(unet.down_blocks)]
    levels += [(b, size // 2 ** (depth - 1 - i)) for i, b in enumerate(unet.up_blocks)]
    chunked = []
    for block, side in levels:
        seq = side * side
        blocks = [m for m in block.modules() if hasattr(m, "set_chunk_feed_forward")]
        if blocks and seq > tokens and seq % tokens == 0:
            for m in blocks:
                m.set_chunk_feed_forward(tokens, dim=1)
            chunked.append(seq)
    return chunked


class StableDiffusionBackend(VAELatents, Backend):
    """Stable Diffusion v1.x/2.x components (UNet2DConditionModel, AutoencoderKL, CLIP) in latent space.

    The class name fills the prompt template; the negative prompt is the null condition. Latents are the
    VAE posterior's mean times its scaling factor (deterministic encoding). fp16 on CUDA, fp32 on CPU.
    GPU memory: the text encoder stays on the CPU in fp32 (it runs once per prompt, whose embedding is cached, and
    would hold 0.25 GB of the GPU), the UNet's widest feed-forwards run in chunks of SD_FF_TOKENS tokens, a UNet call
    takes at most SD_DENOISER_ROWS rows and the VAE one image.
    """

    def __init__(self, spec: str, device: str | torch.device = "cpu", prompt: str = "a photo of a {name}",
                 negative_prompt: str = ""):
        from diffusers import StableDiffusionImg2ImgPipeline

        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        try:
            pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
                spec, torch_dtype=self.dtype, safety_checker=None, requires_safety_checker=False)
        except (OSError, ValueError, EnvironmentError) as e:
            raise ModelLoadError(f"Stable Diffusion model {spec!r} does not load: {str(e).splitlines()[0]}") from None
        self.unet = pipe.unet.to(self.device).eval().requires_grad_(False)
        self.vae = pipe.vae.to(self.device).eval().requires_grad_(False)
        self.text_encoder = pipe.text_encoder.to("cpu", torch.float32).eval().requires_grad_(False)
        self.tokenizer = pipe.tokenizer
        self.vae_chunk = 1
        self.denoiser_rows = SD_DENOISER_ROWS
        chunk_feed_forward(self.unet, SD_FF_TOKENS)
        self.scheduler_config = dict(pipe.scheduler.config)
        self.image_size = int(self.unet.config.sample_size) * self.vae_scale
        self.channels = 3
        self.classes = None
        self.default_betas = SD_BETAS
        self.default_lambda = SD_LAMBDA
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self._embeds: dict[str, torch.Tensor] = {}
        self.description = f"Stable Diffusion {spec} ({self.image_size} px, {self.dtype}) on {self.device}"

    @torch.no_grad()
    def _embed(self, text: str) -> torch.Tensor:
        if text not in self._embeds:
            ids = self.tokenizer(text, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            self._embeds[text] = self.text_encoder(ids)[0].to(self.device, self.dtype)
        return self._embeds[text]

    def condition(self, names):
        """Prompts with the class name; a WordNet id (ImageNet class folder) is replaced by its readable name."""
        return torch.cat([self._embed(self.prompt.format(name=imagenet.readable(n))) for n in names])

    def null_condition(self, n):
        return self._embed(self.negative_prompt).expand(n, -1, -1)

    def predict_noise(self, latents, t, cond):
        return self.unet(latents, t, encoder_hidden_states=cond).sample


class DiTBackend(VAELatents, Backend):
    """DiT as diffusers' DiTPipeline runs it: a DiTTransformer2DModel (or Transformer2DModel) over AutoencoderKL
    latents, conditioned on a class index, with index num_classes as the null class.

    The transformer predicts noise and, when out_channels is twice the latent channels, a learned variance:
    predict_noise returns the noise channels only, and the sampler guides those (DiTPipeline applies CFG to the
    same channels and drops the variance before the scheduler step). Class names map to indices through the
    model's id2label (every comma-separated alias, as DiTPipeline.get_label_ids) and, for 1000-class models,
    through ImageNet WordNet ids or readable names. fp16 on CUDA, fp32 on CPU.

    default_lambda: under the median bandwidth, the repulsion term's norm falls as 1/||z_i - z_j||, i.e. as
    1/sqrt(D) for D latent numbers, so its push per latent number falls as 1/D; lambda is scaled with D from
    Stable Diffusion's 2000 at 4x64x64 (the same VAE), which gives 500 for DiT-XL/2-256's 4x32x32 latents.
    """

    def __init__(self, spec: str, device: str | torch.device = "cpu"):
        from diffusers import DiTPipeline

        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        try:
            pipe = DiTPipeline.from_pretrained(spec, torch_dtype=self.dtype)
        except (OSError, ValueError, EnvironmentError) as e:
            raise ModelLoadError(f"DiT model {spec!r} does not load: {str(e).splitlines()[0]}") from None
        self.transformer = pipe.transformer.to(self.device).eval().requires_grad_(False)
        self.vae = pipe.vae.to(self.device).eval().requires_grad_(False)
        self.vae_chunk = 1
        cfg = self.transformer.config
        self.num_classes = int(cfg.num_embeds_ada_norm)
        self.latent_channels = int(cfg.in_channels)
        self.learned_sigma = int(cfg.out_channels) == 2 * self.latent_channels
        self.scheduler_config = dict(pipe.scheduler.config)
        self.image_size = int(cfg.sample_size) * self.vae_scale
        self.channels = 3
        # id2label lives in model_index.json (DiTPipeline does not keep it): each id's first alias names its class
        id2label = pipe.load_config(spec).get("id2label") or {}
        self.labels = dict(pipe.labels) or {str(i): i for i in range(self.num_classes)}
        self.classes = ([id2label[k].split(",")[0].strip() for k in sorted(id2label, key=int)] if id2label
                        else list(self.labels))
        self.default_betas = DIT_BETAS
        self.default_lambda = SD_LAMBDA * self.latent_channels * int(cfg.sample_size) ** 2 / SD_LATENT_NUMEL
        self.description = (f"DiT {spec} ({self.image_size} px, {self.num_classes} classes, "
                            f"{sum(p.numel() for p in self.transformer.parameters()) / 1e6:.1f}M params, "
                            f"{self.dtype}) on {self.device}")

    def label_id(self, name: str) -> int | None:
        """The class index a name conditions on, or None."""
        if name in self.labels:
            return self.labels[name]
        c = imagenet.lookup(name)
        return c.index if c is not None and self.num_classes == imagenet.NUM_CLASSES else None

    def supports(self, name: str) -> bool:
        return self.label_id(name) is not None

    def condition(self, names):
        self.check_classes(names)
        return torch.tensor([self.label_id(n) for n in names], device=self.device)

    def null_condition(self, n):
        return torch.full((n,), self.num_classes, device=self.device, dtype=torch.long)

    def predict_noise(self, latents, t, cond):
        """Noise for each latent at its timestep: t is one timestep for the batch or one per sample."""
        t = torch.as_tensor(t, device=self.device)
        if t.dim() == 0:
            t = t.expand(len(latents))
        out = self.transformer(latents.to(self.dtype), timestep=t, class_labels=cond).sample
        return out[:, :self.latent_channels] if self.learned_sigma else out


def _pipeline_class(spec: str) -> str | None:
    """The `_class_name` of a diffusers folder's or hub id's model_index.json (None when there is none to read)."""
    path = Path(spec)
    if path.exists():
        index = path / "model_index.json"
        try:
            return json.loads(index.read_text()).get("_class_name") if index.is_file() else None
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{index}: unreadable ({e})") from None
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.load_config(spec).get("_class_name")
    except (OSError, ValueError):
        return None


def create_backend(spec: str | None = "bundled", device: str | torch.device = "cpu",
                   prompt: str = "a photo of a {name}", negative_prompt: str = "") -> Backend:
    """Resolve a backbone by name or path: "bundled", a class-UNet directory, DiT or Stable Diffusion (id or dir)."""
    if spec in (None, "", "bundled"):
        if not (BUNDLED_BACKBONE / "adaptive_dd.json").exists():
            raise ModelLoadError(f"backbone file {BUNDLED_BACKBONE / 'adaptive_dd.json'} is missing; regenerate it "
                                 f"with `python -m adaptive_dd.demo.train backbone`")
        return load_class_backbone(BUNDLED_BACKBONE, device)
    path = Path(spec)
    if (path / "adaptive_dd.json").exists():
        return load_class_backbone(path, device)
    if path.exists() and not (path / "model_index.json").exists():
        raise ModelLoadError(f"{path}: neither a class-UNet backbone (adaptive_dd.json) nor a diffusers "
                             f"Stable Diffusion or DiT directory (model_index.json)")
    if _pipeline_class(spec) == "DiTPipeline":
        return DiTBackend(spec, device)
    return StableDiffusionBackend(spec, device, prompt, negative_prompt)
