"""The diffusion family: pixel DDPMs (diffusers UNet2DModel + DDIM) and the models `ipl adapt` makes of them."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch

from ipl.core.family import GeneratorFamily, SourceEntry
from ipl.core.interface import AdaptableGenerator


class DiffusionFamily(GeneratorFamily):
    """Diffusers folders (pipeline or bare UNet), Hugging Face repo ids, ipl diffusion files, their run folders."""

    name = "diffusion"

    def entries(self) -> list[SourceEntry]:
        from . import ENTRIES

        return list(ENTRIES)

    def claims(self, path: Path) -> bool:
        from . import is_diffusion_checkpoint

        return is_diffusion_checkpoint(path)

    def claims_name(self, name: str) -> bool:
        """A bare Hugging Face repo id of a pixel DDPM (google/ddpm-...)."""
        return name.strip().startswith("google/ddpm")

    def load(self, path: Path, device: Union[str, torch.device] = "cpu") -> AdaptableGenerator:
        from . import load

        return load(path, device=device)

    def locate(self, source: str, allow_download: bool) -> Optional[tuple[Path, str]]:
        """Registry names (hub snapshots, the shipped toy DDPM) and hub ids: (folder, SHA-256 over its files)."""
        from . import resolve

        return resolve(source, allow_download=allow_download)

    def fingerprint(self, path: Path) -> str:
        """SHA-256 over a folder's weight and config files (or the one file), as `locate` records it."""
        from . import resolve

        return resolve(path)[1]

    def run_defaults(self, path: Path) -> dict[str, Any]:
        from . import run_defaults_for_path

        return run_defaults_for_path(path)
