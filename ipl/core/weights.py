"""Where the metric networks' pretrained weights live, and a clear error when they are not there.

Every metric backbone (Inception for FID/KID/IS, AlexNet/VGG/SqueezeNet for LPIPS) is looked up in the
place its library downloads to (torch hub's ``checkpoints`` folder), or taken from an explicit path.
A download is attempted only when the process is not offline (``IPL_OFFLINE`` / ``HF_HUB_OFFLINE`` unset)
and the caller allows it; any failure becomes a `WeightsNotFoundError` that names the file, the URL and
the folder to put it in.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import torch

from ipl.core.errors import WeightsNotFoundError

OFFLINE_VARS = ("IPL_OFFLINE", "HF_HUB_OFFLINE")


@dataclass(frozen=True)
class WeightsFile:
    """One pretrained weights file a metric needs."""

    name: str         # what it is, for messages ("Inception-v3 (torch-fidelity FID/KID/IS)")
    url: str          # where its library downloads it from
    option: str       # the CLI option that points at a local copy instead ("--inception-weights")

    @property
    def filename(self) -> str:
        """The file name the library stores it under."""
        return os.path.basename(urlparse(self.url).path)


def offline() -> bool:
    """True when downloads are disabled by environment (IPL_OFFLINE=1 or HF_HUB_OFFLINE=1)."""
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in OFFLINE_VARS)


def hub_checkpoints_dir() -> Path:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), where torchvision/torch-fidelity cache."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _missing_message(spec: WeightsFile, target: Path, reason: str) -> str:
    return (f"{spec.name} weights not found: {reason}. Download {spec.url} and place it at {target} "
            f"(torch hub's checkpoints folder; set TORCH_HOME to move it), or pass a local copy with "
            f"{spec.option} PATH. Only for a smoke test: --allow-random-weights (its numbers are not results).")


def resolve_weights(spec: WeightsFile, path: Optional[str] = None, download: bool = True) -> Path:
    """Path of a local copy of `spec`: the explicit `path`, else the hub cache, else a download if allowed."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(
                f"{spec.name} weights file {p} (given with {spec.option}) does not exist. Expected the file "
                f"{spec.filename} from {spec.url}.")
        return p
    target = hub_checkpoints_dir() / spec.filename
    if target.is_file():
        return target
    if not download or offline():
        why = "offline mode (IPL_OFFLINE/HF_HUB_OFFLINE is set)" if offline() else "downloads are disabled"
        raise WeightsNotFoundError(_missing_message(spec, target, f"{target} is missing and {why}"))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(spec.url, str(target), progress=True)
    except Exception as e:  # any network / filesystem failure means: not available here
        raise WeightsNotFoundError(_missing_message(spec, target, f"downloading failed ({type(e).__name__}: {e})"))
    return target
