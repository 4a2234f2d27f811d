"""The in-place adds of the StyleGAN2 synthesis (noise map, ToRGB skip) give bit-identical outputs and gradients."""
from __future__ import annotations

import pytest
import torch

from ipl.generators.stylegan2 import network
from ipl.generators.stylegan2.network import Generator


def _run(G: Generator, ws: torch.Tensor, inplace: bool, noise_mode: str, noise, autocast: bool):
    """Image and gradients (w.r.t. W+ and every parameter) of a fixed scalar loss, with or without in-place adds."""
    saved = network.INPLACE_ADDS
    network.INPLACE_ADDS = inplace
    try:
        G.zero_grad(set_to_none=True)
        ws = ws.detach().clone().requires_grad_(True)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
        with ctx:
            img = G.synthesis(ws, noise_mode=noise_mode, noise=noise)
        weights = torch.linspace(-1, 1, img.numel()).reshape(img.shape)
        (img.float() * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in G.named_parameters() if p.grad is not None}
        return img.detach(), ws.grad.clone(), grads
    finally:
        network.INPLACE_ADDS = saved


@pytest.mark.parametrize("fused,noise_mode,autocast", [(True, "const", False), (False, "const", False),
                                                        (True, "explicit", False), (True, "none", False),
                                                        (True, "const", True)])
def test_inplace_adds_are_bit_identical(fused, noise_mode, autocast):
    torch.manual_seed(0)
    G = Generator(z_dim=16, w_dim=16, img_resolution=32, channel_base=256, channel_max=16, impl="ref")
    G.set_fused_modconv(fused)
    for layer in G.synthesis.conv_layers():  # non-zero noise strengths, so the noise add matters
        layer.noise_strength.data.fill_(0.3)
    ws = torch.randn([3, G.num_ws, 16])
    noise = None
    if noise_mode == "explicit":
        noise = [torch.randn([3, 1, r, r]) for (_, _, r, _) in G.noise_shapes()]
        noise_mode = "const"
    new = _run(G, ws, True, noise_mode, noise, autocast)
    old = _run(G, ws, False, noise_mode, noise, autocast)
    assert torch.equal(new[0], old[0])
    assert torch.equal(new[1], old[1])
    assert new[2].keys() == old[2].keys() and len(new[2]) > 10
    for name in new[2]:
        assert torch.equal(new[2][name], old[2][name]), name
    assert new[1].abs().sum() > 0
