"""Label-preserving augmentations of toy images used when training the toy CLIP and the judge.

Builder tooling (build_toy_clip.py, build_toy_judge.py; neutral_chroma also in analysis.py), not installed: the
augmented views of a run's stage 2 are ipl.method.augment.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ipl.generators.toy.render import hsv_to_rgb


def augment(x: torch.Tensor, generator: Optional[torch.Generator] = None, strength: float = 1.0
            ) -> torch.Tensor:
    """Random small affine (shift, scale, rotation), flip, brightness/contrast, mild blur and noise.

    x: [N, 3, H, W] in [-1, 1]. Mild enough that no style turns into another or into `degraded`.
    """
    n, c, h, w = x.shape
    u = torch.rand(n, 8, generator=generator).to(x.device)
    s = strength
    scale = 1 + s * 0.15 * (u[:, 0] * 2 - 1)
    rot = s * math.radians(12) * (u[:, 1] * 2 - 1)
    tx = s * 0.12 * (u[:, 2] * 2 - 1)
    ty = s * 0.12 * (u[:, 3] * 2 - 1)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(rot) / scale, torch.sin(rot) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, (n, c, h, w), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Brightness / contrast, small.
    b = s * 0.06 * (u[:, 5] * 2 - 1)
    k = 1 + s * 0.1 * (u[:, 6] * 2 - 1)
    x = x * k[:, None, None, None] + b[:, None, None, None]
    # Mild blur for a third of the images (generator outputs are slightly soft).
    blur = u[:, 7] < 0.33
    if blur.any():
        kern = torch.tensor([1.0, 2.0, 1.0], device=x.device)
        kern = (kern[:, None] * kern[None, :]) / 16
        xb = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"),
                      kern.expand(c, 1, 3, 3).contiguous(), groups=c)
        x = x.clone()
        x[blur] = xb
    x = x + s * 0.03 * torch.randn(x.shape, generator=generator).to(x.device)
    return x.clamp(-1, 1)


def cheap_augment(x: torch.Tensor, generator: Optional[torch.Generator] = None, max_shift: int = 6,
                  photometric: float = 1.0) -> torch.Tensor:
    """Fast variant: integer shift (replicated border), horizontal flip, small brightness/contrast, noise.

    photometric scales the brightness/contrast jitter (1: +-0.06 / +-10%; 0: none).
    """
    n, c, h, w = x.shape
    u = torch.rand(n, 4, generator=generator)
    sx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    sy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    xp = F.pad(x, (max_shift,) * 4, mode="replicate")
    ar = torch.arange(h)
    rows = (sy[:, None] + ar[None, :])                                    # [N, H]
    cols = (sx[:, None] + ar[None, :])                                    # [N, W]
    flip = u[:, 0] < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bidx = torch.arange(n)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    b = photometric * 0.06 * (u[:, 1] * 2 - 1)
    k = 1 + photometric * 0.1 * (u[:, 2] * 2 - 1)
    out = out * k[:, None, None, None] + b[:, None, None, None]
    out = out + 0.03 * torch.randn(out.shape, generator=generator)
    return out.clamp(-1, 1)


def neutral_chroma(hue: torch.Tensor) -> torch.Tensor:
    """[N] hue degrees -> [N, 3] RGB offsets of zero channel mean (luminance-neutral), max |channel| = 1."""
    chroma = hsv_to_rgb(hue, 1.0, 1.0)
    chroma = chroma - chroma.mean(1, keepdim=True)
    return chroma / chroma.abs().amax(1, keepdim=True)


def tint(x: torch.Tensor, amount: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A random colour cast of luminance-neutral chroma, up to `amount` per channel ([0, 1] units), per image.

    x: [N, 3, H, W] in [-1, 1]. A white-balance change: no toy domain is defined by it (a strong cast is
    `degraded`), so a CLIP trained with it cannot read a faint tint as a style.
    """
    n = x.shape[0]
    u = torch.rand(n, 2, generator=generator).to(x.device)
    chroma = neutral_chroma(u[:, 0] * 360)
    return (x + 2 * amount * u[:, 1:2, None, None] * chroma[:, :, None, None]).clamp(-1, 1)
