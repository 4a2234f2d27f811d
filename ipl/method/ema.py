"""Exponential moving average of the adapted generator's weights (what a run saves)."""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Keeps `shadow` = decay * shadow + (1 - decay) * model, parameter by parameter.

    Uses lerp so a parameter that never changes stays bit-identical in the shadow
    (frozen layers of the saved generator are exactly the source's). Decay 0 copies the model exactly.
    """

    def __init__(self, model: nn.Module, shadow: nn.Module, decay: float = 0.99):
        self.model = model      # the network being trained (G_t)
        self.shadow = shadow    # a structural copy of it holding the average (starts equal)
        self.decay = float(decay)
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step after an optimiser step; buffers are copied as they are."""
        w = 1.0 - self.decay
        for ps, pm in zip(self.shadow.parameters(), self.model.parameters()):
            if self.decay == 0:  # no EMA (NADA's recipe): the shadow is the model itself, bit for bit
                ps.copy_(pm.detach())
            else:
                ps.lerp_(pm.detach().to(ps.dtype), w)
        for bs, bm in zip(self.shadow.buffers(), self.model.buffers()):
            bs.copy_(bm)

    def state_dict(self) -> dict:
        """Shadow weights and decay (for resumable checkpoints)."""
        return {"decay": self.decay, "shadow": self.shadow.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict`."""
        self.decay = float(state["decay"])
        self.shadow.load_state_dict(state["shadow"])
