"""Our StyleGAN2 network written as another tool's checkpoint: rosinality/stylegan2-pytorch `.pt` (g_ema)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from ipl.core.errors import IPLError


def rosinality_state(G: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our StyleGAN2 state -> rosinality/stylegan2-pytorch `g_ema` state dict (every key its Generator has)."""
    cfg = G.config
    if not isinstance(cfg, dict) or cfg.get("architecture") != "stylegan2":
        raise IPLError("only StyleGAN2 generators can be exported to the rosinality format")
    if int(cfg.get("c_dim", 0)) != 0:
        raise IPLError("this generator is conditional (c_dim > 0); the rosinality format has no labels")
    if abs(float(cfg.get("mapping_lr_multiplier", 0.01)) - 0.01) > 1e-12:
        raise IPLError("the rosinality format assumes a mapping lr multiplier of 0.01; this generator differs")
    if int(cfg.get("img_channels", 3)) != 3:
        raise IPLError("the rosinality format is RGB only")
    if cfg.get("conv_clamp") is not None:
        warnings.warn(f"this generator clamps conv activations at {cfg['conv_clamp']} (NVIDIA conv_clamp); the "
                      "rosinality format cannot express that, so images may differ where the clamp was active")
    sd = {k: v.detach().float().cpu() for k, v in G.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for i in range(int(cfg["mapping_layers"])):
        out[f"style.{i + 1}.weight"] = sd[f"mapping.fc{i}.weight"]
        out[f"style.{i + 1}.bias"] = sd[f"mapping.fc{i}.bias"]
    taps = torch.tensor(cfg.get("resample_filter", [1, 3, 3, 1]), dtype=torch.float64)
    # rosinality keeps the 2-D FIR kernel normalised to sum 1, times up_factor^2 = 4.
    kernel = (torch.outer(taps, taps) / torch.outer(taps, taps).sum() * 4).float()

    def conv(dst: str, src: str, noise_index: int, resolution: int, up: bool) -> None:
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"].unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        if up:
            out[f"{dst}.conv.blur.kernel"] = kernel.clone()
        out[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape(1)
        out[f"{dst}.activate.bias"] = sd[f"{src}.bias"]
        noise = sd.get(f"{src}.noise_const")
        if noise is None:
            noise = torch.randn([resolution, resolution])
        out[f"noises.noise_{noise_index}"] = noise.reshape(1, 1, resolution, resolution)

    def to_rgb(dst: str, src: str, up: bool) -> None:
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"].unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"]
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"]
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, -1, 1, 1)
        if up:
            out[f"{dst}.upsample.kernel"] = kernel.clone()

    out["input.input"] = sd["synthesis.b4.const"].unsqueeze(0)
    conv("conv1", "synthesis.b4.conv1", 0, 4, up=False)
    to_rgb("to_rgb1", "synthesis.b4.torgb", up=False)
    res, k = 8, 0
    while res <= int(cfg["img_resolution"]):
        conv(f"convs.{2 * k}", f"synthesis.b{res}.conv0", 2 * k + 1, res, up=True)
        conv(f"convs.{2 * k + 1}", f"synthesis.b{res}.conv1", 2 * k + 2, res, up=False)
        to_rgb(f"to_rgbs.{k}", f"synthesis.b{res}.torgb", up=True)
        res, k = res * 2, k + 1
    return out


def export_rosinality(G: torch.nn.Module, path: Path, metadata: Optional[dict[str, Any]] = None) -> Path:
    """Write {'g_ema', 'latent_avg'} (+ our metadata under 'ipl') atomically to `path`."""
    from ipl.core.atomic import torch_save

    ckpt = {"g_ema": rosinality_state(G), "latent_avg": G.state_dict()["mapping.w_avg"].detach().float().cpu()}
    if metadata:
        ckpt["ipl"] = metadata
    torch_save(ckpt, path)
    return Path(path)
