"""`DiffusionAdapter`: a pixel-space DDPM (diffusers UNet2DModel + DDIM) behind ipl's AdaptableGenerator.

DiffusionCLIP-style adaptation: each source image x is inverted once with the *source* UNet to x_t0
(deterministic DDIM, `inversion_steps`), and the adapted UNet regenerates it from x_t0 in `generation_steps`.

Latents are [N, 6, H, W]: channels 0-2 the inverted x_t0, channels 3-5 the source image itself, so a latent is
self-contained (any copy of the generator renders it) and `sample_latents` is a draw from a pool of source
images made once (sampled from the source model, or read from a folder of real images) and shared by all
copies. The code fed to the prompt learner is the normalised CLIP image embedding of the source image.

The source generator renders a latent as its source image (inversion then regeneration with the source UNet
reconstructs it; see tests/test_diffusion.py), adapted copies render by DDIM generation from x_t0.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ipl.generators.diffusion import checkpoint as ckpt
from ipl.generators.diffusion import ddim
from ipl.core.errors import IPLError
from ipl.core.images import read_image_folder  # noqa: F401  (re-exported: the diffusion API reads folders)
from ipl.core.interface import AdaptableGenerator

log = logging.getLogger(__name__)



@dataclass
class DiffusionConfig:
    """How a DDPM is inverted, regenerated, trained and sampled (DiffusionCLIP-like defaults)."""

    t0: int = 400                   # inversion depth: higher changes more, keeps less of the source
    inversion_steps: int = 40       # DDIM steps from the image up to t0 (source UNet, once per image)
    generation_steps: int = 6       # DDIM steps from t0 back to an image while training (adapted UNet)
    sample_steps: int = 50          # DDIM steps from pure noise when sampling new source images
    n_sources: int = 32             # size of the pool of source images (sampled once, cached)
    source_seed: int = 0            # seed of the pool's noise
    source_images: Optional[str] = None  # folder of real images used as the pool instead of samples, or
                                         # "toy:DOMAIN" for procedural renders of the toy world
    code_clip: str = "ViT-B-32:openai"   # CLIP whose image embedding of the source image is the code
    train_blocks: str = "all"       # "all" or comma-separated UNet module prefixes ("up_blocks,conv_out")
    l1_weight: float = 0.3          # L1(generated, source) weight (DiffusionCLIP: clip 3 : l1 1 -> 1 : 0.3)
    checkpointing: bool = True      # recompute each UNet call in backward (stores one image per step)
    lean: bool = False              # memory-lean stage 2: loss on each step's predicted x0, optimiser step per step
    pool_batch: int = 8             # images per UNet call while building the pool

    def validate(self) -> "DiffusionConfig":
        """Refuse settings that cannot work, saying what to change."""
        for name in ("t0", "inversion_steps", "generation_steps", "sample_steps", "n_sources", "pool_batch"):
            if int(getattr(self, name)) <= 0:
                raise IPLError(f"diffusion setting {name} must be a positive integer, got {getattr(self, name)}")
        if self.l1_weight < 0:
            raise IPLError(f"diffusion setting l1_weight must be >= 0, got {self.l1_weight}")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiffusionConfig":
        """Build from a dict, ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class SourcePool:
    """Source images [P,3,H,W] in [-1,1] and their DDIM inversions x_t0 [P,3,H,W] (made by the source UNet)."""

    images: torch.Tensor
    inverted: torch.Tensor
    origin: str                     # "samples(seed=..)" or the image folder

    def latents(self, index: torch.Tensor) -> torch.Tensor:
        """Latents [N, 6, H, W] for pool indices."""
        return torch.cat([self.inverted[index], self.images[index]], dim=1)


def _is_toy_spec(spec: Optional[str]) -> bool:
    return bool(spec) and str(spec).startswith("toy:")


def toy_renders(spec: str, indices: range, resolution: int, seed: int) -> torch.Tensor:
    """Renders [len(indices),3,R,R] of the toy domain in "toy:DOMAIN"; image i is fixed by (seed, i)."""
    from ipl.generators.toy.render import STYLE_DOMAINS, render, sample_params

    domain = spec.split(":", 1)[1]
    if domain not in STYLE_DOMAINS:
        raise IPLError(f"source_images {spec!r}: unknown toy domain; use toy:{' / toy:'.join(STYLE_DOMAINS)}")
    params = [sample_params(1, generator=torch.Generator().manual_seed(_image_seed(seed, i))) for i in indices]
    return torch.cat([render(p, domain, res=resolution) for p in params])


@dataclass(eq=False)
class _Shared:
    """What all copies of one source model share: the model that builds the pool, the pool, the code CLIP."""

    owner: "DiffusionAdapter"
    pool: Optional[SourcePool] = None
    encoder: Any = None


class DiffusionAdapter(AdaptableGenerator):
    """A diffusers UNet2DModel + DDIM schedule that the IPL / NADA trainer can adapt.

    unet:             a diffusers UNet2DModel (square images, 3 channels)
    scheduler_config: its noise schedule (DDPM/DDIM scheduler config dict)
    config:           DiffusionConfig
    code_encoder:     object with encode_images() and embed_dim (a FrozenClip); None: loaded from
                      config.code_clip when first needed
    role:             "source" renders latents as their source images; "adapted" regenerates them
    metadata:         free-form record saved with the model (source, target text, method...)
    """

    def __init__(self, unet: nn.Module, scheduler_config: dict[str, Any], config: Optional[DiffusionConfig] = None,
                 code_encoder: Any = None, role: str = "source", metadata: Optional[dict[str, Any]] = None):
        super().__init__()
        if role not in ("source", "adapted"):
            raise ValueError(f"role must be 'source' or 'adapted', got {role!r}")
        self.unet = unet
        self.scheduler_config = ckpt.scheduler_config_of(scheduler_config)
        self.config = (config or DiffusionConfig()).validate()
        self.role = role
        self._metadata = dict(metadata or {})
        ucfg = unet.config
        size = ucfg.sample_size if isinstance(ucfg.sample_size, int) else ucfg.sample_size[0]
        if ucfg.in_channels != 3 or ucfg.out_channels != 3:
            raise IPLError(f"only RGB pixel-space UNets are supported (in/out channels 3), got "
                           f"{ucfg.in_channels}/{ucfg.out_channels}: latent-diffusion UNets need a VAE.")
        self.resolution = int(size)
        scheduler = ckpt.make_scheduler(self.scheduler_config)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type = str(scheduler.config.prediction_type)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False)
        if not self.config.t0 < self.num_train_timesteps:
            raise IPLError(f"t0={self.config.t0} must be below the model's {self.num_train_timesteps} timesteps.")
        # Shared by reference with every copy (never deep-copied, never in the state dict), so a pool built
        # after G_t was copied is still the one G_t draws from.
        self.__dict__["_shared"] = _Shared(owner=self, encoder=code_encoder)

    # ------------------------------------------------------------------ plumbing
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def eps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """The UNet's noise estimate at integer timestep t (any prediction type converted to epsilon)."""
        out = self.unet(x, t).sample
        if self.prediction_type == "epsilon":
            return out
        return ddim.model_output_to_eps(out, x, self.alphas_cumprod[t].to(x.dtype), self.prediction_type)

    def __deepcopy__(self, memo: dict) -> "DiffusionAdapter":
        # The source pool and the frozen CLIP encoder are shared by reference between copies.
        shared = self.__dict__["_shared"]
        memo[id(shared)] = shared
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    def copy(self) -> "DiffusionAdapter":
        """An adapted copy (G_t): own UNet weights, shared source pool and code encoder."""
        new = copy.deepcopy(self)
        new.role = "adapted"
        return new

    # ------------------------------------------------------------------ paths
    def inversion_path(self) -> list[int]:
        """Timesteps of the inversion to t0."""
        return ddim.inversion_path(self.config.t0, self.config.inversion_steps)

    def generation_path(self) -> list[int]:
        """Timesteps of the generation from t0."""
        return ddim.inversion_path(self.config.t0, self.config.generation_steps)

    def sampling_timesteps(self, steps: Optional[int] = None) -> list[int]:
        """Decreasing timesteps for sampling from noise, from diffusers' DDIMScheduler."""
        scheduler = ckpt.make_scheduler(self.scheduler_config)
        scheduler.set_timesteps(int(steps or self.config.sample_steps))
        return [int(t) for t in scheduler.timesteps]

    @torch.no_grad()
    def invert(self, images: torch.Tensor, batch: Optional[int] = None) -> torch.Tensor:
        """DDIM-invert images [N,3,H,W] in [-1,1] to x_t0 with this model."""
        self._check_images(images)
        batch = batch or self.config.pool_batch
        path = self.inversion_path()
        return torch.cat([ddim.invert(self.eps, x, self.alphas_cumprod, path) for x in images.split(batch)])

    def generate(self, x_t0: torch.Tensor, checkpoint: bool = False) -> torch.Tensor:
        """DDIM-generate images from x_t0 with this model (differentiable)."""
        return ddim.generate(self.eps, x_t0, self.alphas_cumprod, self.generation_path(), checkpoint=checkpoint)

    @torch.no_grad()
    def sample_images(self, n: int, generator: Optional[torch.Generator] = None, steps: Optional[int] = None,
                      batch: Optional[int] = None) -> torch.Tensor:
        """n new images from pure noise with this model's UNet (DDIM, eta 0)."""
        batch = batch or self.config.pool_batch
        shape = (n, 3, self.resolution, self.resolution)
        noise = torch.randn(shape, generator=generator, device=generator.device if generator else "cpu")
        noise = noise.to(self.device)
        ts = self.sampling_timesteps(steps)
        clip = bool(self.scheduler_config.get("clip_sample", True))
        return torch.cat([ddim.sample(self.eps, x, self.alphas_cumprod, ts, clip_x0=clip)
                          for x in noise.split(batch)])

    def _check_images(self, images: torch.Tensor) -> None:
        assert images.ndim == 4 and images.shape[1:] == (3, self.resolution, self.resolution), \
            f"expected [N,3,{self.resolution},{self.resolution}] images, got {tuple(images.shape)}"

    # ------------------------------------------------------------------ source pool
    @property
    def pool(self) -> SourcePool:
        """The shared pool of source images and their inversions (built by the source model on first use)."""
        shared = self.__dict__["_shared"]
        if shared.pool is None:
            if shared.owner.role != "source":
                raise IPLError("this adapted diffusion model has no source pool: its latents come from the source "
                               "model's inversions. Load it together with its source (ipl.run.load_run) or call "
                               "attach_source(source_generator).")
            shared.pool = shared.owner.build_pool()
        return shared.pool

    def attach_source(self, source: "DiffusionAdapter") -> None:
        """Share the source model's pool and code encoder (for an adapted model loaded from disk)."""
        own = self.__dict__["_shared"]
        self.__dict__["_shared"] = source.__dict__["_shared"]
        if self.__dict__["_shared"].encoder is None:
            self.__dict__["_shared"].encoder = own.encoder

    def set_pool(self, pool: SourcePool) -> None:
        """Use a pool made elsewhere (e.g. loaded from a run folder)."""
        self.__dict__["_shared"].pool = pool

    @torch.no_grad()
    def build_pool(self, count: Optional[int] = None, start: int = 0) -> SourcePool:
        """Sample (or read) source images [start, count) and invert them with this (source) UNet.

        Sampled image i always comes from its own noise seed (source_seed, i), so a pool grown later for a
        larger request (e.g. evaluation) starts with exactly the images training used.
        """
        cfg = self.config
        count = int(count or cfg.n_sources)
        if _is_toy_spec(cfg.source_images):
            images = toy_renders(cfg.source_images, range(start, count), self.resolution, cfg.source_seed)
            images, origin = images.to(self.device), str(cfg.source_images)
        elif cfg.source_images:
            images = read_image_folder(cfg.source_images, self.resolution, limit=cfg.n_sources).to(self.device)
            origin = str(cfg.source_images)
        else:
            noise = torch.cat([torch.randn(1, 3, self.resolution, self.resolution,
                                           generator=torch.Generator().manual_seed(_image_seed(cfg.source_seed, i)))
                               for i in range(start, count)]).to(self.device)
            ts = self.sampling_timesteps()
            clip = bool(self.scheduler_config.get("clip_sample", True))
            images = torch.cat([ddim.sample(self.eps, x, self.alphas_cumprod, ts, clip_x0=clip)
                                for x in noise.split(cfg.pool_batch)])
            origin = f"samples(seed={cfg.source_seed}, steps={cfg.sample_steps})"
        log.info("diffusion source pool: %d images from %s, inverting to t0=%d", len(images), origin, cfg.t0)
        return SourcePool(images=images, inverted=self.invert(images), origin=origin)

    def _grow_pool(self, count: int) -> SourcePool:
        """Extend a sampled pool to `count` images (the first ones unchanged)."""
        shared = self.__dict__["_shared"]
        pool = self.pool
        extra = shared.owner.build_pool(count=count, start=len(pool.images))
        shared.pool = SourcePool(images=torch.cat([pool.images, extra.images]),
                                 inverted=torch.cat([pool.inverted, extra.inverted]), origin=pool.origin)
        return shared.pool

    # ------------------------------------------------------------------ AdaptableGenerator
    @property
    def code_encoder(self):
        """The CLIP whose image embedding is the code (loaded from config.code_clip on first use)."""
        shared = self.__dict__["_shared"]
        if shared.encoder is None:
            from ipl.method.clip import load_clip

            shared.encoder = load_clip(self.config.code_clip, device=self.device)
        return shared.encoder

    def set_code_encoder(self, clip: Any) -> None:
        """Use this CLIP (e.g. the trainer's first model) for the codes instead of loading config.code_clip."""
        self.__dict__["_shared"].encoder = clip
        if getattr(clip, "spec", None) is not None:
            self.config.code_clip = str(clip.spec)

    @property
    def code_dim(self) -> int:  # type: ignore[override]
        return int(self.code_encoder.embed_dim)

    def sample_latents(self, n: int, generator: Optional[torch.Generator] = None,
                       truncation: float = 1.0) -> torch.Tensor:
        """n distinct latents: a random draw from the first n_sources pool images, or, for n > n_sources,
        the first n images (the pool grows once to hold them; a folder pool repeats images instead)."""
        del truncation  # no truncation trick for diffusion models
        pool = self.pool
        base = min(self.config.n_sources, len(pool.images))
        dev = generator.device if generator is not None else torch.device("cpu")
        if n <= base:
            index = torch.randperm(base, generator=generator, device=dev)[:n]
        elif self.config.source_images and not _is_toy_spec(self.config.source_images):
            index = torch.randint(len(pool.images), (n,), generator=generator, device=dev)
        else:
            if n > len(pool.images):
                pool = self._grow_pool(n)
            index = torch.randperm(n, generator=generator, device=dev)
        return pool.latents(index.to(pool.images.device)).to(self.device)

    def _split(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert latents.ndim == 4 and latents.shape[1] == 6, \
            f"diffusion latents are [N, 6, H, W] (x_t0, source image), got {tuple(latents.shape)}"
        return latents[:, :3], latents[:, 3:]

    @torch.no_grad()
    def codes(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised CLIP image embeddings [N, code_dim] of the source images."""
        _, source = self._split(latents)
        return F.normalize(self.code_encoder.encode_images(source).float(), dim=-1)

    def render(self, latents: torch.Tensor) -> torch.Tensor:
        """Source role: the source images. Adapted role: DDIM generation from x_t0 with this UNet."""
        x_t0, source = self._split(latents)
        if self.role == "source":
            return source
        return self.generate(x_t0, checkpoint=self.config.checkpointing and torch.is_grad_enabled())

    def extra_losses(self, latents: torch.Tensor, images_t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage-2 hook: weighted L1 between the generated and the source images."""
        if self.config.l1_weight == 0:
            return {}
        _, source = self._split(latents)
        return {"l1": self.config.l1_weight * (images_t.float() - source.float()).abs().mean()}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """UNet parameters in the blocks named by config.train_blocks ("all": every one)."""
        spec = self.config.train_blocks.strip()
        named = list(self.unet.named_parameters())
        if spec in ("", "all"):
            return [p for _, p in named]
        prefixes = [s.strip() for s in spec.split(",") if s.strip()]
        chosen = [p for name, p in named if any(name == q or name.startswith(q + ".") for q in prefixes)]
        if not chosen:
            tops = sorted({name.split(".")[0] for name, _ in named})
            raise IPLError(f"train_blocks={spec!r} matches no UNet parameter. Use 'all' or comma-separated "
                           f"prefixes of: {', '.join(tops)} (e.g. up_blocks.0, mid_block).")
        return chosen

    latents_from_pool = True  # latents index the pool of inverted source images

    @property
    def metadata(self) -> dict[str, Any]:
        """The record saved with the model (source, target text, method...)."""
        return self._metadata

    @torch.no_grad()
    def sample_seeds(self, seeds: list[int], truncation: float = 1.0, class_idx: Optional[int] = None,
                     steps: Optional[int] = None) -> torch.Tensor:
        """DDIM samples (eta 0) from one noise image per seed; `steps` defaults to config.sample_steps."""
        from ipl.generators.diffusion.sampling import sample_from_noise, seed_noise

        if class_idx is not None:
            raise IPLError("--class only applies to conditional StyleGAN2 generators, not diffusion models")
        if truncation != 1.0:
            raise IPLError("--truncation does not apply to diffusion models (no truncation trick); drop it")
        if steps is not None and steps <= 0:
            raise IPLError(f"--steps must be positive, got {steps}")
        return sample_from_noise(self, seed_noise(seeds, self.resolution), steps)

    def edit_images(self, source: AdaptableGenerator, images: torch.Tensor) -> torch.Tensor:
        """DiffusionCLIP edit: invert with the source model to t0, regenerate with this one."""
        from ipl.generators.diffusion.sampling import edit_images

        if not isinstance(source, DiffusionAdapter):
            raise IPLError("--edit needs the diffusion run's source model")
        return edit_images(source, self, images)

    @property
    def stage2_trainer(self):
        """Stage-2 trainer class the engine should use: the lean one when config.lean."""
        if self.config.lean:
            from ipl.generators.diffusion.train import LeanStage2Trainer

            return LeanStage2Trainer
        return None

    def configure(self, options: Optional[Mapping[str, Any]]) -> "DiffusionAdapter":
        """Override DiffusionConfig fields from a dict of strings or values (e.g. `--diffusion t0=300`)."""
        if not options:
            return self
        fields = {f.name: f for f in dataclasses.fields(DiffusionConfig)}
        new = dataclasses.asdict(self.config)
        for key, raw in options.items():
            name = key.strip().replace("-", "_")
            if name not in fields:
                raise IPLError(f"unknown diffusion option {key!r}; known: {', '.join(fields)}")
            new[name] = _convert(raw, type(new[name]) if new[name] is not None else str, key)
        if new["source_images"] != self.config.source_images or new["n_sources"] != self.config.n_sources \
                or new["t0"] != self.config.t0 or new["inversion_steps"] != self.config.inversion_steps \
                or new["source_seed"] != self.config.source_seed or new["sample_steps"] != self.config.sample_steps:
            self.__dict__["_shared"].pool = None  # the pool depends on these: rebuild on next use
        self.config = DiffusionConfig(**new).validate()
        if not self.config.t0 < self.num_train_timesteps:
            raise IPLError(f"t0={self.config.t0} must be below the model's {self.num_train_timesteps} timesteps.")
        return self

    # ------------------------------------------------------------------ saving
    def record(self, metadata: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """The JSON record saved next to the weights."""
        return {
            "family": "diffusion",
            "role": self.role,
            "unet_config": {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")},
            "scheduler_config": self.scheduler_config,
            "diffusion": dataclasses.asdict(self.config),
            "metadata": {**self.metadata, **(metadata or {})},
        }

    def save(self, path: str, metadata: Optional[dict[str, Any]] = None) -> None:
        """Write UNet weights + configs as one safetensors file (our diffusion format)."""
        ckpt.save_file(path, self.unet, self.record(metadata))


def _convert(raw: Any, kind: type, key: str) -> Any:
    """A config value from a CLI string (or pass-through for typed values)."""
    if not isinstance(raw, str):
        return raw
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return low in ("1", "true", "yes", "on")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise IPLError(f"diffusion option {key}={raw!r}: expected a {kind.__name__}") from None
    return raw


def _image_seed(source_seed: int, index: int) -> int:
    """Noise seed of pool image `index` (independent streams per image)."""
    return (int(source_seed) * 1_000_003 + int(index)) % (2**63 - 1)
