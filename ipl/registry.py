"""Known source generators (the entries every generator family provides), where they live, their run defaults."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ipl import generators
from ipl.core.assets import shipped
from ipl.core.config import default_layers
from ipl.core.errors import IPLError
from ipl.core.family import GeneratorFamily, SourceEntry

__all__ = ["REGISTRY", "SourceEntry", "names", "get_source", "family_of", "ipl_home", "cache_path",
           "is_registry_name", "source_for_file", "run_defaults_for"]


def _collect() -> dict[str, SourceEntry]:
    """Every family's entries in family-table order, the ones ipl cannot read yet last."""
    entries = [e for family in generators.FAMILIES for e in family.entries()]
    for family in generators.FAMILIES:
        assert all(e.family == family.name for e in family.entries()), f"{family.name}: entry of another family"
    registry: dict[str, SourceEntry] = {}
    for entry in sorted(entries, key=lambda e: not e.readable):
        assert entry.name not in registry, f"registry name {entry.name!r} is given by two families"
        registry[entry.name] = entry
    return registry


REGISTRY: dict[str, SourceEntry] = _collect()


def names() -> list[str]:
    """Registry keys in listing order."""
    return list(REGISTRY)


def get_source(name: str) -> SourceEntry:
    """The entry for `name`; an IPLError listing the known names otherwise."""
    key = name.strip().lower()
    if key not in REGISTRY:
        raise IPLError(f"unknown source model {name!r}. Known sources: {', '.join(names())}. "
                       "Or pass a checkpoint path (.pt, .pkl, .safetensors) to --source.")
    return REGISTRY[key]


def family_of(entry: SourceEntry) -> GeneratorFamily:
    """The generator family that reads a registry entry."""
    return generators.family_named(entry.family)


def ipl_home() -> Path:
    """Cache root: $IPL_HOME, default ~/.cache/ipl."""
    return Path(os.environ.get("IPL_HOME") or Path.home() / ".cache" / "ipl").expanduser()


def cache_path(entry: SourceEntry) -> Path:
    """Where the entry's file lives: the installed package data for shipped ones, else $IPL_HOME/models/<file>."""
    if entry.shipped is not None:
        return shipped(entry.shipped)
    return ipl_home() / "models" / entry.filename


def is_registry_name(source: str) -> bool:
    """True if `source` names a registry entry (and is not an existing file)."""
    return source.strip().lower() in REGISTRY and not Path(source).is_file()


def source_for_file(path: str, resolution: int) -> SourceEntry:
    """A stand-in entry for a user checkpoint: generic defaults scaled to its resolution."""
    family = generators.family_for_path(path).name if Path(path).exists() else "stylegan2"
    return SourceEntry(name=Path(path).stem, family=family, url=None, format="file", resolution=int(resolution),
                       source_text="photo", layers=default_layers(int(resolution)), filename=Path(path).name,
                       description=f"user checkpoint {path}")


def run_defaults_for(source: str) -> dict[str, Any]:
    """AdaptConfig defaults a --source brings (flags given on the command line override them): a registry
    name's entry.run_defaults, or for a path the defaults of the family that reads it."""
    if is_registry_name(source):
        return dict(get_source(source).run_defaults)
    p = Path(source).expanduser()
    if not p.exists():
        return {}
    return generators.family_for_path(p).run_defaults(p)
