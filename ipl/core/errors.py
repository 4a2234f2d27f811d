"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class IPLError(Exception):
    """An error a user can act on: says which file or input, what was expected, what to do."""


class CheckpointError(IPLError):
    """A checkpoint is missing, corrupt, of an unknown or unsupported format, or does not fit."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for a global outside the allow-list; it was refused and never executed."""


class WeightsNotFoundError(IPLError):
    """Pretrained weights are not available offline; the message says what to fetch and where to put it."""


class WriteError(IPLError):
    """A file could not be written (disk full, read-only, a folder that is a file...): names the path and why."""

    def __init__(self, message: str, path: "str | None" = None, errno: "int | None" = None):
        super().__init__(message)
        self.path = path
        self.errno = errno

    @classmethod
    def from_exception(cls, path, exc: BaseException, action: str = "write") -> "WriteError":
        """`could not write PATH: no space left on device (N MB free on its disk)` from an OSError or a writer's
        RuntimeError (torch.save reports a full disk as 'PytorchStreamWriter failed writing file ...')."""
        import errno as errno_mod
        import os
        import shutil

        code = getattr(exc, "errno", None)
        if code is None and _says_disk_full(exc):
            code = errno_mod.ENOSPC
        reasons = {errno_mod.ENOSPC: "no space left on device", errno_mod.EDQUOT: "disk quota exceeded",
                   errno_mod.EROFS: "read-only file system", errno_mod.EACCES: "permission denied",
                   errno_mod.EPERM: "operation not permitted", errno_mod.ENOTDIR: "a parent is a file, not a folder",
                   errno_mod.EEXIST: "a parent is a file, not a folder", errno_mod.EISDIR: "it is a folder"}
        reason = reasons.get(code) or getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]
        where = str(path)
        if code in (errno_mod.ENOSPC, errno_mod.EDQUOT):
            folder = os.path.dirname(os.path.abspath(where))
            while folder and not os.path.isdir(folder):
                folder = os.path.dirname(folder)
            try:
                free = shutil.disk_usage(folder).free
                reason += f" ({free / 2**20:.0f} MB free on the disk of {folder})"
            except OSError:
                pass
        return cls(f"could not {action} {where}: {reason}", path=where, errno=code)


def _says_disk_full(exc: BaseException) -> bool:
    """A writer's own error that means the bytes did not reach the disk (no errno attached)."""
    text = str(exc)
    return any(s in text for s in ("No space left", "file write failed", "os error 28", "code: 28",
                                   "StorageFull"))
