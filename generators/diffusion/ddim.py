"""Deterministic DDIM (eta = 0) as pure functions over tensors: sampling, inversion to t0, generation from t0.

A *model function* is `eps_fn(x [N,C,H,W], t: int) -> eps [N,C,H,W]` (see `EpsModel`). A *path* is an
increasing list of integer timesteps; `alphas_cumprod[t]` gives the signal level of each one and the clean
image sits at alpha_bar = 1 below the first entry. Nothing here knows about UNets or schedulers beyond the
`alphas_cumprod` table, so every step is testable with toy model functions.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.utils.checkpoint

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


def inversion_path(t0: int, steps: int) -> list[int]:
    """`steps` increasing integer timesteps ending at t0, evenly spaced from t0/steps (DiffusionCLIP grid)."""
    if steps < 1:
        raise ValueError(f"need at least one DDIM step, got {steps}")
    if not 0 < t0:
        raise ValueError(f"t0 must be positive, got {t0}")
    path = sorted({max(0, round(t0 * (k + 1) / steps)) for k in range(steps)})
    return path


def _level(alphas_cumprod: torch.Tensor, t: Optional[int], like: torch.Tensor) -> torch.Tensor:
    """alpha_bar at timestep t as a scalar tensor on `like`'s device; t=None is the clean image (1)."""
    if t is None:
        return torch.ones((), dtype=like.dtype, device=like.device)
    return alphas_cumprod[t].to(device=like.device, dtype=like.dtype)


def ddim_move(x: torch.Tensor, eps: torch.Tensor, ab_from: torch.Tensor, ab_to: torch.Tensor,
              clip_x0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic DDIM move from signal level ab_from to ab_to; returns (x_to, predicted x0)."""
    assert x.shape == eps.shape, (x.shape, eps.shape)
    x0 = (x - (1 - ab_from).sqrt() * eps) / ab_from.sqrt()
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    x_to = ab_to.sqrt() * x0 + (1 - ab_to).sqrt() * eps
    return x_to, x0


def _call(eps_fn: EpsFn, x: torch.Tensor, t: int, checkpoint: bool) -> torch.Tensor:
    # Checkpointing a whole model call keeps only its input for backward: a chain of k steps then stores
    # k images instead of k sets of UNet activations.
    if checkpoint and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(eps_fn, x, t, use_reentrant=False)
    return eps_fn(x, t)


@torch.no_grad()
def invert(eps_fn: EpsFn, x0: torch.Tensor, alphas_cumprod: torch.Tensor, path: Sequence[int]) -> torch.Tensor:
    """Deterministic DDIM inversion of clean images x0 up to the last timestep of `path`."""
    x = x0
    levels = [None] + list(path)
    for t_from, t_to in zip(levels[:-1], levels[1:]):
        # The noise is estimated at the current (less noisy) point: the usual first-order inversion.
        eps = eps_fn(x, 0 if t_from is None else t_from)
        x, _ = ddim_move(x, eps, _level(alphas_cumprod, t_from, x), _level(alphas_cumprod, t_to, x))
    return x


def generate(eps_fn: EpsFn, x_t: torch.Tensor, alphas_cumprod: torch.Tensor, path: Sequence[int],
             clip_x0: bool = False, checkpoint: bool = False,
             on_step: Optional[Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """Deterministic DDIM generation from x_t at the last timestep of `path` down to a clean image.

    on_step(k, x_next, x0_pred) is called after step k and may return a replacement for x_next (the
    memory-lean trainer returns it detached after stepping its optimiser on a loss of x0_pred).
    """
    x = x_t
    levels = [None] + list(path)
    for k, (t_from, t_to) in enumerate(zip(reversed(levels[1:]), reversed(levels[:-1]))):
        eps = _call(eps_fn, x, t_from, checkpoint)
        x, x0 = ddim_move(x, eps, _level(alphas_cumprod, t_from, x), _level(alphas_cumprod, t_to, x), clip_x0)
        if on_step is not None:
            replaced = on_step(k, x, x0)
            if replaced is not None:
                x = replaced
    return x


@torch.no_grad()
def sample(eps_fn: EpsFn, noise: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: Sequence[int],
           clip_x0: bool = True) -> torch.Tensor:
    """DDIM sampling (eta 0) from pure noise along decreasing `timesteps` (a scheduler's set_timesteps)."""
    path = sorted(int(t) for t in timesteps)
    return generate(eps_fn, noise, alphas_cumprod, path, clip_x0=clip_x0)


def model_output_to_eps(out: torch.Tensor, x: torch.Tensor, ab: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Convert a UNet output of the given prediction type to the noise estimate eps."""
    if prediction_type == "epsilon":
        return out
    if prediction_type == "sample":
        return (x - ab.sqrt() * out) / (1 - ab).sqrt()
    if prediction_type == "v_prediction":
        return ab.sqrt() * out + (1 - ab).sqrt() * x
    raise ValueError(f"unknown prediction_type {prediction_type!r} (epsilon, sample or v_prediction)")
