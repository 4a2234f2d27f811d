"""Read rosinality/stylegan2-pytorch checkpoints (`g_ema`, `latent_avg`, optional `g`, `d`, `args`)."""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ipl.generators.stylegan2.network import Generator
from ipl.generators.stylegan2.validate import MAX_FILTER_TAPS, check_generator_config, require
from ipl.core.errors import CheckpointError


def is_rosinality_state(sd: Any) -> bool:
    """True when `sd` looks like a rosinality Generator state dict."""
    return isinstance(sd, dict) and "input.input" in sd and "conv1.conv.weight" in sd


def _tensor(sd: dict, key: str, path: Path, shape: str = "") -> torch.Tensor:
    """sd[key] as float32; `shape` (e.g. '[1, C, 4, 4]') also checks its rank (and any literal sizes)."""
    if key not in sd:
        raise CheckpointError(f"{path}: rosinality generator state has no '{key}'; the file is incomplete or not a "
                              f"StyleGAN2 generator checkpoint")
    value = sd[key]
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{path}: '{key}' should be a tensor, found {type(value).__name__}")
    if shape:
        dims = [d.strip() for d in shape.strip("[]").split(",")] if shape != "[]" else []
        require(value.ndim == len(dims) and all(not d.isdigit() or int(d) == n for d, n in zip(dims, value.shape)),
                path, f"g_ema.{key}", f"a tensor of shape {shape}", value)
    stored = value.untyped_storage().nbytes()
    if value.numel() * value.element_size() > stored:  # e.g. a stride-0 view: any shape in a few bytes
        raise CheckpointError(f"{path}: g_ema.{key}: expected a tensor whose {value.numel():,} values are stored in "
                              f"the file, got a view of shape {list(value.shape)} over {stored:,} bytes")
    return value.detach().to(torch.float32)


def select_generator_state(ckpt: Any, path: Path) -> tuple[dict, Any]:
    """Pick `g_ema` (or `g` with a warning) and `latent_avg` from a rosinality checkpoint dict."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict with 'g_ema' (rosinality format), found {type(ckpt).__name__}")
    if "g_ema" in ckpt:
        sd = ckpt["g_ema"]
    elif "g" in ckpt:
        warnings.warn(f"{path}: no 'g_ema' in the checkpoint; using the training generator 'g' instead")
        sd = ckpt["g"]
    elif is_rosinality_state(ckpt):
        sd = ckpt
    elif "d" in ckpt or any(str(k).startswith(("convs.0.0", "final_linear")) for k in ckpt):
        raise CheckpointError(f"{path}: this checkpoint holds only a discriminator ('d'); a generator ('g_ema') is "
                              f"needed. Use the full training checkpoint.")
    else:
        keys = ", ".join(sorted(map(str, ckpt))[:8])
        raise CheckpointError(f"{path}: no 'g_ema' found (keys: {keys}); expected a rosinality StyleGAN2 checkpoint "
                              f"with 'g_ema' and 'latent_avg'")
    if not is_rosinality_state(sd):
        raise CheckpointError(f"{path}: 'g_ema' is not a rosinality StyleGAN2 generator state dict "
                              f"(no 'input.input' / 'conv1.conv.weight')")
    return sd, ckpt.get("latent_avg") if isinstance(ckpt, dict) else None


def convert_rosinality(ckpt: Any, path: Path) -> Generator:
    """Build our Generator from a rosinality checkpoint dict, checking every shape."""
    path = Path(path)
    sd, latent_avg = select_generator_state(ckpt, path)
    bad_keys = [k for k in sd if not isinstance(k, str)]
    require(not bad_keys, path, "g_ema", "tensor names (strings) as keys", bad_keys[0] if bad_keys else None)

    n_mlp = len({m.group(1) for k in sd for m in [re.match(r"style\.(\d+)\.weight$", k)] if m})
    n_up = len({m.group(1) for k in sd for m in [re.match(r"to_rgbs\.(\d+)\.conv\.weight$", k)] if m})
    if n_mlp == 0:
        raise CheckpointError(f"{path}: no mapping layers ('style.1.weight', ...) in the generator state")
    resolution = 4 * 2 ** n_up
    const = _tensor(sd, "input.input", path, "[1, C, 4, 4]")
    for i in range(1, n_mlp + 1):
        _tensor(sd, f"style.{i}.weight", path, "[out, in]")
        _tensor(sd, f"style.{i}.bias", path, "[out]")
    style_dim = _tensor(sd, "style.1.weight", path).shape[1]
    w_dim = _tensor(sd, f"style.{n_mlp}.weight", path).shape[0]
    channels = {4: const.shape[1]}
    for k in range(n_up):
        channels[8 * 2 ** k] = _tensor(sd, f"convs.{2 * k}.conv.weight", path, "[1, out, in, 3, 3]").shape[1]
    kernel = sd.get("convs.0.conv.blur.kernel") if n_up > 0 else None
    taps = (1, 3, 3, 1)
    if kernel is not None:
        _tensor(sd, "convs.0.conv.blur.kernel", path, "[k, k]")
        require(kernel.shape[0] == kernel.shape[1] and 1 <= kernel.shape[0] <= MAX_FILTER_TAPS
                and bool(torch.isfinite(kernel).all()) and float(kernel[0].sum()) > 0 and float(kernel.sum()) > 0,
                path, "g_ema.convs.0.conv.blur.kernel",
                f"a square [k, k] FIR kernel with k in 1..{MAX_FILTER_TAPS}, finite, with positive sums", kernel)
        # The stored kernel is outer(taps, taps) / sum * 4; recover symmetric taps from its first row.
        row = kernel[0].double() / kernel[0].double().sum()
        col_sum = kernel.double().sum(dim=1)
        taps_t = col_sum / col_sum.sum()
        if not torch.allclose(torch.outer(taps_t, row), kernel.double() / kernel.double().sum(), atol=1e-6):
            raise CheckpointError(f"{path}: blur kernel is not separable; unsupported")
        taps = tuple(float(t) for t in (taps_t / taps_t.min() if float(taps_t.min()) > 0 else taps_t).tolist())

    # The architecture these shapes imply, checked before anything is allocated (a stride-0 tensor can claim
    # any size in a few bytes).
    kw = check_generator_config(
        dict(z_dim=style_dim, w_dim=w_dim, c_dim=0, img_resolution=resolution, img_channels=3, mapping_layers=n_mlp,
             mapping_lr_multiplier=0.01, channels=channels, conv_clamp=None, resample_filter=taps,
             truncation_style="affine"),
        path, names={"z_dim": "g_ema.style.1.weight (shape[1])", "w_dim": f"g_ema.style.{n_mlp}.weight (shape[0])",
                     "img_resolution": "g_ema.to_rgbs.* (number of upsampling blocks)",
                     "mapping_layers": "g_ema.style.* (number of layers)",
                     "channels": "g_ema convolution widths at resolution {res} (input.input / convs.*.conv.weight)",
                     "resample_filter": "g_ema.convs.0.conv.blur.kernel", "architecture": "g_ema (architecture)"})
    G = Generator(**kw)
    ours: dict[str, torch.Tensor] = {}
    for i in range(n_mlp):
        ours[f"mapping.fc{i}.weight"] = _tensor(sd, f"style.{i + 1}.weight", path)
        ours[f"mapping.fc{i}.bias"] = _tensor(sd, f"style.{i + 1}.bias", path)

    def styled_conv(dst: str, src: str, noise_key: str) -> None:
        ours[f"{dst}.weight"] = _tensor(sd, f"{src}.conv.weight", path, "[1, out, in, 3, 3]").squeeze(0)
        ours[f"{dst}.affine.weight"] = _tensor(sd, f"{src}.conv.modulation.weight", path)
        ours[f"{dst}.affine.bias"] = _tensor(sd, f"{src}.conv.modulation.bias", path)
        ours[f"{dst}.noise_strength"] = _tensor(sd, f"{src}.noise.weight", path, "[1]").reshape([])
        ours[f"{dst}.bias"] = _tensor(sd, f"{src}.activate.bias", path)
        if noise_key in sd:
            noise = _tensor(sd, noise_key, path, "[1, 1, R, R]")
            ours[f"{dst}.noise_const"] = noise.reshape(noise.shape[-2:])

    def to_rgb(dst: str, src: str) -> None:
        ours[f"{dst}.weight"] = _tensor(sd, f"{src}.conv.weight", path, "[1, 3, in, 1, 1]").squeeze(0)
        ours[f"{dst}.affine.weight"] = _tensor(sd, f"{src}.conv.modulation.weight", path)
        ours[f"{dst}.affine.bias"] = _tensor(sd, f"{src}.conv.modulation.bias", path)
        ours[f"{dst}.bias"] = _tensor(sd, f"{src}.bias", path).reshape(-1)

    ours["synthesis.b4.const"] = const.squeeze(0)
    styled_conv("synthesis.b4.conv1", "conv1", "noises.noise_0")
    to_rgb("synthesis.b4.torgb", "to_rgb1")
    for k in range(n_up):
        res = 8 * 2 ** k
        styled_conv(f"synthesis.b{res}.conv0", f"convs.{2 * k}", f"noises.noise_{2 * k + 1}")
        styled_conv(f"synthesis.b{res}.conv1", f"convs.{2 * k + 1}", f"noises.noise_{2 * k + 2}")
        to_rgb(f"synthesis.b{res}.torgb", f"to_rgbs.{k}")

    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor) or latent_avg.numel() != w_dim:
            raise CheckpointError(f"{path}: 'latent_avg' should be a tensor of {w_dim} values, found "
                                  f"{getattr(latent_avg, 'shape', type(latent_avg).__name__)}")
        ours["mapping.w_avg"] = latent_avg.detach().float().reshape(w_dim)

    missing_noise = [k for k in G.state_dict() if k.endswith("noise_const") and k not in ours]
    load_state(G, ours, path, allow_missing=missing_noise)
    if missing_noise:
        warnings.warn(f"{path}: no stored noise buffers ('noises.noise_i'); const noise is freshly drawn")
    if latent_avg is None:
        warnings.warn(f"{path}: no 'latent_avg'; estimating w_avg from 4096 mapped samples (seed 0)")
        G.estimate_w_avg(4096)
    unused = [k for k in sd if not (k.startswith(("style.", "input.", "conv1.", "to_rgb1.", "convs.", "to_rgbs.",
                                                  "noises.")))]
    if unused:
        warnings.warn(f"{path}: ignored unexpected generator keys: {', '.join(unused[:5])}")
    return G


def load_state(G: torch.nn.Module, state: dict[str, torch.Tensor], path: Path,
               allow_missing: tuple | list = ()) -> None:
    """Copy `state` into G, raising a CheckpointError naming the file for any missing key or shape mismatch."""
    own = G.state_dict()
    # FIR buffers come from the constructor's taps; per-layer copies always follow their block's filter.
    derived = {k for k in own if k.endswith(".resample_filter") and k.count(".") > 2}
    missing = [k for k in own if k not in state and not k.endswith(".resample_filter") and k not in allow_missing]
    if missing:
        raise CheckpointError(f"{path}: missing {len(missing)} tensor(s) for a {G.img_resolution}px generator, e.g. "
                              f"{', '.join(missing[:4])}")
    unexpected = [k for k in state if k not in own and not k.endswith(".resample_filter")]
    if unexpected:
        raise CheckpointError(f"{path}: {len(unexpected)} unexpected tensor(s) for this architecture, e.g. "
                              f"{', '.join(unexpected[:4])}")
    for key, value in state.items():
        if key not in own:
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{path}: tensor '{key}' has shape {tuple(value.shape)}, expected "
                                  f"{tuple(own[key].shape)} for this architecture")
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: tensor '{key}' contains NaN or Inf values; the file is corrupt")
    with torch.no_grad():
        for key, value in state.items():
            if key in own and key not in derived:
                own[key].copy_(value)
        for key in derived:
            block_key = key.rsplit(".", 2)[0] + ".resample_filter"
            if block_key in own:
                own[key].copy_(own[block_key])
