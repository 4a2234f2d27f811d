"""Per-pixel noise of the training renders (`--noise random|fixed`, AdaptConfig.noise)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from ipl.core.interface import AdaptableGenerator


@contextmanager
def training_noise(generators: Sequence[AdaptableGenerator], mode: str, rng: torch.Generator) -> Iterator[None]:
    """Within the block, every render of `generators` draws fresh per-layer noise from `rng` (mode "random").

    As the NADA and IPL references (randomize_noise=True in both generator calls), each call draws its own,
    independent noise: G_s and G_t see different noise for the same latents, and so does the layer probe. `rng`
    is a seeded generator the run owns (its state goes into the resumable checkpoint), never the global RNG, so a
    run repeats bit for bit. Mode "fixed" changes nothing: every pass renders with the stored noise set. On exit
    the generators render with the stored set again ('const': sample grids stay deterministic). Generators
    without noise inputs ignore all of it (AdaptableGenerator.set_noise_mode).
    """
    if mode == "fixed":
        yield
        return
    if mode != "random":
        raise ValueError(f"noise must be 'random' or 'fixed', got {mode!r}")
    for g in generators:
        g.set_noise_mode("random", rng)
    try:
        yield
    finally:
        for g in generators:
            g.set_noise_mode("const")
