"""The StyleGAN2 family: NVIDIA's and rosinality's checkpoints and our own, the published FFHQ/AFHQ/... models."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from ipl.core.config import default_layers
from ipl.core.errors import CheckpointError
from ipl.core.family import GeneratorFamily, SourceEntry
from ipl.core.interface import AdaptableGenerator

# File names a folder (e.g. a run folder) may hold its generator under, in order of preference.
GENERATOR_FILENAMES = ("generator.safetensors", "G.safetensors", "generator.pt", "generator.pkl")

_ADA = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/{}.pkl"
_NGC = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/stylegan2-{}.pkl"
_TF = "https://nvlabs-fi-cdn.nvidia.com/stylegan2/networks/stylegan2-{}-config-f.pkl"


def _entry(name: str, url: str, fmt: str, res: int, text: str, desc: str) -> SourceEntry:
    return SourceEntry(name=name, family=StyleGAN2Family.name, url=url, format=fmt, resolution=res,
                       source_text=text, layers=default_layers(res), description=desc,
                       filename=f"{name}.pkl")


def resolve_generator_file(path_or_dir: Union[str, Path]) -> Path:
    """A checkpoint file itself, or the generator file inside a folder (a run folder, an export folder)."""
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


class StyleGAN2Family(GeneratorFamily):
    """StyleGAN2 (config-f and smaller) in four formats: rosinality .pt, NVIDIA .pkl (PyTorch and the original
    TensorFlow release), ipl .safetensors."""

    name = "stylegan2"
    fallback = True  # any file: its format is sniffed on load, with a clear error when it is none of ours

    def entries(self) -> list[SourceEntry]:
        return [
            # stylegan2-ada-pytorch
            _entry("ffhq", _ADA.format("ffhq"), "nvidia-pkl", 1024, "photo", "FFHQ faces, stylegan2-ada-pytorch"),
            _entry("metfaces", _ADA.format("metfaces"), "nvidia-pkl", 1024, "painting",
                   "MetFaces portraits, stylegan2-ada-pytorch"),
            _entry("afhqcat", _ADA.format("afhqcat"), "nvidia-pkl", 512, "cat", "AFHQ cats, stylegan2-ada-pytorch"),
            _entry("afhqdog", _ADA.format("afhqdog"), "nvidia-pkl", 512, "dog", "AFHQ dogs, stylegan2-ada-pytorch"),
            _entry("afhqwild", _ADA.format("afhqwild"), "nvidia-pkl", 512, "animal",
                   "AFHQ wild animals, stylegan2-ada-pytorch"),
            # NGC StyleGAN2 (stylegan3 release)
            _entry("ngc-ffhq", _NGC.format("ffhq-1024x1024"), "nvidia-pkl", 1024, "photo",
                   "FFHQ faces, NGC StyleGAN2"),
            _entry("ngc-ffhqu", _NGC.format("ffhqu-256x256"), "nvidia-pkl", 256, "photo",
                   "FFHQ-U (unaligned) faces 256 px, NGC StyleGAN2"),
            _entry("ngc-afhqv2", _NGC.format("afhqv2-512x512"), "nvidia-pkl", 512, "animal",
                   "AFHQv2 animals, NGC StyleGAN2"),
            _entry("ngc-metfaces", _NGC.format("metfaces-1024x1024"), "nvidia-pkl", 1024, "painting",
                   "MetFaces portraits, NGC StyleGAN2"),
            # NVIDIA's original TensorFlow releases (stylegan2 TF, read without TensorFlow: nvidia_tf.py)
            _entry("tf-ffhq", _TF.format("ffhq"), "nvidia-tf-pkl", 1024, "photo", "FFHQ faces, original TF"),
            _entry("church", _TF.format("church"), "nvidia-tf-pkl", 256, "church", "LSUN churches, original TF"),
            _entry("car", _TF.format("car"), "nvidia-tf-pkl", 512, "car", "LSUN cars (512x384), original TF"),
            _entry("cat", _TF.format("cat"), "nvidia-tf-pkl", 256, "cat", "LSUN cats, original TF"),
            _entry("horse", _TF.format("horse"), "nvidia-tf-pkl", 256, "horse", "LSUN horses, original TF"),
        ]

    def claims(self, path: Path) -> bool:
        """Any file (its format is sniffed on load, with a clear error if unknown), or a folder holding one
        generator file."""
        if path.is_file():
            return True
        try:
            return resolve_generator_file(path).is_file()
        except CheckpointError:
            return False

    def load(self, path: Path, device: Union[str, torch.device] = "cpu") -> AdaptableGenerator:
        from ipl.generators.stylegan2.adapter import StyleGAN2Adapter
        from ipl.generators.stylegan2.checkpoints import load

        return StyleGAN2Adapter(load(resolve_generator_file(path), device=device))
