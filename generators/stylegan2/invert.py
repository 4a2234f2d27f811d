"""Real images into a StyleGAN2 generator: the W / W+ projector (NVIDIA's schedule, batched) and pivotal tuning.

Projector (stylegan2-ada-pytorch `projector.py`, facts only): start at the W mean of 10,000 mapped z, Adam (betas
0.9, 0.999) at lr 0.1 with a cosine ramp-down over the last quarter and a linear ramp-up over the first 5 %, Gaussian
noise of 0.05 x the W spread added to w, fading out (squared) over the first 75 % of the steps, the per-layer noise
maps optimised alongside w with an autocorrelation penalty (weight 1e5, over the pyramid down to 8 px) and
renormalised to zero mean and unit variance after every step. The final renders use the generator's stored noise
(as NVIDIA's saved projection does); the optimised noise maps only help the search.

Ours (docs/fidelity.md): many images at once (each with its own w and noise maps; the loss is a sum over images, so
an image's gradient does not depend on its batch mates), the distance is the caller's (LPIPS or MSE), "w+" refines
the W result per layer, and a conditional generator starts from each class's W mean (below).

Pivotal tuning (PTI, Roich et al. 2022; facts from its configs): the whole generator fine-tuned with Adam at lr
3e-4 on L2 + LPIPS (weights 1 and 1) of the pivot latents' renders, with the stored noise; PTI's 350 steps become
`--pti-steps`, one tuned copy per batch (PTI's multi-image coach), no locality regulariser, no early stop.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ipl.core.errors import IPLError

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# NVIDIA's projector defaults.
STEPS = 1000
W_AVG_SAMPLES = 10_000
W_AVG_SEED = 123
LR = 0.1
LR_RAMPDOWN = 0.25
LR_RAMPUP = 0.05
W_NOISE_FACTOR = 0.05
W_NOISE_RAMP = 0.75
NOISE_WEIGHT = 1e5
# W then W+ ("w+"): this share of the steps optimises one w per image, the rest refine one w per layer.
W_SHARE = 0.5
# Conditional generators: every class's W mean is a start; after this share of the W steps each image keeps the
# start with the lowest distance. The label is part of w (the mapping embeds it), so a class cannot be optimised
# directly, and a w between two class clusters renders no clean shape: the search must start in the right cluster.
CLASS_PROBE = 0.25
# PTI's optimiser.
PTI_LR = 3e-4
SPACES = ("w", "w+")


@torch.no_grad()
def w_stats(G: torch.nn.Module, samples: int = W_AVG_SAMPLES, seed: int = W_AVG_SEED
            ) -> tuple[torch.Tensor, float]:
    """Starting points [K, w_dim] (the W mean; one per class for a conditional G) and the W spread (a scalar:
    root mean squared distance of mapped w to their start), from `samples` z drawn with `seed`."""
    device = G.w_avg.device
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([samples, G.z_dim], generator=gen).to(device)
    if G.c_dim == 0:
        w = torch.cat([G.mapping(zc, None)[:, 0] for zc in z.split(2048)])
        means = w.mean(0, keepdim=True)
        spread = (w - means).square().sum() / samples
        return means, float(spread.sqrt())
    labels = torch.arange(samples) % G.c_dim
    c = F.one_hot(labels, G.c_dim).float().to(device)
    w = torch.cat([G.mapping(zc, cc)[:, 0] for zc, cc in zip(z.split(2048), c.split(2048))])
    means = torch.stack([w[labels == k].mean(0) for k in range(G.c_dim)])
    spread = (w - means[labels.to(device)]).square().sum() / samples
    return means, float(spread.sqrt())


def lr_at(t: float, lr: float = LR) -> float:
    """The projector's learning rate at progress t in [0, 1): linear ramp-up, cosine ramp-down."""
    ramp = min(1.0, (1.0 - t) / LR_RAMPDOWN)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    return lr * ramp * min(1.0, t / LR_RAMPUP)


def noise_penalty(noise: list[torch.Tensor]) -> torch.Tensor:
    """Per-image autocorrelation penalty [N] of noise maps [N, 1, R, R], over the pyramid down to 8 px."""
    total = 0.0
    for v in noise:
        x = v
        while True:
            total = total + (x * torch.roll(x, 1, dims=3)).mean((1, 2, 3)).square()
            total = total + (x * torch.roll(x, 1, dims=2)).mean((1, 2, 3)).square()
            if x.shape[2] <= 8:
                break
            x = F.avg_pool2d(x, 2)
    return total


@torch.no_grad()
def _normalise(noise: list[torch.Tensor]) -> None:
    for v in noise:
        v -= v.mean((1, 2, 3), keepdim=True)
        v *= v.square().mean((1, 2, 3), keepdim=True).rsqrt()


class _Search:
    """One optimisation state: the latents, the noise maps and Adam's moments for each of M candidates."""

    def __init__(self, w: torch.Tensor, noise: list[torch.Tensor]):
        self.w = w.detach().clone().requires_grad_(True)
        self.noise = [n.detach().clone().requires_grad_(True) for n in noise]
        self.opt = torch.optim.Adam([self.w, *self.noise], betas=(0.9, 0.999), lr=LR)

    def select(self, idx: torch.Tensor) -> "_Search":
        """The candidates `idx`, with their Adam state (so the search continues as if never cut)."""
        new = _Search(self.w[idx], [n[idx] for n in self.noise])
        for old_p, new_p in zip([self.w, *self.noise], [new.w, *new.noise]):
            state = self.opt.state.get(old_p)
            if state:
                new.opt.state[new_p] = {k: (v[idx].clone() if v.ndim > 0 else v.clone()) for k, v in state.items()}
        return new


def _run_phase(G: torch.nn.Module, search: _Search, targets: torch.Tensor, distance: Distance, steps: int,
               w_noise_scale: float, gen: torch.Generator, plus: bool, bar, stop_at: Optional[int] = None,
               start: int = 0) -> torch.Tensor:
    """Steps [start, stop_at) of one projector schedule of `steps` steps; returns the last per-candidate distances."""
    num_ws = G.synthesis.num_ws
    last = torch.zeros(len(targets))
    for step in range(start, steps if stop_at is None else stop_at):
        t = step / steps
        for group in search.opt.param_groups:
            group["lr"] = lr_at(t)
        scale = w_noise_scale * max(0.0, 1.0 - t / W_NOISE_RAMP) ** 2
        jitter = torch.randn(search.w.shape, generator=gen).to(search.w.device) * scale
        w = search.w + jitter
        ws = w if plus else w.unsqueeze(1).repeat([1, num_ws, 1])
        images = G.synthesis(ws, noise=search.noise)
        dist = distance(images, targets)
        loss = dist.sum() + NOISE_WEIGHT * noise_penalty(search.noise).sum()
        search.opt.zero_grad(set_to_none=True)
        loss.backward()
        search.opt.step()
        _normalise(search.noise)
        last = dist.detach().float().cpu()
        if bar is not None:
            bar.update(1)
    return last


def project(G: torch.nn.Module, images: torch.Tensor, distance: Distance, space: str = "w+",
            steps: int = STEPS, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """W+ latents [N, num_ws, w_dim] of StyleGAN2 `G` for images [N, 3, R, R] in [-1, 1] (rows equal for "w")."""
    if space not in SPACES:
        raise IPLError(f"--space {space!r}: choose one of {', '.join(SPACES)}")
    if steps < 1:
        raise IPLError(f"--steps must be at least 1, got {steps}")
    res = G.img_resolution
    if images.ndim != 4 or tuple(images.shape[1:]) != (G.img_channels, res, res):
        raise IPLError(f"images to project must be [N, {G.img_channels}, {res}, {res}] (the generator's "
                       f"resolution), got {tuple(images.shape)}")
    from tqdm import tqdm

    device = G.w_avg.device
    targets = images.to(device, torch.float32)
    n = len(targets)
    starts, spread = w_stats(G)
    gen = torch.Generator().manual_seed(seed)
    w_steps = steps if space == "w" else max(1, round(steps * W_SHARE))
    plus_steps = steps - w_steps
    k = len(starts)
    probe = min(w_steps, max(1, round(w_steps * CLASS_PROBE))) if k > 1 else 0
    shapes = G.noise_shapes()
    total = w_steps + plus_steps  # the probe's steps count once (they are the first W steps of the kept start)
    was_training = G.training
    G.eval()
    params = list(G.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        with tqdm(total=total, desc="projecting", unit="step", disable=not progress, leave=False) as bar:
            # Every candidate start of every image: image i, start j is row i * k + j.
            w0 = starts.repeat([n, 1])
            noise0 = [torch.randn([n * k, 1, s[2], s[3]], generator=gen).to(device) for s in shapes]
            search = _Search(w0, noise0)
            rep = targets.repeat_interleave(k, dim=0)
            if probe:
                dist = _run_phase(G, search, rep, distance, w_steps, spread * W_NOISE_FACTOR, gen, False, None,
                                  stop_at=probe)
                best = dist.view(n, k).argmin(1)
                search = search.select(torch.arange(n) * k + best)
                bar.update(probe)
            _run_phase(G, search, targets, distance, w_steps, spread * W_NOISE_FACTOR, gen, False, bar,
                       start=probe)
            ws = search.w.detach().unsqueeze(1).repeat([1, G.synthesis.num_ws, 1])
            if plus_steps:
                # The W result per layer, refined on the same schedule; no w jitter (the start is already found).
                plus = _Search(ws, [v.detach() for v in search.noise])
                _run_phase(G, plus, targets, distance, plus_steps, 0.0, gen, True, bar)
                ws = plus.w.detach()
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        G.train(was_training)
    return ws


def pivotal_tune(G: torch.nn.Module, latents: torch.Tensor, images: torch.Tensor, distance: Distance, steps: int,
                 progress: bool = True) -> None:
    """Fine-tune `G` in place (every parameter, as PTI) so its stored-noise renders of `latents` match `images`."""
    from tqdm import tqdm

    if steps < 1:
        raise IPLError(f"--pti-steps must be at least 1, got {steps}")
    device = G.w_avg.device
    ws = latents.to(device, torch.float32)
    targets = images.to(device, torch.float32)
    params = [p for p in G.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=PTI_LR)
    for _ in tqdm(range(steps), desc="pivotal tuning", unit="step", disable=not progress, leave=False):
        renders = G.synthesis(ws, noise_mode="const")
        loss = distance(renders, targets).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for p in params:
        p.requires_grad_(False)
