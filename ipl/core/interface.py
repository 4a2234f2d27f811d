"""The one small interface through which the trainer and the product talk to any image generator.

Nothing in ipl/method or the product imports a StyleGAN- or diffusion-specific class. A generator family
(ipl.core.family.GeneratorFamily) loads its checkpoints as subclasses of `AdaptableGenerator`
(generators/stylegan2/adapter.py, generators/diffusion/adapter.py).

Optional capabilities are declared here with defaults, never probed with hasattr: a family overrides the
ones it has (noise inputs, extra loss terms, its own stage-2 trainer, per-run options, a code encoder, ...).

Vocabulary:
- a *latent* is whatever the generator renders from (StyleGAN2: a W code [N, w_dim];
  diffusion: a source image or its inverted noise). Latents are tensors with batch first.
- a *code* is the vector fed to the prompt learner (StyleGAN2: w itself; diffusion: the CLIP
  image embedding of the source image), shape [N, code_dim].
- *layers* are the groups the trainer may unfreeze one by one (StyleGAN2: W+ indices).
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ipl.core.errors import IPLError


class AdaptableGenerator(nn.Module, ABC):
    """A generator the IPL / NADA trainer can sample, render, partially unfreeze, copy and save."""

    #: Width of the code fed to the prompt learner.
    code_dim: int
    #: Output image resolution (square).
    resolution: int

    @abstractmethod
    def sample_latents(self, n: int, generator: Optional[torch.Generator] = None,
                       truncation: float = 1.0) -> torch.Tensor:
        """Draw n latents (deterministic for a seeded torch.Generator)."""

    @abstractmethod
    def codes(self, latents: torch.Tensor) -> torch.Tensor:
        """The prompt-learner input [N, code_dim] for these latents."""

    @abstractmethod
    def render(self, latents: torch.Tensor) -> torch.Tensor:
        """Images [N, 3, H, W], nominally in [-1, 1] (never clamped here)."""

    # --- adaptive layer freezing (optional: generators without layers return 0 / []) ---
    def num_layers(self) -> int:
        """How many independently unfreezable layer groups there are."""
        return 0

    def lift(self, latents: torch.Tensor) -> torch.Tensor:
        """Per-layer latents [N, num_layers, ...] that `render_layers` accepts."""
        raise NotImplementedError(f"{type(self).__name__} has no per-layer latents")

    def render_layers(self, latents_plus: torch.Tensor) -> torch.Tensor:
        """Render per-layer latents (W+ for StyleGAN2)."""
        raise NotImplementedError(f"{type(self).__name__} has no per-layer latents")

    def layer_parameters(self, index: int, layer_map: str = "reference") -> list[nn.Parameter]:
        """Parameters that unfreezing layer group `index` trains, under `layer_map` (`AdaptConfig.layer_map`):
        'reference' is the row -> module map of the NADA and IPL trainers, 'semantic' the layers the row's latent
        modulates. A group may be empty (the trainer never picks one with nothing trainable). A generator whose
        groups have only one meaning ignores `layer_map`."""
        raise NotImplementedError(f"{type(self).__name__} has no layer groups")

    @abstractmethod
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter stage 2 may train. For a generator with layer groups the trainer further keeps only
        those some group of the run's layer map holds (`layer_parameters`), also when no layer is frozen."""

    def copy(self) -> "AdaptableGenerator":
        """A deep copy (G_t starts as a copy of G_s)."""
        return copy.deepcopy(self)

    @abstractmethod
    def save(self, path: str, metadata: Optional[dict[str, Any]] = None) -> None:
        """Write the generator in the project's own format (atomically)."""

    # --- optional capabilities: defaults for a generator that does not have them ---
    #: True when latents are picks from a finite pool (diffusion: inverted source images): n distinct latents
    #: come only from one call for all n, so evaluation asks for them at once instead of in fixed chunks.
    latents_from_pool: bool = False

    @property
    def metadata(self) -> dict[str, Any]:
        """What the checkpoint recorded about itself (for an adapted model: source, target text, method...)."""
        return {}

    def configure(self, options: Optional[Mapping[str, Any]]) -> None:
        """Per-run options of this family (`AdaptConfig.diffusion`); a family without any refuses them."""
        if options:
            raise IPLError(f"{', '.join(sorted(options))}: per-run generator options (--diffusion, --source-images) "
                           f"apply to diffusion sources only; drop them for this source")

    def set_code_encoder(self, clip: Any) -> None:
        """The CLIP model whose image embedding is the code (diffusion); codes of other generators need none."""

    def attach_source(self, source: "AdaptableGenerator") -> None:
        """Give an adapted generator its source (diffusion: latents are the source's inversions)."""

    def noise_parameters(self) -> list[nn.Parameter]:
        """Per-layer noise strengths that stage 2 may keep frozen (`--freeze-noise`); none by default."""
        return []

    def set_noise_mode(self, mode: str, generator: Optional[torch.Generator] = None) -> None:
        """How render() and render_layers() draw per-pixel noise: 'const' (the stored noise set), 'random' (fresh
        noise for every call; drawn from `generator` when one is given, so a seeded run repeats it bit for bit,
        else from the global RNG) or 'none'. Ignored by generators without noise inputs."""

    def extra_losses(self, latents: torch.Tensor, images_t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted loss terms of the family's own added to stage 2's total (diffusion: L1 to the source)."""
        return {}

    @property
    def stage2_trainer(self) -> Optional[type]:
        """A Stage2Trainer subclass this generator needs (diffusion's lean mode); None: the standard trainer."""
        return None

    @property
    def num_classes(self) -> int:
        """Number of class labels of a conditional generator (0: unconditional)."""
        return 0

    def sample_class_latents(self, n: int, class_idx: int, generator: Optional[torch.Generator] = None,
                             truncation: float = 1.0) -> torch.Tensor:
        """n latents of one class (conditional generators only)."""
        raise IPLError("--class only applies to conditional StyleGAN2 generators")

    def sample_seeds(self, seeds: list[int], truncation: float = 1.0, class_idx: Optional[int] = None,
                     steps: Optional[int] = None) -> torch.Tensor:
        """Images [len(seeds), 3, H, W], one per seed, each latent drawn from its own seeded torch.Generator."""
        if steps is not None:
            raise IPLError("--steps applies to diffusion models only")
        return self.render(self.seed_latents(seeds, truncation, class_idx))

    def seed_latents(self, seeds: list[int], truncation: float = 1.0,
                     class_idx: Optional[int] = None) -> torch.Tensor:
        """One latent per seed (so batching never changes an image)."""
        if class_idx is not None:
            if self.num_classes == 0:
                raise IPLError("--class was given but the generator is unconditional")
            if not 0 <= class_idx < self.num_classes:
                raise IPLError(f"--class {class_idx} is out of range; this generator has {self.num_classes} "
                               f"classes (0..{self.num_classes - 1})")
        out = []
        for seed in seeds:
            gen = torch.Generator().manual_seed(seed)
            if class_idx is None:
                out.append(self.sample_latents(1, gen, truncation=truncation))
            else:
                out.append(self.sample_class_latents(1, class_idx, gen, truncation=truncation))
        return torch.cat(out)

    def edit_images(self, source: "AdaptableGenerator", images: torch.Tensor) -> torch.Tensor:
        """Real images [N, 3, H, W] in [-1, 1] moved into this (adapted) generator's domain through `source`."""
        raise IPLError("--edit (real images into the target domain) is available for diffusion runs only")

    # --- projection of real images into latents (`ipl invert`, `ipl edit`; StyleGAN2) ---
    #: True when `project` finds latents for real images that `render` (of this generator and of generators adapted
    #: from it) draws; False: `ipl edit` uses the adapted generator's `edit_images` (diffusion) instead.
    can_project: bool = False
    #: Defaults of `ipl invert` this generator brings (keys: "steps", "loss"); a flag given always wins.
    projection_defaults: Mapping[str, Any] = {}

    def project(self, images: torch.Tensor, distance: Any, space: str = "w+", steps: Optional[int] = None,
                seed: int = 0, progress: bool = True) -> torch.Tensor:
        """Latents (batch first) whose renders match real images [N, 3, H, W] in [-1, 1] under `distance`, a
        callable (renders, images) -> per-image distances [N] that can be backpropagated."""
        raise IPLError(f"{type(self).__name__}: this generator family cannot invert real images into latents "
                       f"(`ipl invert` needs a StyleGAN2 source; diffusion runs edit images with `ipl edit RUN`)")

    def pivotal_tune(self, latents: torch.Tensor, images: torch.Tensor, distance: Any, steps: int,
                     progress: bool = True) -> "AdaptableGenerator":
        """A copy of this generator fine-tuned so that `render(latents)` reproduces `images` (pivotal tuning)."""
        raise IPLError(f"{type(self).__name__}: this generator family has no pivotal tuning (--pti-steps)")

    #: Other tools' checkpoint formats `export` writes.
    export_formats: tuple[str, ...] = ()

    def export(self, path: str, fmt: str, metadata: Optional[dict[str, Any]] = None) -> None:
        """Write the generator in another tool's checkpoint format (one of `export_formats`)."""
        known = ", ".join(self.export_formats) or "none"
        raise IPLError(f"{type(self).__name__} cannot be exported to {fmt!r} (formats it can write: {known})")
