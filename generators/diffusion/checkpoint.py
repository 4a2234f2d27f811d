"""Reading diffusion sources (diffusers folders, Hugging Face cache, our format) and writing our format.

Our format is one `.safetensors` file: the UNet weights, and in the safetensors header under the key
`ipl` a JSON record {format: "ipl-diffusion", unet_config, scheduler_config, diffusion (DiffusionConfig),
metadata (source, target text, method, ...)}. One file, so any path the run folder chooses works.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ipl.core.errors import CheckpointError
from ipl.generators.diffusion.validate import (Described, check_record, check_scheduler_config, check_unet_config,
                                               field_error)

FORMAT = "ipl-diffusion"
HEADER_KEY = "ipl"

# The DDPM noise schedule every google/ddpm-* model was trained with (their scheduler_config.json).
DDPM_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "clip_sample": True, "prediction_type": "epsilon",
}

# google/ddpm-ema-celebahq-256 and google/ddpm-ema-church-256 UNet2DModel configuration (their config.json),
# written out so benchmarks can build a random UNet of the real size without a download.
CELEBAHQ_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 256, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "block_out_channels": [128, 128, 256, 256, 512, 512],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                         "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "act_fn": "silu", "attention_head_dim": None, "center_input_sample": False, "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "mid_block_scale_factor": 1, "norm_eps": 1e-6,
    "norm_num_groups": 32, "time_embedding_type": "positional",
}

# Registry names -> Hugging Face repositories.
HUB_MODELS = {
    "ddpm-celebahq": "google/ddpm-ema-celebahq-256",
    "ddpm-church": "google/ddpm-ema-church-256",
}

_SCHEDULER_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                   "clip_sample", "prediction_type", "clip_sample_range", "steps_offset", "timestep_spacing")


def scheduler_config_of(raw: dict[str, Any]) -> dict[str, Any]:
    """The DDIM-relevant subset of a (DDPM or DDIM) scheduler config."""
    out = dict(DDPM_SCHEDULER_CONFIG)
    out.update({k: v for k, v in raw.items() if k in _SCHEDULER_KEYS and v is not None})
    return out


def make_scheduler(config: dict[str, Any]):
    """A diffusers DDIMScheduler with this noise schedule (the source of alphas and sampling timesteps)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(scheduler_config_of(config))


def make_unet(config: dict[str, Any]):
    """A UNet2DModel from a config dict (random weights)."""
    from diffusers import UNet2DModel

    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    return UNet2DModel.from_config(clean)


def is_diffusers_folder(path: Union[str, Path]) -> bool:
    """True if `path` is a folder holding a diffusers UNet2DModel (at its root or in unet/)."""
    return _unet_dir(Path(path)) is not None


def is_ipl_diffusion_file(path: Union[str, Path]) -> bool:
    """True if `path` is a .safetensors file written by `save_file` (our diffusion format)."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".safetensors":
        return False
    try:
        header = _read_header(path)
    except CheckpointError:
        return False
    return isinstance(header, dict) and header.get("format") == FORMAT


def _unet_dir(folder: Path) -> Optional[Path]:
    for candidate in (folder, folder / "unet"):
        cfg = candidate / "config.json"
        if cfg.is_file():
            try:
                data = json.loads(cfg.read_text())
            except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8, not JSON
                continue
            name = data.get("_class_name") if isinstance(data, dict) else None
            if name == "UNet2DModel":
                return candidate
    return None


def _scheduler_file(folder: Path) -> Optional[Path]:
    for candidate in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json"):
        if candidate.is_file():
            return candidate
    return None


def load_diffusers_folder(folder: Union[str, Path], device: Union[str, torch.device] = "cpu"):
    """(UNet2DModel, scheduler config) from a local diffusers folder (pipeline or bare UNet)."""
    from diffusers import UNet2DModel

    folder = Path(folder)
    unet_dir = _unet_dir(folder)
    if unet_dir is None:
        raise CheckpointError(
            f"{folder} is not a diffusers UNet2DModel folder: expected config.json with "
            f"\"_class_name\": \"UNet2DModel\" in it or in {folder / 'unet'}. Download a pipeline with e.g. "
            "`huggingface-cli download google/ddpm-ema-celebahq-256 --local-dir DIR` and pass DIR.")
    # Both JSON files are checked before the UNet is built.
    check_unet_config(json.loads((unet_dir / "config.json").read_text()), unet_dir / "config.json", "config")
    sched_path = _scheduler_file(folder)
    sched: Any = {}
    if sched_path:
        try:
            sched = json.loads(sched_path.read_text())
        except (OSError, ValueError, RecursionError) as e:
            raise field_error(sched_path, "scheduler config", "a readable JSON object",
                              Described(f"{type(e).__name__}: {e}")) from None
        check_scheduler_config(sched, sched_path, "scheduler config")
    try:
        unet = UNet2DModel.from_pretrained(str(unet_dir))
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, AttributeError, AssertionError) as e:
        raise CheckpointError(f"could not read the UNet in {unet_dir}: {e}") from e
    return unet.to(device), scheduler_config_of(sched)


def save_file(path: Union[str, Path], unet: torch.nn.Module, record: dict[str, Any]) -> None:
    """Write UNet weights + the JSON record atomically as one safetensors file (same inputs, same bytes)."""
    from ipl.core.atomic import save_safetensors

    record = dict(record, format=FORMAT, version=1)
    state = {k: v.detach().contiguous().cpu() for k, v in unet.state_dict().items()}
    save_safetensors(state, path, metadata={HEADER_KEY: json.dumps(record, default=str)})


def _read_header(path: Path) -> Optional[dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); re-export or re-run.") from e
    if HEADER_KEY not in meta:
        return None
    try:
        return json.loads(meta[HEADER_KEY])
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: the '{HEADER_KEY}' header is not valid JSON ({e}).") from e


def load_file(path: Union[str, Path], device: Union[str, torch.device] = "cpu"):
    """(UNet2DModel, record) from a file written by `save_file`."""
    from safetensors.torch import load_file as st_load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist.")
    record = _read_header(path)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not an ipl diffusion model "
                              f"(no '{HEADER_KEY}' header with format '{FORMAT}').")
    check_record(record, path, HEADER_KEY)  # before anything is built
    try:
        unet = make_unet(record["unet_config"])
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError, RuntimeError) as e:
        raise field_error(path, f"{HEADER_KEY}.unet_config", f"a config diffusers can build a UNet2DModel from "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                          record["unet_config"]) from None
    try:
        state = st_load(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt data
        raise CheckpointError(f"{path}: truncated or corrupt safetensors data ({e}); re-export it") from None
    try:
        missing, unexpected = unet.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the stored UNet config "
                              f"({str(e).strip().splitlines()[-1].strip()})") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the stored UNet config "
                              f"(missing {list(missing)[:4]}, unexpected {list(unexpected)[:4]}).")
    return unet.to(device), record
