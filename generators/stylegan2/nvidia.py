"""Read NVIDIA stylegan2-ada-pytorch / stylegan3-repo StyleGAN2 network pickles (without NVIDIA code)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch

from ipl.generators.stylegan2.network import Generator
from ipl.generators.stylegan2.rosinality import load_state
from ipl.generators.stylegan2.safe_pickle import PersistentRecord, safe_load_pickle
from ipl.generators.stylegan2.validate import (MAX_CHANNEL_BASE, MAX_DIM, MAX_FILTER_TAPS, MAX_MAPPING_LAYERS, MISSING,
                                               check_generator_config, check_int, require)
from ipl.core.errors import CheckpointError

# Where the generator's constructor arguments sit in the pickle (named in error messages).
_KW = "G_ema._init_kwargs"

def flatten_state(record: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """The module's state_dict() names -> tensors, walking _parameters, _buffers, then child _modules."""
    out: dict[str, torch.Tensor] = {}
    state = record.state
    for group in ("_parameters", "_buffers"):
        entries = state.get(group) or {}
        if not isinstance(entries, dict):
            raise CheckpointError(f"'{prefix}{group}' is a {type(entries).__name__}, expected a dict of tensors")
        for name, value in entries.items():
            if value is None:
                continue
            if not isinstance(name, str):
                raise CheckpointError(f"'{prefix}{group}' has a non-string key {name!r}, expected tensor names")
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"'{prefix}{name}' is a {type(value).__name__}, expected a tensor")
            out[prefix + name] = value
    modules = state.get("_modules") or {}
    if not isinstance(modules, dict):
        raise CheckpointError(f"'{prefix}_modules' is a {type(modules).__name__}, expected a dict of submodules")
    for name, child in modules.items():
        if child is None:
            continue
        if not isinstance(name, str):
            raise CheckpointError(f"'{prefix}_modules' has a non-string key {name!r}, expected submodule names")
        if not isinstance(child, PersistentRecord):
            raise CheckpointError(f"submodule '{prefix}{name}' is not a persistent network object")
        out.update(flatten_state(child, f"{prefix}{name}."))
    return out


def _filter_taps(f: torch.Tensor, path: Path, key: str = "synthesis.b4.resample_filter") -> tuple[float, ...]:
    """Recover separable FIR taps (scaled so the smallest is 1) from a normalised 2-D filter."""
    # The network upsamples with a non-separable [k, k] filter (NVIDIA stores filters of 8+ taps as 1-D
    # separable ones, which it does not support).
    require(f.ndim == 2 and f.shape[0] == f.shape[1] and 1 <= f.shape[0] <= MAX_FILTER_TAPS, path, key,
            f"a 2-D [k, k] FIR filter with k in 1..{MAX_FILTER_TAPS} (1-D separable filters of 8 or more taps are "
            f"not supported)", f)
    f = f.double()
    require(bool(torch.isfinite(f).all()) and float(f.sum()) > 0, path, key,
            "finite values with a positive sum", f.flatten().tolist())
    taps = f.sum(dim=1)
    taps = taps / taps.sum()
    if not torch.allclose(torch.outer(taps, taps), f / f.sum(), atol=1e-6):
        raise CheckpointError(f"{path}: {key}: resample filter is not a symmetric separable FIR; unsupported")
    if float(taps.min()) > 0:
        taps = taps / taps.min()
    return tuple(float(t) for t in taps.tolist())


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
    require(isinstance(modules, dict), path, "G_ema._modules", "a dict of submodules", modules)
    synthesis = modules.get("synthesis")
    if record.class_name != "Generator" or not isinstance(synthesis, PersistentRecord) or "mapping" not in modules:
        raise CheckpointError(f"{path}: unsupported network class '{record.class_name}'; expected a StyleGAN2 "
                              f"'Generator' with 'mapping' and 'synthesis' networks")
    sub_modules = synthesis.state.get("_modules") or {}
    require(isinstance(sub_modules, dict), path, "G_ema.synthesis._modules", "a dict of submodules", sub_modules)
    children = {str(k) for k in sub_modules}
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
    kwargs = record.state.get("_init_kwargs")
    kwargs = {} if kwargs is None else kwargs
    require(isinstance(kwargs, dict), path, _KW, "a dict of constructor arguments", kwargs)
    kwargs = dict(kwargs)
    sub: dict[str, dict] = {}
    for group in ("mapping_kwargs", "synthesis_kwargs"):
        value = kwargs.pop(group, None)
        value = {} if value is None else value
        require(isinstance(value, dict), path, f"{_KW}.{group}", "a dict of constructor arguments", value)
        sub[group] = dict(value)
    mapping_kwargs, synthesis_kwargs = sub["mapping_kwargs"], sub["synthesis_kwargs"]
    synthesis_field = {key: f"{_KW}.synthesis_kwargs.{key}" for key in synthesis_kwargs}
    # The stylegan3 repo passes synthesis kwargs at the top level.
    for key in ("channel_base", "channel_max", "num_fp16_res", "conv_clamp", "architecture"):
        if key in kwargs:
            if key not in synthesis_kwargs:
                synthesis_field[key] = f"{_KW}.{key}"
            synthesis_kwargs.setdefault(key, kwargs.pop(key))
    try:
        state = flatten_state(record)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None

    architecture = synthesis_kwargs.get("architecture", "skip")
    if architecture != "skip":
        raise CheckpointError(f"{path}: generator architecture '{architecture}' is not supported yet (only the "
                              f"StyleGAN2 config-f 'skip' generator)")

    def need(key: str, rank: Optional[int] = None, what: str = "") -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"{path}: G_ema has no tensor '{key}'; the file is incomplete or not a StyleGAN2 "
                                  f"generator")
        require(rank is None or state[key].ndim == rank, path, key, f"a {rank}-D tensor {what}", state[key])
        return state[key]

    const = need("synthesis.b4.const", 3, "[C, 4, 4]")
    block_res = sorted(int(m.group(1)) for k in state for m in [re.match(r"synthesis\.b(\d+)\.conv1\.weight$", k)] if m)
    if not block_res:
        raise CheckpointError(f"{path}: G_ema has no synthesis blocks ('synthesis.b4.conv1.weight', ...); not a "
                              f"StyleGAN2 generator")
    channels = {res: need(f"synthesis.b{res}.conv1.weight", 4, "[out, in, k, k]").shape[0] for res in block_res}
    n_fc = len({m.group(1) for k in state for m in [re.match(r"mapping\.fc(\d+)\.weight$", k)] if m})
    if n_fc == 0:
        raise CheckpointError(f"{path}: G_ema has no mapping network ('mapping.fc0.weight', ...); unsupported")
    w_dim = need(f"mapping.fc{n_fc - 1}.weight", 2, "[out, in]").shape[0]
    # Constructor arguments the network below does not take from tensor shapes: typed even where unused.
    for group, key, lo, hi in ((None, "w_dim", 1, MAX_DIM), ("mapping_kwargs", "num_layers", 1, MAX_MAPPING_LAYERS),
                               ("synthesis", "channel_base", 1, MAX_CHANNEL_BASE),
                               ("synthesis", "channel_max", 1, MAX_DIM)):
        where = synthesis_kwargs if group == "synthesis" else mapping_kwargs if group else kwargs
        if where.get(key) is not None:
            field = synthesis_field[key] if group == "synthesis" else f"{_KW}.{group + '.' if group else ''}{key}"
            check_int(where[key], lo, hi, path, field)
    taps = _filter_taps(need("synthesis.b4.resample_filter"), path)
    conv_clamp_field = synthesis_field.get("conv_clamp", f"{_KW}.synthesis_kwargs.conv_clamp")
    kw = check_generator_config(
        dict(z_dim=kwargs.get("z_dim", MISSING), w_dim=w_dim, c_dim=kwargs.get("c_dim", 0),
             img_resolution=kwargs.get("img_resolution", max(block_res)), img_channels=kwargs.get("img_channels", 3),
             mapping_layers=n_fc, mapping_lr_multiplier=mapping_kwargs.get("lr_multiplier", 0.01), channels=channels,
             conv_clamp=synthesis_kwargs.get("conv_clamp"), num_fp16_res=synthesis_kwargs.get("num_fp16_res", 0),
             resample_filter=taps, truncation_style="lerp"),
        path, names={
            "z_dim": f"{_KW}.z_dim", "c_dim": f"{_KW}.c_dim", "img_resolution": f"{_KW}.img_resolution",
            "img_channels": f"{_KW}.img_channels", "mapping_lr_multiplier": f"{_KW}.mapping_kwargs.lr_multiplier",
            "conv_clamp": conv_clamp_field,
            "num_fp16_res": synthesis_field.get("num_fp16_res", f"{_KW}.synthesis_kwargs.num_fp16_res"),
            "w_dim": f"mapping.fc{n_fc - 1}.weight (shape[0])", "mapping_layers": "mapping.fc* (number of layers)",
            "channels": "synthesis.b{res}.conv1.weight (shape[0])", "resample_filter": "synthesis.b4.resample_filter",
            "architecture": "G_ema (architecture)"})
    if max(block_res) != kw["img_resolution"]:
        raise CheckpointError(f"{path}: synthesis blocks {block_res} do not reach "
                              f"img_resolution={kw['img_resolution']}")
    conv_clamp: Optional[float] = kw["conv_clamp"]
    G = Generator(
        z_dim=kw["z_dim"], w_dim=kw["w_dim"], c_dim=kw["c_dim"], img_resolution=kw["img_resolution"],
        img_channels=kw["img_channels"], mapping_layers=n_fc,
        mapping_lr_multiplier=float(kw["mapping_lr_multiplier"]), channels=kw["channels"],
        conv_clamp=float(conv_clamp) if conv_clamp is not None else None,
        num_fp16_res=kw["num_fp16_res"], resample_filter=taps, truncation_style="lerp",
    )
    for key, value in state.items():  # a stride-0 view claims any shape in a few bytes: refuse before converting
        stored = value.untyped_storage().nbytes()
        if value.numel() * value.element_size() > stored:
            raise CheckpointError(f"{path}: {key}: expected a tensor whose {value.numel():,} values are stored in "
                                  f"the file, got a view of shape {list(value.shape)} over {stored:,} bytes")
    ours = {k: v.detach().to(torch.float32) for k, v in state.items()}
    load_state(G, ours, path)
    if const.shape[0] != channels[4]:
        raise CheckpointError(f"{path}: const input has {const.shape[0]} channels, b4 expects {channels[4]}")
    return G


def load_nvidia_pickle(path: Path) -> Generator:
    """Read an NVIDIA network pickle with the restricted unpickler and convert its G_ema."""
    return convert_nvidia(safe_load_pickle(path), Path(path))
