"""Image generators as plugins (ipl.core.family.GeneratorFamily): the family table, and loading by family.

Installed as `ipl.generators`. A source (registry name, file, folder) is resolved to one family once per run;
adding a family is one folder under generators/ and one line in FAMILIES.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ipl.core.errors import CheckpointError, IPLError
from ipl.core.family import GeneratorFamily
from ipl.core.interface import AdaptableGenerator
from ipl.generators.diffusion.family import DiffusionFamily
from ipl.generators.stylegan2.family import GENERATOR_FILENAMES, StyleGAN2Family, resolve_generator_file
from ipl.generators.toy.family import ToyFamily

PathLike = Union[str, os.PathLike]

# The family table (also the registry's listing order). A file or folder goes to the first family that claims it,
# a fallback family (StyleGAN2: any file, sniffed on load) only when no other does.
FAMILIES: tuple[GeneratorFamily, ...] = (ToyFamily(), StyleGAN2Family(), DiffusionFamily())

__all__ = ["FAMILIES", "GENERATOR_FILENAMES", "family_named", "family_for_path", "load_adaptable", "load", "save",
           "resolve_generator_file"]


def family_named(name: str) -> GeneratorFamily:
    """The family called `name` (SourceEntry.family)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise IPLError(f"no generator family {name!r}; known: {', '.join(f.name for f in FAMILIES)}")


def family_for_path(path: PathLike) -> GeneratorFamily:
    """The first family that reads this existing file or folder; a clear error if none does."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint file or folder")
    for family in sorted(FAMILIES, key=lambda f: f.fallback):  # stable: table order within each group
        if family.claims(p):
            return family
    what = "folder has no generator file" if p.is_dir() else "not a generator file"
    raise CheckpointError(f"{p}: {what} any family reads ({', '.join(f.name for f in FAMILIES)}): expected "
                          "a StyleGAN2 checkpoint (.pt rosinality, .pkl NVIDIA, .safetensors ipl), a diffusers folder, "
                          "an ipl diffusion .safetensors, or a run folder holding one")


def load_adaptable(path_or_dir: PathLike, device: Union[str, torch.device] = "cpu") -> AdaptableGenerator:
    """Load any supported generator file or folder (run folders included) for the trainer, by its family."""
    return family_for_path(path_or_dir).load(Path(path_or_dir).expanduser(), device=device)


def load(path: PathLike, device: Union[str, torch.device] = "cpu"):
    """Load a StyleGAN2 Generator network; format (rosinality .pt, NVIDIA .pkl, ipl .safetensors) detected by
    content. A folder (e.g. a run folder) means the generator file inside it."""
    from ipl.generators.stylegan2.checkpoints import load as _load

    return _load(resolve_generator_file(path), device=device)


def save(G, path: PathLike, metadata: Optional[dict[str, Any]] = None) -> Path:
    """Write a StyleGAN2 Generator network in the project's format (safetensors + JSON config), atomically."""
    from ipl.generators.stylegan2.checkpoints import save as _save

    return _save(G, path, metadata)
