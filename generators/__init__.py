"""Image generators behind small interfaces: StyleGAN2 (three checkpoint formats), diffusion, the toy world."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

PathLike = Union[str, os.PathLike]

# File names a folder (e.g. a run folder) may hold its generator under, in order of preference.
GENERATOR_FILENAMES = ("generator.safetensors", "G.safetensors", "generator.pt", "generator.pkl")


def load(path: PathLike, device: Union[str, torch.device] = "cpu"):
    """Load a StyleGAN2 Generator; format (rosinality .pt, NVIDIA .pkl, ipl .safetensors) detected by content.
    A folder (e.g. a run folder) means the generator file inside it."""
    from generators.stylegan2.checkpoints import load as _load

    return _load(resolve_generator_file(path), device=device)


def save(G, path: PathLike, metadata: Optional[dict[str, Any]] = None) -> Path:
    """Write a StyleGAN2 Generator in the project's format (safetensors + JSON config), atomically."""
    from generators.stylegan2.checkpoints import save as _save

    return _save(G, path, metadata)


def resolve_generator_file(path_or_dir: PathLike) -> Path:
    """A checkpoint file itself, or the generator file inside a folder."""
    from ipl.errors import CheckpointError

    path = Path(path_or_dir)
    if not path.is_dir():
        return path
    for name in GENERATOR_FILENAMES:
        if (path / name).is_file():
            return path / name
    candidates = sorted(p for ext in ("*.safetensors", "*.pt", "*.pkl") for p in path.glob(ext))
    if len(candidates) == 1:
        return candidates[0]
    raise CheckpointError(f"{path}: folder has no generator file (looked for {', '.join(GENERATOR_FILENAMES)}"
                          f"{'; several candidates: ' + ', '.join(p.name for p in candidates) if candidates else ''})")


def load_adaptable(path_or_dir: PathLike, device: Union[str, torch.device] = "cpu"):
    """Load any supported generator wrapped as an `ipl.interface.AdaptableGenerator`."""
    # Diffusion hook: generators/diffusion exposes is_diffusion_checkpoint(path) and load_adaptable(path, device).
    from generators import diffusion

    probe = getattr(diffusion, "is_diffusion_checkpoint", None)
    if probe is not None and probe(Path(path_or_dir)):
        return diffusion.load_adaptable(path_or_dir, device=device)

    from generators.stylegan2.adapter import StyleGAN2Adapter

    return StyleGAN2Adapter(load(resolve_generator_file(path_or_dir), device=device))
