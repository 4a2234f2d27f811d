"""Validation of a StyleGAN2 architecture description before anything is built or allocated.

Every reader (NVIDIA .pkl init kwargs, the config rosinality tensors imply, our safetensors header) turns what
the file says into the keyword arguments of `network.Generator` and passes them through
`check_generator_config` first. A value of the wrong type, out of range, or an architecture whose parameters
would not fit in `MAX_PARAMETER_BYTES` raises one `CheckpointError`:

    "<file>: <field>: expected <what>, got <value>"
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Optional

from ipl.core.errors import CheckpointError
from ipl.core.fields import MISSING, Described, field_error, is_int, is_real, show  # noqa: F401

MAX_DIM = 65536                  # any width, channel count, resolution or label count
MAX_MAPPING_LAYERS = 256
MAX_FP16_RES = 64
MAX_FILTER_TAPS = 7              # the network uses a non-separable 2-D FIR: outer(taps, taps), at most 7 taps
MAX_CHANNEL_BASE = 1 << 30
MAX_CHANNEL_MULTIPLIER = 1024
MAX_PARAMETER_BYTES = 16 << 30   # float32 parameters + buffers of the network described
TRUNCATION_STYLES = ("lerp", "affine")

# Generator keyword -> its default (as in network.Generator.__init__).
DEFAULTS: dict[str, Any] = {
    "z_dim": 512, "w_dim": 512, "c_dim": 0, "img_resolution": 1024, "img_channels": 3, "mapping_layers": 8,
    "mapping_lr_multiplier": 0.01, "channel_base": 32768, "channel_max": 512, "channel_multiplier": None,
    "channels": None, "conv_clamp": None, "num_fp16_res": 0, "resample_filter": (1, 3, 3, 1),
    "truncation_style": "lerp",
}


# The shared field checks, re-exported for the readers of this family.
__all__ = ["MISSING", "Described", "field_error", "show", "is_int", "is_real", "check_generator_config"]



def check_int(value: Any, lo: int, hi: int, source: Any, field: str) -> int:
    if not is_int(value) or not lo <= int(value) <= hi:
        raise field_error(source, field, f"an integer in {lo}..{hi}", value)
    return int(value)


def check_filter(value: Any, source: Any, field: str) -> tuple[float, ...]:
    """FIR taps: a 1-D list of 1..MAX_FILTER_TAPS finite numbers with a positive sum."""
    expected = (f"a 1-D list of 1..{MAX_FILTER_TAPS} finite numbers with a positive sum (FIR taps, e.g. "
                f"[1, 3, 3, 1])")
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_FILTER_TAPS \
            or not all(is_real(t) for t in value) or not sum(float(t) for t in value) > 0:
        raise field_error(source, field, expected, value)
    return tuple(float(t) for t in value)


def estimate_parameters(kw: Mapping[str, Any]) -> int:
    """float32 values (parameters + buffers) of network.Generator(**kw), computed like the network lays them out."""
    z, w, c, img_ch = kw["z_dim"], kw["w_dim"], kw["c_dim"], kw["img_channels"]
    embed = w if c > 0 else 0
    n = (c * w + w) if c > 0 else 0
    n += (z + embed) * w + w + (kw["mapping_layers"] - 1) * (w * w + w) + w  # fc layers, w_avg
    k = len(kw["resample_filter"])
    res, in_ch = 4, 0
    while res <= kw["img_resolution"]:
        out = kw["channels"][res]
        n += k * k  # the block's FIR buffer
        if in_ch == 0:
            n += out * res * res  # const
        else:
            n += w * in_ch + in_ch + out * in_ch * 9 + out + 1 + res * res + k * k  # conv0
        n += w * out + out + out * out * 9 + out + 1 + res * res  # conv1
        n += w * out + out + img_ch * out + img_ch  # torgb
        res, in_ch = res * 2, out
    return n


def check_generator_config(config: Any, source: Any, prefix: str = "",
                           names: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Validate a StyleGAN2 architecture description; return clean `network.Generator` keyword arguments.

    config: Generator keywords (missing ones take the Generator defaults); 'architecture', if present, must be
            'stylegan2'; any other unknown key is refused.
    source: the file, named first in every message.
    prefix: prepended to each keyword in messages (e.g. 'ipl.config.').
    names:  keyword -> field name in the file, where the reader took it from elsewhere (e.g. an NVIDIA
            init kwarg or a tensor's shape); for 'channels' a format string with '{res}'.
    Raises CheckpointError "<source>: <field>: expected <what>, got <value>" for the first bad field.
    """
    names = dict(names or {})

    def name(key: str) -> str:
        return names.get(key, prefix + key)

    if not isinstance(config, Mapping):
        raise field_error(source, prefix.rstrip(".") or "config", "a JSON object of generator settings", config)
    for key in config:
        if key == "architecture":
            if config[key] != "stylegan2":
                raise field_error(source, name(key), "'stylegan2'", config[key])
        elif key not in DEFAULTS:
            raise field_error(source, prefix.rstrip(".") or "config",
                              f"only the fields architecture, {', '.join(DEFAULTS)}",
                              Described(f"unknown field {show(key)}"))
    raw = {**DEFAULTS, **{k: v for k, v in config.items() if k != "architecture"}}
    kw: dict[str, Any] = {}
    kw["z_dim"] = check_int(raw["z_dim"], 1, MAX_DIM, source, name("z_dim"))
    kw["w_dim"] = check_int(raw["w_dim"], 1, MAX_DIM, source, name("w_dim"))
    kw["c_dim"] = check_int(raw["c_dim"], 0, MAX_DIM, source, name("c_dim"))
    res = raw["img_resolution"]
    if not is_int(res) or not 4 <= int(res) <= MAX_DIM or int(res) & (int(res) - 1):
        raise field_error(source, name("img_resolution"), f"a power of two in 4..{MAX_DIM}", res)
    kw["img_resolution"] = int(res)
    kw["img_channels"] = check_int(raw["img_channels"], 1, MAX_DIM, source, name("img_channels"))
    kw["mapping_layers"] = check_int(raw["mapping_layers"], 1, MAX_MAPPING_LAYERS, source, name("mapping_layers"))
    lr = raw["mapping_lr_multiplier"]
    if not is_real(lr) or not float(lr) > 0:
        raise field_error(source, name("mapping_lr_multiplier"), "a positive finite number", lr)
    kw["mapping_lr_multiplier"] = lr if type(lr) in (int, float) else float(lr)
    resolutions = [2 ** i for i in range(2, int(math.log2(kw["img_resolution"])) + 1)]

    table = raw["channels"]
    if table is None:
        from ipl.generators.stylegan2.network import channel_table

        base = check_int(raw["channel_base"], 1, MAX_CHANNEL_BASE, source, name("channel_base"))
        cmax = check_int(raw["channel_max"], 1, MAX_DIM, source, name("channel_max"))
        mult = raw["channel_multiplier"]
        if mult is not None:
            mult = check_int(mult, 1, MAX_CHANNEL_MULTIPLIER, source, name("channel_multiplier"))
        table = channel_table(kw["img_resolution"], base, cmax, mult)
    elif not isinstance(table, Mapping):
        raise field_error(source, name("channels"), "an object {resolution: width}", table)
    by_res: dict[int, Any] = {}
    for key, value in table.items():
        if is_int(key) or (isinstance(key, str) and key.isdigit()):
            by_res[int(key)] = value
        else:
            raise field_error(source, name("channels"), "resolutions (4, 8, 16, ...) as keys",
                              Described(f"key {show(key)}"))
    channel_field = names.get("channels", prefix + "channels.{res}")
    if "{res}" not in channel_field:
        channel_field += ".{res}"
    channels: dict[int, int] = {}
    for r in resolutions:
        channels[r] = check_int(by_res.get(r, MISSING), 1, MAX_DIM, source, channel_field.format(res=r))
    for r in ("channel_base", "channel_max", "channel_multiplier"):  # superseded by the table; still typed
        if r in config and config[r] is not None:
            check_int(config[r], 1, MAX_CHANNEL_BASE, source, name(r))
    if raw["channels"] is not None:
        kw["channels"] = channels
    else:
        kw.update(channel_base=raw["channel_base"], channel_max=raw["channel_max"],
                  channel_multiplier=raw["channel_multiplier"])

    clamp = raw["conv_clamp"]
    if clamp is not None and (not is_real(clamp) or not float(clamp) > 0):
        raise field_error(source, name("conv_clamp"), "null/None or a positive finite number", clamp)
    kw["conv_clamp"] = clamp if clamp is None or type(clamp) in (int, float) else float(clamp)
    kw["num_fp16_res"] = check_int(raw["num_fp16_res"], 0, MAX_FP16_RES, source, name("num_fp16_res"))
    kw["resample_filter"] = check_filter(raw["resample_filter"], source, name("resample_filter"))
    style = raw["truncation_style"]
    if not isinstance(style, str) or style not in TRUNCATION_STYLES:
        raise field_error(source, name("truncation_style"), " or ".join(map(repr, TRUNCATION_STYLES)), style)
    kw["truncation_style"] = style

    n = estimate_parameters({**kw, "channels": channels})
    if n * 4 > MAX_PARAMETER_BYTES:
        raise CheckpointError(
            f"{source}: {name('architecture') if 'architecture' in names else prefix + 'architecture'}: expected "
            f"at most {MAX_PARAMETER_BYTES / 2 ** 30:.0f} GiB of float32 parameters, got an estimated "
            f"{n * 4 / 2 ** 30:,.1f} GiB ({n:,} values: z_dim={kw['z_dim']}, w_dim={kw['w_dim']}, "
            f"c_dim={kw['c_dim']}, img_resolution={kw['img_resolution']}, mapping_layers={kw['mapping_layers']}, "
            f"max channels={max(channels.values())})")
    return kw


def require(condition: bool, source: Any, field: str, expected: str, value: Any) -> None:
    """Raise the standard field error unless `condition`."""
    if not condition:
        raise field_error(source, field, expected, value)


__all__ = ["Described", "MISSING", "MAX_DIM", "MAX_FILTER_TAPS", "MAX_PARAMETER_BYTES", "check_generator_config", "check_filter",
           "check_int", "estimate_parameters", "field_error", "require", "show"]
