"""Validation of a diffusion model's description (our file's header record, a diffusers folder's JSON files)
before any UNet is built: one `CheckpointError` "<file>: <field>: expected <what>, got <value>" per problem.
"""
from __future__ import annotations

from typing import Any

from ipl.core.errors import CheckpointError
from ipl.core.fields import MISSING, Described, field_error, is_int, is_real, show  # noqa: F401

MAX_DIM = 65536                  # any channel count, size or class count
MAX_BLOCKS = 32
MAX_LAYERS_PER_BLOCK = 64
MAX_TIMESTEPS = 100_000
MAX_PARAMETER_BYTES = 16 << 30   # estimated float32 UNet parameters
ROLES = ("source", "adapted")
RECORD_VERSION = 1



def _int(cfg: dict, key: str, lo: int, hi: int, source: Any, field: str, optional: bool = True) -> None:
    if key not in cfg or cfg[key] is None:
        if optional:
            return
        raise field_error(source, f"{field}.{key}", f"an integer in {lo}..{hi}", MISSING)
    if not is_int(cfg[key]) or not lo <= int(cfg[key]) <= hi:
        raise field_error(source, f"{field}.{key}", f"an integer in {lo}..{hi}", cfg[key])


def check_unet_config(cfg: Any, source: Any, field: str = "unet_config") -> None:
    """A diffusers UNet2DModel config: the sizes it builds from are typed and bounded, its estimated size too."""
    if not isinstance(cfg, dict):
        raise field_error(source, field, "a JSON object (a diffusers UNet2DModel config)", cfg)
    size = cfg.get("sample_size")
    if size is not None and not (is_int(size) and 1 <= size <= MAX_DIM) and not (
            isinstance(size, (list, tuple)) and len(size) == 2 and all(is_int(s) and 1 <= s <= MAX_DIM for s in size)):
        raise field_error(source, f"{field}.sample_size", f"an integer (or [h, w]) in 1..{MAX_DIM}", size)
    for key in ("in_channels", "out_channels", "norm_num_groups", "attention_head_dim", "time_embedding_dim"):
        _int(cfg, key, 1, MAX_DIM, source, field)
    _int(cfg, "num_class_embeds", 0, MAX_DIM, source, field)
    _int(cfg, "layers_per_block", 1, MAX_LAYERS_PER_BLOCK, source, field)
    channels = cfg.get("block_out_channels", (224, 448, 672, 896))
    if not isinstance(channels, (list, tuple)) or not 1 <= len(channels) <= MAX_BLOCKS \
            or not all(is_int(c) and 1 <= c <= MAX_DIM for c in channels):
        raise field_error(source, f"{field}.block_out_channels",
                          f"a list of 1..{MAX_BLOCKS} integers in 1..{MAX_DIM}", channels)
    for key in ("down_block_types", "up_block_types"):
        if key in cfg:
            types = cfg[key]
            if not isinstance(types, (list, tuple)) or len(types) != len(channels) \
                    or not all(isinstance(t, str) for t in types):
                raise field_error(source, f"{field}.{key}",
                                  f"a list of {len(channels)} block type names (one per block_out_channels entry)",
                                  types)
    for key in ("act_fn", "time_embedding_type", "mid_block_type", "resnet_time_scale_shift"):
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            raise field_error(source, f"{field}.{key}", "a string", cfg[key])
    if cfg.get("norm_eps") is not None and not (is_real(cfg["norm_eps"]) and cfg["norm_eps"] > 0):
        raise field_error(source, f"{field}.norm_eps", "a positive finite number", cfg["norm_eps"])
    # Rough size: 3x3 convs of each block's resnets (down: L per block, up: L + 1 with doubled inputs), the middle
    # block and the time embedding; only to refuse absurd sizes before allocating.
    layers = int(cfg.get("layers_per_block") or 2)
    n = sum(9 * c * c * (5 * layers + 3) for c in channels) + 36 * channels[-1] ** 2 + 16 * channels[0] ** 2
    if n * 4 > MAX_PARAMETER_BYTES:
        raise CheckpointError(f"{source}: {field}: expected at most {MAX_PARAMETER_BYTES / 2 ** 30:.0f} GiB of "
                              f"float32 UNet parameters, got an estimated {n * 4 / 2 ** 30:,.1f} GiB "
                              f"(block_out_channels={list(channels)}, layers_per_block={layers})")


def check_scheduler_config(cfg: Any, source: Any, field: str = "scheduler_config") -> None:
    """A DDPM/DDIM scheduler config: the fields ipl reads are typed and bounded."""
    if not isinstance(cfg, dict):
        raise field_error(source, field, "a JSON object (a DDPM/DDIM scheduler config)", cfg)
    _int(cfg, "num_train_timesteps", 1, MAX_TIMESTEPS, source, field)
    _int(cfg, "steps_offset", 0, MAX_TIMESTEPS, source, field)
    for key in ("beta_start", "beta_end"):
        v = cfg.get(key)
        if v is not None and not (is_real(v) and 0 <= float(v) < 1):
            raise field_error(source, f"{field}.{key}", "a finite number in [0, 1)", v)
    v = cfg.get("clip_sample_range")
    if v is not None and not (is_real(v) and float(v) > 0):
        raise field_error(source, f"{field}.clip_sample_range", "a positive finite number", v)
    if cfg.get("clip_sample") is not None and not isinstance(cfg["clip_sample"], bool):
        raise field_error(source, f"{field}.clip_sample", "true or false", cfg["clip_sample"])
    for key in ("beta_schedule", "prediction_type", "timestep_spacing"):
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            raise field_error(source, f"{field}.{key}", "a string", cfg[key])
    betas = cfg.get("trained_betas")
    if betas is not None and not (isinstance(betas, (list, tuple)) and 1 <= len(betas) <= MAX_TIMESTEPS
                                  and all(is_real(b) and 0 <= float(b) < 1 for b in betas)):
        raise field_error(source, f"{field}.trained_betas", f"a list of 1..{MAX_TIMESTEPS} numbers in [0, 1)",
                          betas)


def check_record(record: Any, source: Any, header_key: str = "ipl") -> None:
    """The JSON record in our diffusion file's header: unet_config and scheduler_config required, the rest typed."""
    if not isinstance(record, dict):
        raise field_error(source, header_key, "a JSON object", record)
    version = record.get("version", RECORD_VERSION)
    if not is_int(version) or not 1 <= version <= RECORD_VERSION:
        raise field_error(source, f"{header_key}.version", f"an integer format version (1..{RECORD_VERSION})",
                          version)
    check_unet_config(record.get("unet_config", MISSING), source, f"{header_key}.unet_config")
    check_scheduler_config(record.get("scheduler_config", MISSING), source, f"{header_key}.scheduler_config")
    for key in ("diffusion", "metadata"):
        if key in record and not isinstance(record[key], dict):
            raise field_error(source, f"{header_key}.{key}", "a JSON object", record[key])
    check_diffusion_settings(record.get("diffusion") or {}, source, f"{header_key}.diffusion")
    if "role" in record and record["role"] not in ROLES:
        raise field_error(source, f"{header_key}.role", " or ".join(map(repr, ROLES)), record["role"])


def check_diffusion_settings(settings: dict, source: Any, field: str = "diffusion") -> None:
    """Saved DiffusionConfig fields have the type of their default (unknown keys are ignored on load)."""
    import dataclasses

    from ipl.generators.diffusion.adapter import DiffusionConfig

    for f in dataclasses.fields(DiffusionConfig):
        if f.name not in settings:
            continue
        value, default = settings[f.name], f.default
        if isinstance(default, bool):
            ok, what = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, what = is_int(value), "an integer"
        elif isinstance(default, float):
            ok, what = is_real(value), "a finite number"
        elif isinstance(default, str):
            ok, what = isinstance(value, str), "a string"
        else:  # Optional[str]
            ok, what = value is None or isinstance(value, str), "null or a string"
        if not ok:
            raise field_error(source, f"{field}.{f.name}", what, value)
