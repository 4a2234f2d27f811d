"""Adaptive layer freezing (StyleGAN-NADA): unfreeze the k layers a probe step on W+ moves most."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Optional, Sequence

import torch

from ipl.core.interface import AdaptableGenerator


def select_layers(generator: AdaptableGenerator, clips: Sequence, target_feats: Sequence[torch.Tensor],
                  k: Optional[int], latents: torch.Tensor, lr: float = 0.01,
                  autocast: Callable[[], ContextManager] = nullcontext,
                  allowed: Optional[Sequence[torch.nn.Parameter]] = None,
                  layer_map: str = "reference") -> list[int]:
    """Indices of the k layer groups whose per-layer latents move most in one SGD step toward the target.

    Only groups that hold a parameter (of `allowed`, when given) under `layer_map` compete: a group with nothing
    to train is never picked, so k groups are always k trained ones (or all of them when fewer are left).

    generator:    G_t (its parameters must not require grad here; only the W+ probe is differentiated)
    clips:        FrozenClip models (each with `.weight` and `encode_images`)
    target_feats: per CLIP model, the target text embedding [1, D] (unnormalised is fine)
    k:            how many layers to unfreeze; None, or k >= the groups that compete, means all of those
    latents:      the probe batch (NADA uses 8), as from `generator.sample_latents`
    lr:           the probe's SGD learning rate (NADA: 0.01)
    allowed:      the parameters stage 2 may train (None: every parameter of a group counts)
    layer_map:    which parameters each group trains (`AdaptableGenerator.layer_parameters`)
    """
    from ipl.method.losses import global_clip_loss

    n_layers = generator.num_layers()
    candidates = _candidates(generator, allowed, layer_map)
    if k is None or k >= len(candidates):
        return candidates
    assert len(clips) == len(target_feats), "one target feature per CLIP model"
    with torch.no_grad():
        w_plus = generator.lift(latents).detach()
    assert w_plus.shape[0] == latents.shape[0] and w_plus.shape[1] == n_layers, \
        f"lift() gave {tuple(w_plus.shape)}, expected [N={latents.shape[0]}, {n_layers}, ...]"
    w_plus.requires_grad_(True)
    with autocast():
        images = generator.render_layers(w_plus)
        loss = 0.0
        for clip, feat in zip(clips, target_feats):
            loss = loss + clip.weight * global_clip_loss(clip.encode_images(images), feat)
    (grad,) = torch.autograd.grad(loss, [w_plus])
    # The SGD step moves each entry by lr * grad; rank layers by the mean size of that move.
    moved = (lr * grad.float()).abs().flatten(2).mean(dim=2).mean(dim=0)  # [num_layers]
    return top_layers(moved, candidates, k)


def row_scores(grad: torch.Tensor) -> torch.Tensor:
    """Per W+ row, the mean |gradient| over the batch and the row's entries: [N, num_layers, ...] -> [num_layers].

    The reference probe's score (`select_layers`: the size of the SGD step each row would take), without its
    learning rate, which does not change the ranking.
    """
    return grad.detach().float().abs().flatten(2).mean(dim=2).mean(dim=0)


def top_layers(scores: torch.Tensor, candidates: Sequence[int], k: int) -> list[int]:
    """The k candidate rows with the largest scores, sorted."""
    chosen = torch.topk(scores[list(candidates)], k).indices
    return sorted(candidates[int(i)] for i in chosen)


def rank_layers(generator: AdaptableGenerator, scores: torch.Tensor, k: Optional[int],
                allowed: Optional[Sequence[torch.nn.Parameter]] = None, layer_map: str = "reference") -> list[int]:
    """The k layer groups with the largest `scores` ([num_layers], e.g. `row_scores` of a W+ gradient).

    The 'grad' probe: the scores come from the W+ gradient of stage 2's own training backward, so no extra pass
    through the generator and CLIP is needed. Candidates and k follow `select_layers`.
    """
    n_layers = generator.num_layers()
    candidates = _candidates(generator, allowed, layer_map)
    if k is None or k >= len(candidates):
        return candidates
    assert scores.shape == (n_layers,), f"scores {tuple(scores.shape)}, expected [{n_layers}]"
    return top_layers(scores, candidates, k)


def _candidates(generator: AdaptableGenerator, allowed: Optional[Sequence[torch.nn.Parameter]],
                layer_map: str) -> list[int]:
    """The layer groups that compete for unfreezing: those with something stage 2 may train."""
    return [i for i in range(generator.num_layers()) if _group(generator, i, allowed, layer_map)]


def parameters_of_layers(generator: AdaptableGenerator, layers: Sequence[int],
                         allowed: Sequence[torch.nn.Parameter],
                         layer_map: str = "reference") -> list[torch.nn.Parameter]:
    """Parameters `layers` train under `layer_map`, restricted to `allowed` (trainable ones), without duplicates,
    in order."""
    allowed_ids = {id(p) for p in allowed}
    seen: set[int] = set()
    out = []
    for i in layers:
        for p in generator.layer_parameters(i, layer_map):
            if id(p) in allowed_ids and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _group(generator: AdaptableGenerator, index: int, allowed: Optional[Sequence[torch.nn.Parameter]],
           layer_map: str) -> list[torch.nn.Parameter]:
    """Group `index`'s parameters under `layer_map`, restricted to `allowed` when given."""
    if allowed is None:
        return list(generator.layer_parameters(index, layer_map))
    return parameters_of_layers(generator, [index], allowed, layer_map)
