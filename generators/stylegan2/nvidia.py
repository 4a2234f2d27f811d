"""Read NVIDIA stylegan2-ada-pytorch / stylegan3-repo StyleGAN2 network pickles (without NVIDIA code)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch

from ipl.generators.stylegan2.network import Generator
from ipl.generators.stylegan2.rosinality import load_state
from ipl.generators.stylegan2.safe_pickle import PersistentRecord, safe_load_pickle
from ipl.core.errors import CheckpointError

def flatten_state(record: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """The module's state_dict() names -> tensors, walking _parameters, _buffers, then child _modules."""
    out: dict[str, torch.Tensor] = {}
    state = record.state
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"'{prefix}{name}' is a {type(value).__name__}, expected a tensor")
            out[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise CheckpointError(f"submodule '{prefix}{name}' is not a persistent network object")
        out.update(flatten_state(child, f"{prefix}{name}."))
    return out


def _filter_taps(f: torch.Tensor) -> tuple[float, ...]:
    """Recover separable FIR taps (scaled so the smallest is 1) from a normalised 2-D filter."""
    f = f.double()
    taps = f.sum(dim=1)
    taps = taps / taps.sum()
    if f.ndim != 2 or not torch.allclose(torch.outer(taps, taps), f / f.sum(), atol=1e-6):
        raise CheckpointError("resample filter is not a symmetric separable FIR; unsupported")
    return tuple(float(t) for t in (taps / taps.min()).tolist())


def _class_of(record: Any) -> str:
    return record.class_name if isinstance(record, PersistentRecord) else type(record).__name__


def pick_generator(data: Any, path: Path) -> PersistentRecord:
    """The G_ema record of a network pickle, with clear errors for every other kind of content."""
    if isinstance(data, PersistentRecord):
        record = data
    elif isinstance(data, dict):
        if "G_ema" in data:
            record = data["G_ema"]
        elif "G" in data:
            record = data["G"]
        elif "D" in data:
            raise CheckpointError(f"{path}: this pickle holds only a discriminator ('D'); a generator ('G_ema') is "
                                  f"needed. Use the full network snapshot.")
        else:
            keys = ", ".join(sorted(map(str, data))[:8])
            raise CheckpointError(f"{path}: no 'G_ema' in the pickle (keys: {keys}); expected an NVIDIA network "
                                  f"snapshot")
    else:
        raise CheckpointError(f"{path}: expected a dict with 'G_ema' (NVIDIA network pickle), found "
                              f"{type(data).__name__}")
    name = _class_of(record)
    if not isinstance(record, PersistentRecord):
        raise CheckpointError(f"{path}: 'G_ema' is a {name}, expected a persistent NVIDIA network object")
    if record.class_name == "Discriminator":
        raise CheckpointError(f"{path}: 'G_ema' holds a discriminator; expected a generator")
    modules = record.state.get("_modules") or {}
    synthesis = modules.get("synthesis")
    if record.class_name != "Generator" or not isinstance(synthesis, PersistentRecord) or "mapping" not in modules:
        raise CheckpointError(f"{path}: unsupported network class '{record.class_name}'; expected a StyleGAN2 "
                              f"'Generator' with 'mapping' and 'synthesis' networks")
    children = set((synthesis.state.get("_modules") or {}).keys())
    if "input" in children or any(c.startswith("L0_") for c in children):
        raise CheckpointError(f"{path}: this is a StyleGAN3 (alias-free) generator; StyleGAN3 is not supported "
                              f"yet. Use a StyleGAN2 checkpoint (stylegan2-ada-pytorch or stylegan3-repo StyleGAN2).")
    if "b4" not in children:
        raise CheckpointError(f"{path}: the synthesis network has no 4x4 block 'b4'; not a StyleGAN2 generator")
    return record


def convert_nvidia(data: Any, path: Path) -> Generator:
    """Build our Generator from an unpickled NVIDIA network pickle (records, not live objects)."""
    path = Path(path)
    record = pick_generator(data, path)
    kwargs = dict(record.state.get("_init_kwargs") or {})
    mapping_kwargs = dict(kwargs.pop("mapping_kwargs", None) or {})
    synthesis_kwargs = dict(kwargs.pop("synthesis_kwargs", None) or {})
    # The stylegan3 repo passes synthesis kwargs at the top level.
    for key in ("channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture"):
        if key in kwargs:
            synthesis_kwargs.setdefault(key, kwargs.pop(key))
    try:
        state = flatten_state(record)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None

    architecture = synthesis_kwargs.get("architecture", "skip")
    if architecture != "skip":
        raise CheckpointError(f"{path}: generator architecture '{architecture}' is not supported yet (only the "
                              f"StyleGAN2 config-f 'skip' generator)")

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"{path}: G_ema has no tensor '{key}'; the file is incomplete or not a StyleGAN2 "
                                  f"generator")
        return state[key]

    const = need("synthesis.b4.const")
    block_res = sorted(int(m.group(1)) for k in state for m in [re.match(r"synthesis\.b(\d+)\.conv1\.weight$", k)] if m)
    img_resolution = int(kwargs.get("img_resolution", max(block_res)))
    if not block_res or max(block_res) != img_resolution:
        raise CheckpointError(f"{path}: synthesis blocks {block_res} do not reach img_resolution={img_resolution}")
    channels = {res: need(f"synthesis.b{res}.conv1.weight").shape[0] for res in block_res}
    n_fc = len({m.group(1) for k in state for m in [re.match(r"mapping\.fc(\d+)\.weight$", k)] if m})
    w_dim = need(f"mapping.fc{n_fc - 1}.weight").shape[0] if n_fc else int(kwargs.get("w_dim", 0))
    c_dim = int(kwargs.get("c_dim", 0))
    z_dim = int(kwargs.get("z_dim", 0))
    if n_fc == 0 or z_dim <= 0:
        raise CheckpointError(f"{path}: G_ema has no mapping network (z_dim={z_dim}); unsupported")
    conv_clamp: Optional[float] = synthesis_kwargs.get("conv_clamp")
    taps = _filter_taps(need("synthesis.b4.resample_filter"))
    G = Generator(
        z_dim=z_dim, w_dim=w_dim, c_dim=c_dim, img_resolution=img_resolution,
        img_channels=int(kwargs.get("img_channels", 3)), mapping_layers=n_fc,
        mapping_lr_multiplier=float(mapping_kwargs.get("lr_multiplier", 0.01)), channels=channels,
        conv_clamp=float(conv_clamp) if conv_clamp is not None else None,
        num_fp16_res=int(synthesis_kwargs.get("num_fp16_res", 0)), resample_filter=taps, truncation_style="lerp",
    )
    ours = {k: v.detach().to(torch.float32) for k, v in state.items()}
    load_state(G, ours, path)
    if const.shape[0] != channels[4]:
        raise CheckpointError(f"{path}: const input has {const.shape[0]} channels, b4 expects {channels[4]}")
    return G


def load_nvidia_pickle(path: Path) -> Generator:
    """Read an NVIDIA network pickle with the restricted unpickler and convert its G_ema."""
    return convert_nvidia(safe_load_pickle(path), Path(path))
