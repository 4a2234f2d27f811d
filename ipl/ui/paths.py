"""What the page may touch: run folders inside the runs folder, checkpoints inside the runs folder or the model
cache, never a path reached through `..` or a symlink out of them."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ipl.core.errors import IPLError
from ipl.runlock import pid_alive

UI_DIR = ".ipl-ui"   # the page's own scratch folder inside the runs folder (Gradio's cache, sample images)
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


class PathRefused(IPLError):
    """A name or path the page was given leads outside the folders it may use."""


@dataclass
class Roots:
    """The folders the page may read (runs, model cache, extra files the operator named) and write (runs)."""

    runs: Path
    cache: Path
    extra_files: list[Path] = field(default_factory=list)   # e.g. `ipl ui --source FILE`: trusted, named by the operator
    scratch: Path = Path()   # this page's own folder, RUNS/.ipl-ui/<pid>: Gradio's uploads and cache, rendered PNGs

    @classmethod
    def make(cls, runs: "str | os.PathLike", cache: "str | os.PathLike",
             extra_files: Sequence["str | os.PathLike"] = ()) -> "Roots":
        """Absolute, symlink-free roots (the runs folder is created if missing)."""
        runs = Path(runs).expanduser()
        runs.mkdir(parents=True, exist_ok=True)
        runs = runs.resolve()
        return cls(runs=runs, cache=Path(cache).expanduser().resolve(),
                   extra_files=[Path(p).expanduser().resolve() for p in extra_files],
                   scratch=runs / UI_DIR / str(os.getpid()))

    def clean_scratch(self) -> None:
        """Remove the scratch folders of pages that no longer run (and this page's own, to start empty)."""
        import shutil

        parent = self.runs / UI_DIR
        if parent.is_symlink() or not parent.is_dir():
            return
        for p in parent.iterdir():
            if p.is_dir() and not p.is_symlink() and p.name.isdigit() and (
                    p == self.scratch or not pid_alive(int(p.name))):
                shutil.rmtree(p, ignore_errors=True)

    @property
    def readable(self) -> list[Path]:
        """Folders a typed path may name: the runs folder and the model cache."""
        return [self.runs, self.cache]

    def check_run_source(self, folder: Path, config: dict) -> None:
        """A run's source checkpoint (config.json resolved.source_path) is read for sampling and editing: it must
        lie in the runs folder, the model cache or ipl's shipped assets, or be the file named by `ipl ui --source`."""
        from ipl.core.assets import shipped

        resolved = config.get("resolved") if isinstance(config.get("resolved"), dict) else {}
        source = str(resolved.get("source_path") or "")
        if not source:
            raise PathRefused(f"{folder / 'config.json'} names no source checkpoint (resolved.source_path)")
        if Path(source).expanduser().resolve() in self.extra_files:
            return
        try:
            contained(source, [*self.readable, shipped("").resolve()], what=f"the source of run {folder.name!r}")
        except PathRefused as e:
            raise PathRefused(f"{e}. Start the page with `ipl ui --source {source}` to let it read that file") from None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def contained(path: "str | os.PathLike", roots: Sequence[Path], what: str = "path") -> Path:
    """`path` resolved (symlinks followed), if it lies inside one of `roots` and is written without `..`; else
    PathRefused. A symlink pointing out of the roots resolves outside them and is refused."""
    raw = Path(path).expanduser()
    if ".." in raw.parts:
        raise PathRefused(f"{what} {str(path)!r}: '..' is not allowed; use a path inside "
                          + " or ".join(str(r) for r in roots))
    resolved = (raw if raw.is_absolute() else Path.cwd() / raw).resolve()
    if any(_inside(resolved, root) for root in roots):
        return resolved
    raise PathRefused(f"{what} {str(path)!r} is outside the folders this page may use ("
                      + ", ".join(str(r) for r in roots) + "), or a symlink out of them; refused")


def check_run_name(name: str) -> str:
    """A run folder's name: one plain path component (letters, digits, . _ + -), not hidden, no separators."""
    name = str(name or "").strip()
    if not _RUN_NAME.fullmatch(name) or name in (".", ".."):
        raise PathRefused(f"run name {name!r} refused: use one folder name of letters, digits, '.', '_', '+', '-' "
                          "(no '/', no '..', not starting with '.'); it is created inside the runs folder")
    return name


def run_dir(roots: Roots, name: str, must_exist: bool = True) -> Path:
    """RUNS/<name> for a run name chosen on the page; refuses traversal, symlinked folders and the scratch folder."""
    name = check_run_name(name)
    path = roots.runs / name
    if path.is_symlink():
        raise PathRefused(f"run {name!r}: {path} is a symlink; the page only opens real folders inside {roots.runs}")
    if must_exist and not path.is_dir():
        raise PathRefused(f"run {name!r}: no such run folder in {roots.runs}")
    if path.resolve().parent != roots.runs:
        raise PathRefused(f"run {name!r} is not a folder directly inside {roots.runs}; refused")
    return path


def run_file(roots: Roots, name: str, relative: str) -> Path:
    """A file inside a run folder (e.g. samples/final.png) that is a real file there, not a symlink out."""
    folder = run_dir(roots, name)
    path = contained(folder / relative, [folder.resolve()], what=f"file of run {name!r}")
    if not path.is_file():
        raise PathRefused(f"run {name!r} has no file {relative}")
    return path


def list_run_names(roots: Roots) -> list[str]:
    """Names of the run folders directly inside the runs folder (real folders holding config.json), sorted."""
    out = []
    try:
        entries = sorted(roots.runs.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
    for p in entries:
        if p.name.startswith(".") or p.is_symlink() or not p.is_dir() or not _RUN_NAME.fullmatch(p.name):
            continue
        cfg = p / "config.json"
        if cfg.is_file() and not cfg.is_symlink():
            out.append(p.name)
    return out


def checkpoint_path(roots: Roots, text: str) -> Path:
    """A local checkpoint typed on the page: inside the runs folder or the model cache (or named by the operator
    on the command line)."""
    raw = Path(str(text).strip()).expanduser()
    if raw.is_absolute() and raw.resolve() in roots.extra_files and ".." not in raw.parts:
        return raw.resolve()
    path = contained(raw, roots.readable, what="checkpoint")
    if path in roots.extra_files:
        return path
    if not path.exists():
        raise PathRefused(f"checkpoint {text!r}: no such file or folder")
    return path


_WEIGHT_SUFFIXES = (".json", ".safetensors", ".pt", ".pth", ".bin", ".pkl")
_SCHEMES = ("hf-hub:",)


def _looks_like_path(part: Optional[str]) -> bool:
    if not part:
        return False
    if part.lower().startswith(_SCHEMES):
        return False
    return (part.startswith(("/", "~", ".")) or "/" in part or "\\" in part or part.lower().endswith(_WEIGHT_SUFFIXES)
            or Path(part).exists())


def check_clip_spec(roots: Roots, spec: str) -> str:
    """A CLIP spec NAME[:PRETRAINED][@WEIGHT] typed on the page: every file it names is inside the allowed folders;
    relative file names are made absolute."""
    from ipl.method.clip import parse_clip_spec

    parsed = parse_clip_spec(spec)
    name, pretrained = parsed.name, parsed.pretrained
    if _looks_like_path(name):
        name = str(contained(name, roots.readable, what="CLIP config"))
    if _looks_like_path(pretrained):
        pretrained = str(contained(pretrained, roots.readable, what="CLIP weights"))
    text = name + (f":{pretrained}" if pretrained else "")
    return text + (f"@{parsed.weight:g}" if "@" in spec.strip() else "")
