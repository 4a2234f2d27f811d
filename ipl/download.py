"""Downloads into the cache: progress bar, resume of a partial file (HTTP Range), size and SHA-256 checks.

No SHA-256 is published upstream for the registry's files, so the first download is recorded and later uses
are checked against that record. The record is only as good as that first download, so every reply is checked
before its bytes are kept: Content-Length and Content-Range must agree with what was asked for and with the
partial file; a resume re-fetches the last OVERLAP bytes of the `.part` and compares them; a file whose length
no reply confirmed is never recorded; an entry's expected size (SourceEntry.size) is checked when known.
`IPL_MIRROR` (a base URL) fetches every registry file from a copy of the lab's own.
"""
from __future__ import annotations

import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional, Union

from ipl.core.errors import CheckpointError, IPLError, WeightsNotFoundError
from ipl.core.integrity import sha256_file, verify_hub_snapshot  # noqa: F401  (part of this module's API)
from ipl.registry import SourceEntry, cache_path, family_of

CHUNK = 1 << 20
OVERLAP = 64 << 10   # bytes at the end of a .part fetched again on resume and compared with the server's copy
ATTEMPTS = 4         # requests one download() makes at most (restarts, resumes, the confirmation of a length)
MIRROR_ENV = "IPL_MIRROR"

_CONTENT_RANGE = re.compile(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*", re.IGNORECASE)


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


def source_url(entry: SourceEntry) -> Optional[str]:
    """Where a registry entry's file is fetched from: `$IPL_MIRROR/<file name>` when IPL_MIRROR is set (a lab's
    own copy: http(s):// or file://), else the entry's upstream URL. None for shipped entries."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if entry.url is None or not mirror:
        return entry.url
    return mirror.rstrip("/") + "/" + urllib.parse.quote(entry.filename)


def _notice(message: str) -> None:
    print(f"ipl: {message}", file=sys.stderr, flush=True)


def _content_range(value: Optional[str]) -> Optional[tuple[Optional[int], Optional[int], Optional[int]]]:
    """(first, last, total) of a Content-Range value ("bytes a-b/N", "bytes */N"; "*" -> None); None if invalid."""
    m = _CONTENT_RANGE.fullmatch(value or "")
    if m is None:
        return None
    a, b, n = m.groups()
    return (int(a) if a else None, int(b) if b else None, None if n == "*" else int(n))


def _int_header(value: Optional[str]) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class _Restart(Exception):
    """The partial file cannot be resumed (it does not fit the server's file, or the reply cannot be trusted)."""


def download(url: str, dest: Union[str, Path], expected_sha256: Optional[str] = None,
             progress: bool = True, timeout: float = 30.0, expected_size: Optional[int] = None) -> Path:
    """Fetch `url` to `dest`, resuming `dest.part` if present; check the size; record then verify the SHA-256.

    The finished file appears at `dest` only once complete (rename from .part) and its hash is written to
    `dest.sha256`; later uses are checked against that record. A file is complete only when a reply said how
    long it is (Content-Length, Content-Range total or a chunked body) or `expected_size` is given, and it has
    that length. A partial file that does not fit the server's file (longer than it, its last bytes differ, or
    a range reply that starts elsewhere than asked) is deleted and the download starts again from zero; a
    resumed file whose hash is wrong is fetched once more from zero. A wrong size or hash deletes the file and
    raises CheckpointError.
    """
    from ipl.core.atomic import write_text

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    why_not = "no attempt was made"
    resumed_once = False
    for _ in range(ATTEMPTS):
        have = part.stat().st_size if part.exists() else 0
        if expected_size is not None and have > expected_size:
            _notice(f"{part} is longer ({have} bytes) than {dest.name} ({expected_size} bytes); starting again "
                    "from zero")
            part.unlink()
            have = 0
        try:
            total = _fetch(url, part, have, dest, expected_size, progress, timeout)
        except _Restart as e:
            why_not = str(e)
            _notice(f"{e}; starting {dest.name} again from zero")
            part.unlink(missing_ok=True)
            continue
        resumed_once = resumed_once or have > 0
        size = part.stat().st_size
        if total is None:  # no reply said how long the file is
            total = expected_size
        if total is None:
            why_not = (f"the server sent {size} bytes without saying how long the file is (no Content-Length), "
                       "and a truncated file cannot be told from a whole one")
            continue  # the next request resumes with a Range: its reply says where the file ends
        if size < total:
            why_not = f"the reply ended early ({size} of {total} bytes)"
            continue  # resume
        if size > total or (expected_size is not None and size != expected_size):
            part.unlink(missing_ok=True)
            raise CheckpointError(_size_message(url, size, expected_size if expected_size is not None else total,
                                                part))
        digest = sha256_file(part)
        if expected_sha256 is not None and digest != expected_sha256.lower():
            part.unlink(missing_ok=True)  # a wrong hash cannot be fixed by resuming
            if resumed_once:  # the old partial file may have been the corrupt part: once more from zero
                resumed_once = False
                why_not = "the file resumed from an earlier partial download had the wrong SHA-256"
                _notice(f"{why_not}; starting {dest.name} again from zero")
                continue
            raise CheckpointError(
                f"download of {url}: SHA-256 {digest} does not match the expected {expected_sha256}; the "
                "downloaded file was deleted. The server holds another file than the registry names (or the "
                "transfer was corrupted); try again, or check the URL / IPL_MIRROR.")
        os.replace(part, dest)
        write_text(_sidecar(dest), f"{digest}  {dest.name}\n")
        return dest
    kept = (f"the partial file {part} is kept ({part.stat().st_size} bytes) and the next attempt resumes it"
            if part.exists() else "nothing was kept")
    raise WeightsNotFoundError(
        f"download of {url} did not complete after {ATTEMPTS} requests: {why_not}; {kept}. Or fetch that URL "
        f"elsewhere, check its size, and place the file at exactly {dest}.")


def _size_message(url: str, size: int, expected: int, part: Path, said: str = "the file is") -> str:
    return (f"download of {url}: {said} {size} bytes, expected {expected} bytes; the downloaded file "
            f"({part}) was deleted. The server holds another file than the registry names (a new version, or "
            "an error page); check the URL / IPL_MIRROR.")


def _fetch(url: str, part: Path, have: int, dest: Path, expected_size: Optional[int], progress: bool,
           timeout: float) -> Optional[int]:
    """One request: append to (or rewrite) `part`. Returns the file's total size as the reply stated it (None
    if it did not); raises _Restart when `part` must be dropped, WeightsNotFoundError/CheckpointError otherwise."""
    ask = max(0, have - OVERLAP)  # resume a little early: the overlap must equal the end of the .part
    headers = {"User-Agent": "ipl-downloader"}
    if have:
        headers["Range"] = f"bytes={ask}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the range starts past the end: the .part is longer than the file
            cr = _content_range(e.headers.get("Content-Range"))
            e.close()
            total = cr[2] if cr is not None else None
            if total is None:
                raise _Restart(f"the server refused to resume {part} (HTTP 416) without saying the file's "
                               "size") from None
            raise _Restart(f"the partial file {part} ({have} bytes) is longer than the server's file "
                           f"({total} bytes)") from None
        raise WeightsNotFoundError(_offline_message(url, dest, f"HTTP {e.code} {e.reason}")) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise WeightsNotFoundError(_offline_message(url, dest, str(getattr(e, "reason", e)))) from None

    with resp:
        status = getattr(resp, "status", None) or 200  # file:// replies have no status
        length = _int_header(resp.headers.get("Content-Length"))
        if status == 206:
            cr = _content_range(resp.headers.get("Content-Range"))
            first, last, total = cr if cr is not None else (None, None, None)
            start = ask if have else 0
            if first is None or last is None or last < first or (total is not None and last >= total):
                raise _Restart(f"the server's partial reply (206) has no valid Content-Range "
                               f"({resp.headers.get('Content-Range')!r})")
            if first != start:
                raise _Restart(f"asked for {dest.name} from byte {start}, the server sent bytes from {first}")
            if length is not None and length != last - first + 1:
                raise _Restart(f"the server's partial reply says {length} bytes (Content-Length) and bytes "
                               f"{first}-{last} (Content-Range)")
            if last + 1 < have:
                raise _Restart(f"the partial file {part} ({have} bytes) is longer than the server's file "
                               f"({last + 1} bytes)")
            end: Optional[int] = last + 1
            skip = have - first if have else 0
        elif status == 200:  # a whole file (the server ignored any Range): start over
            total = length
            end = length
            skip, have = 0, 0
        else:
            raise WeightsNotFoundError(_offline_message(url, dest, f"unexpected reply HTTP {status}"))
        if expected_size is not None and total is not None and total != expected_size:
            part.unlink(missing_ok=True)
            raise CheckpointError(_size_message(url, total, expected_size, part, "the server says the file is"))
        chunked = (resp.headers.get("Transfer-Encoding") or "").lower() == "chunked"

        bar = None
        try:
            if skip:  # the overlap: must equal the end of the .part
                got = b""
                while len(got) < skip:
                    block = resp.read(skip - len(got))
                    if not block:
                        break
                    got += block
                if len(got) < skip:
                    raise WeightsNotFoundError(
                        f"download of {url} was interrupted; the partial file {part} is kept and the next "
                        "attempt resumes it")
                with open(part, "rb") as fh:
                    fh.seek(have - skip)
                    if fh.read(skip) != got:
                        raise _Restart(f"the last {skip} bytes of the partial file {part} differ from the "
                                       "server's (a corrupt part, or part of another version of the file)")
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                           desc=dest.name)
            with open(part, "ab" if have else "wb") as fh:
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        break
                    fh.write(block)
                    if bar is not None:
                        bar.update(len(block))
                fh.flush()
                os.fsync(fh.fileno())
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise WeightsNotFoundError(
                f"download of {url} was interrupted ({e}); the partial file {part} is kept and the next "
                "attempt resumes it") from None
        finally:
            if bar is not None:
                bar.close()
    size = part.stat().st_size
    if end is not None and size > end:  # more bytes than the reply announced: nothing of it can be trusted
        raise _Restart(f"the server sent more bytes than it announced ({size} > {end})")
    if total is None and end is None and chunked:
        return size  # a chunked body that ended with its closing chunk is complete
    if total is None and status == 206 and end is not None and size < end:
        return end  # ended early: the caller resumes
    return total


def _offline_message(url: str, dest: Path, why: str) -> str:
    return (f"cannot download {url} ({why}). If this machine is offline, fetch that URL elsewhere and "
            f"place the file at exactly {dest} (the cache is $IPL_HOME, default ~/.cache/ipl), then run again.")


def ensure_source(entry: SourceEntry, allow_download: bool = True, progress: bool = True) -> tuple[Path, str]:
    """Local path and SHA-256 of a registry entry's checkpoint, downloading it if allowed and needed (from
    $IPL_MIRROR when set); its size (when the registry knows it) and SHA-256 are checked on every use."""
    located = family_of(entry).locate(entry.name, allow_download and not os.environ.get("IPL_OFFLINE"))
    if located is not None:  # a family that keeps its sources itself (e.g. Hugging Face snapshots)
        return located
    if not entry.readable:
        raise IPLError(f"source {entry.name!r} is a {entry.format} file, which ipl cannot read yet; "
                       "choose another source (see `ipl models list`)")
    path = cache_path(entry)
    if not path.is_file():
        url = source_url(entry)
        if url is None:
            raise WeightsNotFoundError(f"the shipped file for source {entry.name!r} is missing: expected "
                                       f"{path}. Reinstall ipl (it ships as package data) or rebuild it (scripts/toy/build_toy_*.py).")
        if not allow_download or os.environ.get("IPL_OFFLINE"):
            raise WeightsNotFoundError(
                f"source {entry.name!r} is not in the cache. Download {url} and place it at exactly "
                f"{path} (or run `ipl models download {entry.name}`).")
        download(url, path, expected_sha256=entry.sha256, progress=progress, expected_size=entry.size)
    if entry.size is not None and path.stat().st_size != entry.size:
        raise CheckpointError(
            f"{path} is {path.stat().st_size} bytes, but source {entry.name!r} is {entry.size} bytes: the file is "
            f"truncated or another file. Delete it (and {_sidecar(path).name} next to it) and run "
            f"`ipl models download {entry.name}`.")
    expected = entry.sha256 or recorded_sha256(path)
    digest = verify(path, expected)
    return path, digest
