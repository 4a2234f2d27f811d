"""The one small interface through which the trainer talks to any image generator.

`ipl/` never imports a StyleGAN- or diffusion-specific class. A generator family plugs in by
subclassing `AdaptableGenerator` (see generators/stylegan2/adapter.py, generators/diffusion/...).

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
from typing import Any, Optional

import torch
from torch import nn


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

    def layer_parameters(self, index: int) -> list[nn.Parameter]:
        """Parameters driven by layer group `index`."""
        raise NotImplementedError(f"{type(self).__name__} has no layer groups")

    @abstractmethod
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter stage 2 may train when no layer freezing is used."""

    def copy(self) -> "AdaptableGenerator":
        """A deep copy (G_t starts as a copy of G_s)."""
        return copy.deepcopy(self)

    @abstractmethod
    def save(self, path: str, metadata: Optional[dict[str, Any]] = None) -> None:
        """Write the generator in the project's own format (atomically)."""
