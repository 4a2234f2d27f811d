"""Load any supported StyleGAN2 checkpoint (format detected from content) and save our own format.

Our format is one `.safetensors` file: the state dict as tensors, and in the safetensors header metadata
`ipl.format = "ipl.stylegan2"`, `ipl.format_version`, `ipl.config` (JSON: architecture, sizes, channel table,
...; w_avg is the tensor `mapping.w_avg`) and `ipl.metadata` (JSON: anything the caller attaches, e.g. source,
target text, method, hyperparameters).
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ipl.generators.stylegan2.network import Generator
from ipl.generators.stylegan2.rosinality import convert_rosinality, load_state
from ipl.generators.stylegan2.validate import MISSING, check_generator_config, field_error
from ipl.core.errors import CheckpointError, IPLError, UnsafePickleError

PathLike = Union[str, os.PathLike]
FORMAT_NAME = "ipl.stylegan2"
FORMAT_VERSION = 1
# A legacy (non-zip) torch.save file starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def check_device(device: Union[str, torch.device]) -> torch.device:
    """Parse a device, failing clearly when CUDA is asked for but absent."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise IPLError(f"invalid device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise IPLError(f"device {str(device)!r} requested but no CUDA GPU is available on this machine; use "
                       f"device='cpu' (--device cpu)")
    return dev


def sniff_format(path: PathLike) -> str:
    """'safetensors', 'torch' (zip or legacy torch.save) or 'pickle', from the file's first bytes."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: file not found; expected a StyleGAN2 checkpoint (.pt, .pkl or .safetensors)")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; expected a checkpoint file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
    if size == 0:
        raise CheckpointError(f"{path}: file is empty; re-download or re-export the checkpoint")
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 0 < n < size:
            return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    raise CheckpointError(f"{path}: unrecognised file content (not a torch checkpoint, pickle or safetensors "
                          f"file); expected a StyleGAN2 checkpoint: rosinality .pt, NVIDIA .pkl or ipl .safetensors")


def pickle_format(path: PathLike) -> str:
    """'nvidia-tf-pkl' (NVIDIA's TensorFlow network pickles: their first global is dnnlib.tflib's Network) or
    'nvidia-pkl' (PyTorch network pickles), from the pickle's opcodes; nothing is unpickled."""
    from ipl.generators.stylegan2.safe_pickle import first_global

    found = first_global(path)
    return "nvidia-tf-pkl" if found is not None and found[0].startswith("dnnlib.tflib") else "nvidia-pkl"


def _torch_load(path: Path) -> Any:
    """torch.load in weights-only mode (argparse.Namespace allowed for rosinality's 'args')."""
    import argparse
    import pickle
    import zipfile

    if zipfile.is_zipfile(path):
        # torch does not check the zip's CRCs; a flipped byte in tensor data would load silently.
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise CheckpointError(f"{path}: the torch checkpoint is truncated or corrupt ({e}); re-download or "
                                  f"re-export it") from None
        if bad is not None:
            raise CheckpointError(f"{path}: the torch checkpoint is corrupt (checksum mismatch in '{bad}'); "
                                  f"re-download or re-export it")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" in msg or "not an allowed global" in msg or "GLOBAL" in msg:
            name = msg.split("GLOBAL", 1)[1].split()[0] if "GLOBAL" in msg else "?"
            raise UnsafePickleError(f"{path}: refused to load: the checkpoint asks for the global '{name}', which "
                                    f"is not allowed in weights-only mode. Nothing from the file was executed.") from None
        raise CheckpointError(f"{path}: the torch checkpoint is corrupt ({e}); re-download or re-export it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError) as e:
        raise CheckpointError(f"{path}: the torch checkpoint is truncated or corrupt ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); re-download or re-export it") from None


def read_native_header(path: PathLike) -> dict[str, str]:
    """The safetensors header metadata of `path` (empty dict if none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"{path}: corrupt safetensors file ({e}); re-export it") from None


def load_native(path: PathLike) -> Generator:
    """Load our safetensors + JSON-config format."""
    from safetensors.torch import load_file

    path = Path(path)
    header = read_native_header(path)
    if header.get("ipl.format") != FORMAT_NAME:
        found = header.get("ipl.format", "no 'ipl.format' entry")
        raise CheckpointError(f"{path}: safetensors file is not an ipl StyleGAN2 generator ({found}); expected "
                              f"'ipl.format' = '{FORMAT_NAME}' in its metadata")
    raw_version = header.get("ipl.format_version")
    if not (isinstance(raw_version, str) and raw_version.isdigit() and 1 <= int(raw_version)):
        raise field_error(path, "ipl.format_version", f"an integer format version (1..{FORMAT_VERSION})",
                          raw_version if raw_version is not None else MISSING)
    version = int(raw_version)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: ipl.format_version: expected a format version this ipl understands "
                              f"(1..{FORMAT_VERSION}), got {version}: the file is newer; upgrade ipl")
    parsed = {}
    for key, default in (("ipl.config", None), ("ipl.metadata", "{}")):
        text = header.get(key, default)
        if text is None:
            raise field_error(path, key, "a JSON object of generator settings", MISSING)
        try:
            parsed[key] = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise field_error(path, key, f"a JSON object ({type(e).__name__}: {e})", text) from None
        if not isinstance(parsed[key], dict):
            raise field_error(path, key, "a JSON object", parsed[key])
    config, metadata = parsed["ipl.config"], parsed["ipl.metadata"]
    # The architecture is checked before any tensor is read or any layer allocated.
    kwargs = check_generator_config(config, path, prefix="ipl.config.")
    try:
        state = load_file(str(path), device="cpu")
    except Exception as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors data ({e}); re-export it") from None
    try:
        G = Generator(**kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as e:
        raise CheckpointError(f"{path}: invalid generator config {config} ({e})") from None
    load_state(G, {k: v.to(torch.float32) for k, v in state.items()}, path)
    G.metadata = metadata
    return G


def save(G: Generator, path: PathLike, metadata: Optional[dict[str, Any]] = None) -> Path:
    """Write G atomically in our format (safetensors + JSON config + metadata); returns the path.

    The same generator and metadata always give the same bytes (ipl.core.atomic.save_safetensors)."""
    from ipl.core.atomic import save_safetensors

    if not isinstance(G, Generator):
        raise TypeError(f"generators.save expects a StyleGAN2 Generator, got {type(G).__name__}")
    path = Path(path)
    meta = dict(G.metadata)
    meta.update(metadata or {})
    header = {
        "ipl.format": FORMAT_NAME,
        "ipl.format_version": str(FORMAT_VERSION),
        "ipl.config": json.dumps(G.config),
        "ipl.metadata": json.dumps(meta, default=str),
    }
    # Per-layer FIR copies are derived on load; store each tensor once, contiguous, on CPU.
    state = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in G.state_dict().items()
             if not (k.endswith(".resample_filter") and k.count(".") > 2)}
    save_safetensors(state, path, metadata=header)
    return path


def load(path: PathLike, device: Union[str, torch.device] = "cpu") -> Generator:
    """Load a StyleGAN2 generator from rosinality .pt, NVIDIA .pkl (PyTorch or TensorFlow) or our .safetensors
    (detected by content)."""
    dev = check_device(device)
    path = Path(path)
    kind = sniff_format(path)
    if kind == "safetensors":
        G = load_native(path)
    elif kind == "torch":
        ckpt = _torch_load(path)
        if isinstance(ckpt, dict) and ("G_ema" in ckpt or "G" in ckpt):
            raise CheckpointError(f"{path}: holds NVIDIA-style 'G_ema' objects in a torch.save file; expected an "
                                  f"NVIDIA .pkl network snapshot or a rosinality checkpoint")
        G = convert_rosinality(ckpt, path)
        G.metadata = {"converted_from": {"format": "rosinality", "path": str(path)}}
    elif pickle_format(path) == "nvidia-tf-pkl":
        from ipl.generators.stylegan2.nvidia_tf import load_nvidia_tf_pickle

        G = load_nvidia_tf_pickle(path)
        G.metadata = {"converted_from": {"format": "nvidia-tf-pkl", "path": str(path)}}
    else:
        from ipl.generators.stylegan2.nvidia import load_nvidia_pickle

        G = load_nvidia_pickle(path)
        G.metadata = {"converted_from": {"format": "nvidia-pkl", "path": str(path)}}
    return G.eval().to(dev)
