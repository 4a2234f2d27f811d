"""A tiny fake AdaptableGenerator (per-layer modulated convs) for fast engine tests; no tests live here."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ipl.core.interface import AdaptableGenerator


class FakeLayeredGenerator(AdaptableGenerator):
    """const -> L modulated 3x3 convs (W+ row i modulates conv i) -> 1x1 to RGB (part of the last layer)."""

    def __init__(self, w_dim: int = 8, n_layers: int = 4, res: int = 16, ch: int = 8, seed: int = 0,
                 layer_gain: Optional[list[float]] = None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.code_dim, self.resolution, self.n_layers = w_dim, res, n_layers
        self.mapping = nn.Linear(w_dim, w_dim)
        self.const = nn.Parameter(torch.randn(1, ch, res, res, generator=g))
        self.mods = nn.ModuleList(nn.Linear(w_dim, ch) for _ in range(n_layers))
        self.convs = nn.ModuleList(nn.Conv2d(ch, ch, 3, padding=1) for _ in range(n_layers))
        self.to_rgb = nn.Conv2d(ch, 3, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            for i, m in enumerate(self.mods):  # per-layer sensitivity to its W+ row
                m.weight.mul_(1.0 if layer_gain is None else layer_gain[i])

    def sample_latents(self, n, generator=None, truncation=1.0):
        z = torch.randn(n, self.code_dim, generator=generator, device=generator.device if generator else None)
        w = self.mapping(z.to(self.const.device))
        return w * truncation

    def codes(self, latents):
        return latents

    def num_layers(self):
        return self.n_layers

    def lift(self, latents):
        return latents.unsqueeze(1).repeat(1, self.n_layers, 1)

    def render_layers(self, wp):
        x = self.const.expand(wp.shape[0], -1, -1, -1)
        for i, (mod, conv) in enumerate(zip(self.mods, self.convs)):
            x = F.leaky_relu(conv(x * (1 + mod(wp[:, i]))[:, :, None, None]), 0.2)
        return self.to_rgb(x)

    def render(self, latents):
        return self.render_layers(self.lift(latents))

    def layer_parameters(self, index, layer_map="reference"):  # one meaning of a group: the map is ignored
        ps = list(self.mods[index].parameters()) + list(self.convs[index].parameters())
        if index == self.n_layers - 1:
            ps += list(self.to_rgb.parameters())
        return ps

    def trainable_parameters(self):
        return [p for i in range(self.n_layers) for p in self.layer_parameters(i)]

    def save(self, path: str, metadata: Optional[dict[str, Any]] = None) -> None:
        from ipl.core.atomic import torch_save

        torch_save({"state": self.state_dict(), "metadata": metadata}, path)
