"""One `ipl adapt` per run folder: an OS lock on RUN/.lock, held for the whole run.

With fcntl (Linux, macOS) the lock is `flock` on RUN/.lock: the OS releases it when the process ends, however it
ends (a kill, a crash), so a stale lock cannot block a later run. The holder writes its pid into the file, so a
refused second process can name it. Without fcntl (Windows) RUN/.lock is created with O_EXCL and holds the pid;
it is removed at the end of the run, and a lock whose pid is no longer running is taken over where that can be
checked (elsewhere the message says to delete the file).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional

from ipl.core.errors import IPLError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"
_BUSY = (errno.EAGAIN, errno.EACCES, getattr(errno, "EWOULDBLOCK", errno.EAGAIN))


class RunInUseError(IPLError):
    """Another process holds the run folder's lock."""

    def __init__(self, folder: Path, pid: Optional[int]):
        who = f"pid {pid}" if pid is not None else "a process whose pid is not written yet"
        extra = "" if fcntl is not None else f" (if no such process is running, delete {Path(folder) / LOCK})"
        super().__init__(f"{folder} is in use by another `ipl adapt` ({who}, lock {Path(folder) / LOCK}): wait "
                         f"for it to finish or stop it{extra}. Nothing was written.")
        self.pid = pid


def _read_pid(path: Path) -> Optional[int]:
    try:
        return int(path.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def pid_alive(pid: Optional[int]) -> bool:
    """Whether pid runs; True where that cannot be told (os.kill(pid, 0) terminates the process on Windows)."""
    if pid is None or os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def holder(folder: Path) -> Optional[int]:
    """The pid holding `folder`'s lock (-1 when held but no pid is written yet), or None if it is free.
    Creates nothing."""
    path = Path(folder) / LOCK
    if not path.is_file():
        return None
    if fcntl is None:
        pid = _read_pid(path)
        return (pid if pid is not None else -1) if pid_alive(pid) else None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in _BUSY:
            pid = _read_pid(path)
            return pid if pid is not None else -1
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_free(folder: Path) -> None:
    """Refuse (RunInUseError, naming the pid) a folder another process holds; creates nothing."""
    pid = holder(folder)
    if pid is not None:
        raise RunInUseError(Path(folder), None if pid < 0 else pid)


class RunLock:
    """The lock of one run folder: `RunLock.acquire(folder)`, then `release()` (the OS drops a flock anyway when
    the process ends, however it ends)."""

    def __init__(self, path: Path, fd: Optional[int]):
        self.path, self.fd, self.held = path, fd, True

    @classmethod
    def acquire(cls, folder: Path) -> "RunLock":
        """Take the lock of an existing folder, or raise RunInUseError naming the holder's pid."""
        path = Path(folder) / LOCK
        if fcntl is not None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in _BUSY:
                    raise RunInUseError(Path(folder), _read_pid(path)) from None
                raise
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            return cls(path, fd)
        for _ in range(3):  # no fcntl: an exclusively created file holding the pid
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid = _read_pid(path)
                if pid_alive(pid):
                    raise RunInUseError(Path(folder), pid) from None
                try:
                    path.unlink()  # its process is gone: a stale lock
                except FileNotFoundError:
                    pass
                continue
            try:
                os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            finally:
                os.close(fd)
            return cls(path, None)
        raise RunInUseError(Path(folder), _read_pid(path))

    def release(self) -> None:
        """Let the next process in. The flock file stays (removing it would race with a waiting process)."""
        if not self.held:
            return
        self.held = False
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None
        elif _read_pid(self.path) == os.getpid():
            self.path.unlink(missing_ok=True)
