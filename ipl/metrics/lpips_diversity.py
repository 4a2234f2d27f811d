"""Intra-cluster LPIPS diversity (Ojha et al. 2021, as used by IPL), with the `lpips` package.

Protocol: K centres (10 given images, or the first 10 samples); each sample joins the cluster of the
centre nearest to it by LPIPS; the score is the mean pairwise LPIPS inside each cluster, averaged over
the clusters that have at least two members. Higher means more diverse; 0 means every cluster collapsed
to copies of one image.

All pair distances come from one backbone pass per image block: LPIPS is a weighted squared distance
between unit-normalised backbone features, so a block of pairs is a Gram matrix of the package's own
features and linear weights (checked against `lpips.LPIPS.forward` in the tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import lpips
import torch
import torch.nn.functional as F

# The loader lives in ipl/core (ipl invert uses it too); re-exported here for ipl.metrics' users.
from ipl.core.lpips_model import BACKBONES, backbone_weights, load_lpips  # noqa: F401

# ----------------------------------------------------------------------------------------------------------
# Pairwise LPIPS from features.

def fit_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images in [-1, 1] resized (shorter side, antialiased) and centre-cropped to size x size."""
    assert images.ndim == 4 and images.shape[1] == 3, f"expected [N, 3, H, W], got {tuple(images.shape)}"
    x = images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images.float()
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, :, top:top + size, left:left + size]


@torch.no_grad()
def lpips_features(model: lpips.LPIPS, images: torch.Tensor) -> list[torch.Tensor]:
    """The package's unit-normalised backbone features of images in [-1, 1], one tensor per layer."""
    assert model.lpips and not model.spatial and model.version == "0.1", "needs LPIPS v0.1 with linear layers"
    device = model.scaling_layer.shift.device
    x = images.to(device).float()
    outs = model.net.forward(model.scaling_layer(x))
    return [lpips.normalize_tensor(o) for o in outs]


@torch.no_grad()
def lpips_matrix(model: lpips.LPIPS, feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]) -> torch.Tensor:
    """LPIPS between every a and every b, [Na, Nb] float64, from `lpips_features` outputs."""
    total = None
    for lin, fa, fb in zip(model.lins, feats_a, feats_b):
        assert fa.shape[1:] == fb.shape[1:], f"feature maps differ: {tuple(fa.shape)} vs {tuple(fb.shape)}"
        conv = [m for m in lin.modules() if isinstance(m, torch.nn.Conv2d)][0]
        w = conv.weight.reshape(1, -1, 1, 1).double()             # [1, C, 1, 1]
        hw = fa.shape[2] * fa.shape[3]
        a, b = fa.double(), fb.double()
        wa = (w * a).flatten(1)                                    # [Na, C*H*W]
        sq_a = (wa * a.flatten(1)).sum(1)                          # sum_c w_c |a_c|^2 over positions
        sq_b = ((w * b).flatten(1) * b.flatten(1)).sum(1)
        # sum_p sum_c w_c (a - b)^2 = |a|_w^2 + |b|_w^2 - 2 <a, b>_w, averaged over positions.
        d = (sq_a[:, None] + sq_b[None, :] - 2 * wa @ b.flatten(1).T) / hw
        total = d if total is None else total + d
    return total.clamp_min(0)


@dataclass
class IntraLpipsResult:
    """Intra-cluster LPIPS and how it was obtained."""

    value: float                                  # mean over clusters with >= 2 members
    cluster_sizes: list[int] = field(default_factory=list)
    clusters_used: int = 0                        # clusters with at least one pair
    pairs: int = 0                                # pairs evaluated in all


@torch.no_grad()
def intra_cluster_lpips(model: lpips.LPIPS, images: torch.Tensor, centres: torch.Tensor,
                        batch: int = 32) -> IntraLpipsResult:
    """Intra-cluster LPIPS of `images` [N, 3, S, S] around `centres` [K, 3, S, S] (both in [-1, 1] or uint8).

    Images and centres must already have the same size (see `fit_images`).
    """
    assert images.shape[1:] == centres.shape[1:], f"images {tuple(images.shape)} vs centres {tuple(centres.shape)}"
    assert len(centres) >= 1 and batch >= 1

    def prep(x: torch.Tensor) -> torch.Tensor:
        return x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()

    centre_feats = lpips_features(model, prep(centres))
    assign = []
    for i in range(0, len(images), batch):
        d = lpips_matrix(model, lpips_features(model, prep(images[i:i + batch])), centre_feats)
        assign.append(d.argmin(dim=1).cpu())
    assign = torch.cat(assign) if assign else torch.zeros(0, dtype=torch.long)

    sizes, means, pairs = [], [], 0
    for k in range(len(centres)):
        members = (assign == k).nonzero().flatten()
        sizes.append(int(len(members)))
        if len(members) < 2:
            continue
        total, count = 0.0, 0
        blocks = [members[i:i + batch] for i in range(0, len(members), batch)]
        for bi, rows in enumerate(blocks):
            fr = lpips_features(model, prep(images[rows]))
            for bj in range(bi, len(blocks)):
                fc = fr if bj == bi else lpips_features(model, prep(images[blocks[bj]]))
                d = lpips_matrix(model, fr, fc)
                if bj == bi:  # each unordered pair once, no self-pairs
                    d = d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)]
                total += float(d.sum())
                count += d.numel()
        means.append(total / count)
        pairs += count
    value = float(sum(means) / len(means)) if means else float("nan")
    return IntraLpipsResult(value=value, cluster_sizes=sizes, clusters_used=len(means), pairs=pairs)
