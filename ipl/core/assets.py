"""Files the installed product needs at run time (the toy world's networks), found as package data."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ipl.core.errors import WeightsNotFoundError


def shipped(relative: str) -> Path:
    """The path of a file or folder under ipl/assets/ (e.g. "toy/generator.safetensors"), wherever ipl is installed.

    The path need not exist (callers say what is missing); it must be on the file system, which holds for
    every regular install (wheel, editable, conda). A zipped install cannot give torch a file path.
    """
    root = files("ipl").joinpath("assets")
    if not isinstance(root, Path):
        raise WeightsNotFoundError(f"ipl is installed as a zip archive ({root}); the shipped toy assets need a "
                                   "regular install: `pip install ipl` unpacks it")
    return root.joinpath(*relative.split("/"))
