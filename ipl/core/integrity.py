"""File integrity: SHA-256 of a file, and a Hugging Face hub snapshot checked against the hashes the hub published."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Union

from ipl.core.errors import CheckpointError

PathLike = Union[str, Path]


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1()
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_hub_snapshot(folder: Union[str, Path]) -> int:
    """Check each file of a Hugging Face cache snapshot against the hash the hub published for it.

    In the hub cache every file of `snapshots/<commit>/` links to `blobs/<etag>` (which may link on into the
    cache-wide store of Xet files, named by their Xet hash), and the hub's etag of a file is its SHA-256 (LFS /
    Xet files: the weights) or its git blob SHA-1 (small files: configs). huggingface_hub checks only the size
    of what it downloads, so this recomputes both. A file that does not match is deleted (the snapshot link, the
    blob and what it links to: that content is wrong for every repo) so that the next download fetches it
    again, and CheckpointError says which. Files that are not links (a `--local-dir` copy, a system without
    symlinks) carry no hash and are skipped. Returns the number of files checked.
    """
    folder = Path(folder)
    bad: list[tuple[Path, str, str]] = []
    checked = 0
    for f in sorted(p for p in folder.rglob("*") if p.is_symlink() and p.is_file()):
        etag = Path(os.readlink(f)).name  # the first link's target: blobs/<etag>
        if re.fullmatch(r"[0-9a-f]{64}", etag):
            digest = sha256_file(f)
        elif re.fullmatch(r"[0-9a-f]{40}", etag):
            digest = _git_blob_sha1(f)
        else:
            continue
        checked += 1
        if digest != etag:
            bad.append((f, etag, digest))
    for f, _, _ in bad:
        blob = f.parent / os.readlink(f)
        f.resolve().unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        f.unlink(missing_ok=True)
    if bad:
        listing = "; ".join(f"{f.relative_to(folder)}: hub hash {etag}, file {digest}" for f, etag, digest in bad)
        raise CheckpointError(f"{folder}: {len(bad)} downloaded file(s) do not match the hash the Hugging Face hub "
                              f"published for them and were deleted ({listing}). Download again.")
    return checked
