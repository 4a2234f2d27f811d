"""A generator family as a plugin: which sources it claims, how it loads them, its registry entries and defaults.

The product resolves a source once per run to one family (`ipl.generators.family_for`) and from then on talks to
the loaded `AdaptableGenerator` only. A new family (StyleGAN3, StyleGAN-XL, ...) is one folder under generators/
with a `GeneratorFamily` subclass, and one line in the family table (generators/__init__.py).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ipl.core.integrity import sha256_file
from ipl.core.interface import AdaptableGenerator

PathLike = Union[str, Path]


@dataclass(frozen=True)
class SourceEntry:
    """One known source generator of the registry and the defaults a run takes from it."""

    name: str                         # registry key, e.g. "ffhq"
    family: str                       # the GeneratorFamily.name that reads it ("stylegan2", "diffusion", "toy")
    url: Optional[str]                # where to get it (a file URL or a Hugging Face page); None: shipped
    format: str                       # "nvidia-pkl" | "nvidia-tf-pkl" | "ipl" | "diffusers"
    resolution: int                   # output resolution in pixels
    source_text: str                  # default --source-text
    layers: int                       # default --layers (adaptive freezing k; 0: the generator has no layers)
    truncation: float = 1.0           # training truncation (stage 1 and 2; the paper uses 1.0)
    sample_truncation: float = 0.7    # a good default for `ipl sample`
    clip: tuple[str, ...] = ("ViT-B-32:openai",)  # default --clip specs
    sha256: Optional[str] = None      # expected SHA-256 if published (none upstream; recorded on first use)
    size: Optional[int] = None        # expected file size in bytes, checked after download and on every use;
                                      # None where not known for certain (no sizes are published upstream)
    shipped: Optional[str] = None     # file or folder shipped as package data, relative to ipl/assets/
    readable: bool = True             # False: format not read yet (listed for completeness)
    description: str = ""
    filename: str = field(default="", compare=False)  # cache file name (or Hugging Face repo id)
    # AdaptConfig defaults this source changes (e.g. fewer iterations for the CPU toy); a flag given on the
    # command line always wins. Keys are AdaptConfig field names (a test checks them).
    run_defaults: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        d = asdict(self)
        d["clip"] = list(self.clip)
        return d


class GeneratorFamily(ABC):
    """A kind of generator: its registry entries, the files and folders it reads, how it loads them."""

    #: Short name, stored in SourceEntry.family.
    name: str = ""
    #: A reader of last resort (claims any file, to say clearly what is wrong with it): asked after the others.
    fallback: bool = False

    @abstractmethod
    def entries(self) -> list[SourceEntry]:
        """The registry entries this family provides."""

    @abstractmethod
    def claims(self, path: Path) -> bool:
        """True if this family reads the existing file or folder `path` (decided by content, not by name)."""

    @abstractmethod
    def load(self, path: Path, device: Union[str, torch.device] = "cpu") -> AdaptableGenerator:
        """Load a claimed file or folder (a source checkpoint, an adapted model, a run folder) for the trainer."""

    def claims_name(self, name: str) -> bool:
        """True for a source name outside the registry that this family finds itself (e.g. a hub repo id)."""
        return False

    def locate(self, source: str, allow_download: bool) -> Optional[tuple[Path, str]]:
        """(local path, fingerprint) of a source this family finds itself: its registry entries that are not a
        single cached file (hub snapshots) and names it claims. None: the registry's file cache applies."""
        return None

    def fingerprint(self, path: Path) -> str:
        """What a run records to recognise its source later: the SHA-256 of the file (a family of folders
        overrides this)."""
        return sha256_file(path)

    def run_defaults(self, path: Path) -> dict[str, Any]:
        """AdaptConfig defaults for a source given by path (registry names use their entry's run_defaults)."""
        return {}
