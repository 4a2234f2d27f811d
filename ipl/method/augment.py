"""Augmented views of image pairs for the CLIP losses: a defence against a weak CLIP being fooled."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def paired_views(images_a: torch.Tensor, images_b: torch.Tensor, n_views: int,
                 generator: Optional[torch.Generator] = None, min_scale: float = 0.7
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """n_views random crops (+ horizontal flips) of each pair, the same crop for a and b: [n_views * N, 3, H, W].

    Views are ordered view-major (view 0 of every image, then view 1, ...), so per-image tensors
    of shape [N, ...] line up after `.repeat(n_views, 1)`. Differentiable w.r.t. both inputs.
    """
    assert images_a.shape == images_b.shape and images_a.ndim == 4, (tuple(images_a.shape), tuple(images_b.shape))
    assert n_views >= 1 and 0 < min_scale <= 1, (n_views, min_scale)
    n, _, h, w = images_a.shape
    views_a, views_b = [], []
    for _ in range(n_views):
        # One square crop side and offset per view, drawn on the CPU generator so resume stays exact.
        r = torch.rand(4, generator=generator)
        side = max(1, int(round(min(h, w) * (min_scale + (1 - min_scale) * float(r[0])))))
        top = int(float(r[1]) * (h - side + 1)) if h > side else 0
        left = int(float(r[2]) * (w - side + 1)) if w > side else 0
        flip = bool(r[3] < 0.5)
        pair = []
        for x in (images_a, images_b):
            v = x[:, :, top:top + side, left:left + side]
            if (side, side) != (h, w):
                v = F.interpolate(v, size=(h, w), mode="bilinear", align_corners=False)
            pair.append(v.flip(3) if flip else v)
        views_a.append(pair[0])
        views_b.append(pair[1])
    return torch.cat(views_a), torch.cat(views_b)
