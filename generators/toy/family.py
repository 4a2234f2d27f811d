"""The toy world as a family: the shipped toy StyleGAN2 (`--source toy`), offline on a CPU."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch

from ipl.core.config import default_layers
from ipl.core.family import GeneratorFamily, SourceEntry
from ipl.core.interface import AdaptableGenerator
from ipl.generators.stylegan2.family import StyleGAN2Family

from .source import GENERATOR_PATH

TOY = SourceEntry(
    name="toy", family="toy", url=None, format="ipl", resolution=64, source_text="a solid shape",
    layers=default_layers(64), truncation=1.0, sample_truncation=1.0, clip=("toy",),
    shipped="toy/generator.safetensors", filename="generator.safetensors",
    description="tiny StyleGAN2 of solid shapes on a light background (shipped, offline)",
    # Two CPU cores: ~3 s per stage-2 step at 64 px, so fewer and cheaper steps than the paper.
    # The toy defaults were chosen on `dark` alone, by the toy CLIP's own verdict and the grids
    # (docs/toy_world.md, "IPL vs NADA"), and benchmarked with a probe every step. The length term asks for the
    # amount of change a direction-only loss does not; length_ratio is the shipped toy CLIP's, measured by
    # scripts/toy/analysis.py delta_ratio, recorded in assets/toy/clip_build.json.
    # freeze_noise: trained noise strengths drew speckle that a small CLIP rewards. augment_views:
    # paired crops darkened the background further on `dark` (0.57 -> 0.45 mean lightness), and so did
    # 600 iterations instead of 300 (0.45 -> 0.33; the adapt then takes ~77 s on 2 idle cores).
    # noise "fixed": every one of these defaults (freeze_noise, augment, 600 iterations) was chosen, and every toy
    # number measured, with the one stored noise set; fresh noise per render (the references') would change them.
    run_defaults={"iters_prompt": 100, "batch_prompt": 16, "iters": 600, "layer_batch": 4,
                  "layer_every": 1, "sample_every": 50, "length_weight": 1.0,
                  "length_ratio": 0.6909, "freeze_noise": True, "augment_views": 4, "noise": "fixed"},
)

# `ipl invert` / `ipl edit` defaults for the toy source (a flag given wins). The toy world is offline, so the
# distance is MSE (LPIPS needs torchvision's ImageNet backbone); 200 steps (NVIDIA: 1000) for the CPU: ~4 s per
# 64 px image on one core. Chosen for cost, not on the judge's numbers (docs/invert.md).
PROJECTION_DEFAULTS = {"loss": "mse", "steps": 200}


class ToyFamily(GeneratorFamily):
    """The shipped toy StyleGAN2 (an ipl-format StyleGAN2 file read by the StyleGAN2 family's loader)."""

    name = "toy"

    def entries(self) -> list[SourceEntry]:
        return [TOY]

    def claims(self, path: Path) -> bool:
        """The shipped toy generator file itself (so a path to it gets the toy run defaults too)."""
        return path.is_file() and GENERATOR_PATH.is_file() and path.resolve() == GENERATOR_PATH.resolve()

    def load(self, path: Path, device: Union[str, torch.device] = "cpu") -> AdaptableGenerator:
        generator = StyleGAN2Family().load(path, device=device)
        generator.projection_defaults = dict(PROJECTION_DEFAULTS)
        return generator

    def run_defaults(self, path: Path) -> dict[str, Any]:
        return dict(TOY.run_defaults)
