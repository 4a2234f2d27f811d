"""Sampling and editing with diffusion models: new images from seeded noise, or real images moved into the target
domain (DiffusionAdapter.sample_seeds / edit_images, behind `ipl sample` and `ipl sample RUN --edit DIR`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    from ipl.generators.diffusion.adapter import DiffusionAdapter


def seed_noise(seeds: list[int], resolution: int) -> torch.Tensor:
    """One noise image [1,3,R,R] per seed, each drawn from its own seed (same image whatever the batch)."""
    return torch.cat([torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(s))
                      for s in seeds])


@torch.no_grad()
def sample_from_noise(model: DiffusionAdapter, noise: torch.Tensor, steps: Optional[int] = None,
                      batch: int = 8) -> torch.Tensor:
    """DDIM samples (eta 0) of `model` from the given noise, on CPU at the end."""
    from ipl.generators.diffusion import ddim

    ts = model.sampling_timesteps(steps)
    clip = bool(model.scheduler_config.get("clip_sample", True))
    out = [ddim.sample(model.eps, x.to(model.device), model.alphas_cumprod, ts, clip_x0=clip).cpu()
           for x in noise.split(batch)]
    return torch.cat(out)


@torch.no_grad()
def edit_images(source: DiffusionAdapter, adapted: DiffusionAdapter, images: torch.Tensor,
                batch: int = 8) -> torch.Tensor:
    """Invert images with the source model to t0, regenerate them with the adapted one (DiffusionCLIP edit)."""
    out = []
    for x in images.split(batch):
        x_t0 = source.invert(x.to(source.device))
        out.append(adapted.generate(x_t0.to(adapted.device)).cpu())
    return torch.cat(out)
