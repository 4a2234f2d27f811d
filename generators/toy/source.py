"""The toy source generator's intended scene for each (z, c): the smooth map it is trained to follow.

The shape is the class input c (one-hot, c_dim = 3); hue, position, size and background lightness are
smooth functions of the direction of z (position within a central band) (the mapping network normalises z first, so only its direction
can matter). No discrete attribute depends on z (DESIGN.md section 9).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ipl.core.assets import shipped

from .render import SceneParams, params_from_unit

GENERATOR_PATH = shipped("toy/generator.safetensors")
Z_DIM = 16
W_DIM = 128
C_DIM = 3
# Widths per resolution: small enough to train on two CPU cores, wide enough for sharp 64 px edges.
POSITION_SPREAD = 0.25
CHANNELS = {4: 128, 8: 128, 16: 64, 32: 32, 64: 16}


def generator_kwargs() -> dict:
    """Constructor arguments of ipl.generators.stylegan2.Generator for the toy source model."""
    return dict(z_dim=Z_DIM, w_dim=W_DIM, c_dim=C_DIM, img_resolution=64, mapping_layers=4,
                mapping_lr_multiplier=0.1, channels=dict(CHANNELS))


def scene_from_latent(z: torch.Tensor, c: torch.Tensor) -> SceneParams:
    """Intended scene for latents z [N, Z_DIM] and one-hot shape labels c [N, 3]."""
    assert z.ndim == 2 and z.shape[1] == Z_DIM, z.shape
    assert c.shape == (z.shape[0], C_DIM), c.shape
    zn = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
    u = torch.special.ndtr(zn[:, :6])
    # Positions stay within a quarter of the renderer's range around the centre: a generator trained for
    # minutes on a CPU learns shape, colour and size well but placement slowly.
    u = torch.cat([u[:, :1], 0.5 + POSITION_SPREAD * (u[:, 1:3] - 0.5), u[:, 3:]], dim=1)
    return params_from_unit(u, c.argmax(1))
