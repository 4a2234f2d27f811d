"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class IPLError(Exception):
    """An error a user can act on: says which file or input, what was expected, what to do."""


class CheckpointError(IPLError):
    """A checkpoint is missing, corrupt, of an unknown or unsupported format, or does not fit."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for a global outside the allow-list; it was refused and never executed."""


class WeightsNotFoundError(IPLError):
    """Pretrained weights are not available offline; the message says what to fetch and where to put it."""
