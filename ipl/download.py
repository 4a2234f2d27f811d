"""Downloads into the cache: progress bar, resume of a partial file (HTTP Range), SHA-256 record + check."""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Union

from ipl.core.errors import CheckpointError, IPLError, WeightsNotFoundError
from ipl.core.family import sha256_file
from ipl.registry import SourceEntry, cache_path, family_of

CHUNK = 1 << 20


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def recorded_sha256(path: Union[str, Path]) -> Optional[str]:
    """The SHA-256 recorded when `path` was downloaded, if any."""
    side = _sidecar(Path(path))
    if side.is_file():
        return side.read_text().split()[0].strip().lower() or None
    return None


def verify(path: Union[str, Path], expected: Optional[str]) -> str:
    """Hash `path`; raise CheckpointError if it differs from `expected` (when given). Returns the hash."""
    digest = sha256_file(path)
    if expected is not None and digest != expected.lower():
        raise CheckpointError(
            f"{path}: SHA-256 {digest} does not match the expected {expected}. The file is corrupt or "
            f"was replaced; delete it (and {_sidecar(Path(path)).name} next to it) and download again.")
    return digest


def download(url: str, dest: Union[str, Path], expected_sha256: Optional[str] = None,
             progress: bool = True, timeout: float = 30.0) -> Path:
    """Fetch `url` to `dest`, resuming `dest.part` if present; record then verify the SHA-256.

    The finished file appears at `dest` only once complete (rename from .part) and its hash is
    written to `dest.sha256`; later uses are checked against that record.
    """
    from ipl.core.atomic import write_text

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "ipl-downloader"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # nothing left to fetch: the partial file is already complete
            resp = None
        else:
            raise WeightsNotFoundError(_offline_message(url, dest, f"HTTP {e.code} {e.reason}")) from None
    except (urllib.error.URLError, OSError) as e:
        raise WeightsNotFoundError(_offline_message(url, dest, str(getattr(e, "reason", e)))) from None

    if resp is not None:
        with resp:
            if start and resp.status != 206:  # server ignored the Range header: start over
                start = 0
            length = resp.headers.get("Content-Length")
            total = int(length) + start if length is not None else None
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                           desc=dest.name)
            try:
                with open(part, "ab" if start else "wb") as fh:
                    while True:
                        block = resp.read(CHUNK)
                        if not block:
                            break
                        fh.write(block)
                        if bar is not None:
                            bar.update(len(block))
                    fh.flush()
                    os.fsync(fh.fileno())
            except (urllib.error.URLError, OSError) as e:
                raise WeightsNotFoundError(
                    f"download of {url} was interrupted ({e}); the partial file {part} is kept and the "
                    "next attempt resumes it") from None
            finally:
                if bar is not None:
                    bar.close()
            if total is not None and part.stat().st_size != total:
                raise WeightsNotFoundError(
                    f"download of {url} ended early ({part.stat().st_size} of {total} bytes); the partial "
                    f"file {part} is kept and the next attempt resumes it")
    try:
        digest = verify(part, expected_sha256)
    except CheckpointError:
        part.unlink(missing_ok=True)  # a wrong hash cannot be fixed by resuming
        raise
    os.replace(part, dest)
    write_text(_sidecar(dest), f"{digest}  {dest.name}\n")
    return dest


def _offline_message(url: str, dest: Path, why: str) -> str:
    return (f"cannot download {url} ({why}). If this machine is offline, fetch that URL elsewhere and "
            f"place the file at exactly {dest} (the cache is $IPL_HOME, default ~/.cache/ipl), then run again.")


def ensure_source(entry: SourceEntry, allow_download: bool = True, progress: bool = True) -> tuple[Path, str]:
    """Local path and SHA-256 of a registry entry's checkpoint, downloading it if allowed and needed."""
    located = family_of(entry).locate(entry.name, allow_download and not os.environ.get("IPL_OFFLINE"))
    if located is not None:  # a family that keeps its sources itself (e.g. Hugging Face snapshots)
        return located
    if not entry.readable:
        raise IPLError(f"source {entry.name!r} is a {entry.format} file, which ipl cannot read yet; "
                       "choose another source (see `ipl models list`)")
    path = cache_path(entry)
    if not path.is_file():
        if entry.url is None:
            raise WeightsNotFoundError(f"the shipped file for source {entry.name!r} is missing: expected "
                                       f"{path}. Reinstall ipl (it ships as package data) or rebuild it (scripts/toy/build_toy_*.py).")
        if not allow_download or os.environ.get("IPL_OFFLINE"):
            raise WeightsNotFoundError(
                f"source {entry.name!r} is not in the cache. Download {entry.url} and place it at exactly "
                f"{path} (or run `ipl models download {entry.name}`).")
        download(entry.url, path, expected_sha256=entry.sha256, progress=progress)
    expected = entry.sha256 or recorded_sha256(path)
    digest = verify(path, expected)
    return path, digest
