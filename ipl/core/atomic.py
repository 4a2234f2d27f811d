"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename over the target."""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask(0) is racy with threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def default_file_mode() -> int:
    """The permission bits open() gives a new file: 0666 less the umask."""
    return 0o666 & ~_umask()


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:  # a parent that is a file, a read-only folder, a full disk: the path named
        raise _write_error(path, e) from e
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file 0600, and a writer may replace it with a file of its own (safetensors
        # writes 0600 too): give the result the permissions of a file created with open() (0666 less umask).
        os.chmod(tmp_path, default_file_mode())
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except Exception as e:  # the temporary file goes (finally); a failed write becomes a WriteError naming `path`
        if _is_write_failure(e):
            raise _write_error(path, e) from e
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _is_write_failure(e: BaseException) -> bool:
    from ipl.core.errors import IPLError, _says_disk_full

    return not isinstance(e, IPLError) and (isinstance(e, OSError) or _says_disk_full(e))


def _write_error(path: Path, e: BaseException):
    from ipl.core.errors import WriteError

    return WriteError.from_exception(path, e)


def write_bytes(path: PathLike, data: bytes) -> None:
    """Atomically write bytes."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: PathLike, text: str) -> None:
    """Atomically write text (UTF-8)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, obj: Any) -> None:
    """Atomically write JSON, indented, keys in insertion order."""
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def torch_save(obj: Any, path: PathLike) -> None:
    """Atomically torch.save an object."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_safetensors(tensors: dict, path: PathLike, metadata: Optional[dict[str, str]] = None) -> None:
    """Atomically write a safetensors file with deterministic bytes.

    safetensors serialises the metadata from a hash map, in a different key order on every call; the header is
    rewritten here with the metadata keys sorted (and the tensor entries in data order), so the same tensors and
    metadata always give the same file.
    """
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        canonicalize_safetensors_header(tmp)


def canonicalize_safetensors_header(path: PathLike) -> None:
    """Rewrite a safetensors file's JSON header in a canonical order (in place when the length allows)."""
    path = Path(path)
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n).decode("utf-8"))
    canonical: dict[str, Any] = {}
    if "__metadata__" in header:
        canonical["__metadata__"] = dict(sorted((header.pop("__metadata__") or {}).items()))
    for name in sorted(header, key=lambda k: (header[k]["data_offsets"][0], header[k]["data_offsets"][1], k)):
        canonical[name] = header[name]
    text = _header_bytes(canonical)
    if len(text) <= n:  # same length: pad with spaces (as safetensors itself pads) and overwrite in place
        with open(path, "rb+") as fh:
            fh.seek(8)
            fh.write(text + b" " * (n - len(text)))
        return
    size = len(text) + (-(8 + len(text)) % 8)  # data stays 8-byte aligned
    fd, other = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            out.write(struct.pack("<Q", size) + text + b" " * (size - len(text)))
            src.seek(8 + n)
            shutil.copyfileobj(src, out, 1 << 20)
        os.replace(other, path)
    finally:
        if os.path.exists(other):
            os.unlink(other)


def _header_bytes(header: dict[str, Any]) -> bytes:
    """Compact JSON, as safetensors writes it."""
    return json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def check_writable(path: PathLike, what: str, folder: bool = False) -> None:
    """Refuse (IPLError naming `what` and the path) a file or folder that cannot be written before any work is
    done: a parent that is a file, a folder without write permission, a file where a folder goes or the reverse.
    Nothing is created."""
    from ipl.core.errors import IPLError

    path = Path(path).expanduser()
    if path.exists():
        if folder and not path.is_dir():
            raise IPLError(f"{what} {path}: exists and is not a folder; choose another path")
        if not folder and path.is_dir():
            raise IPLError(f"{what} {path}: is a folder; give a file name")
    here = path if (folder and path.is_dir()) else path.parent
    while not here.exists() and here != here.parent:
        if here.is_symlink():
            raise IPLError(f"{what} {path}: {here} is a broken link; choose another path")
        here = here.parent
    if not here.is_dir():
        raise IPLError(f"{what} {path}: cannot create it, {here} is a file, not a folder; choose another path")
    if not os.access(here, os.W_OK | os.X_OK):
        raise IPLError(f"{what} {path}: the folder {here} is not writable (permission denied); "
                       "choose another path")
