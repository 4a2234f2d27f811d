"""Checking fields of a file's description: one `CheckpointError` "<file>: <field>: expected <what>, got <value>"."""
from __future__ import annotations

import math
import numbers
from typing import Any

from ipl.core.errors import CheckpointError


class _Missing:
    def __repr__(self) -> str:
        return "no such entry"


MISSING: Any = _Missing()  # pass as the value when a required field is absent


class Described(str):
    """A value already described in words (shown as is, without quotes)."""

    def __repr__(self) -> str:
        return str(self)


def show(value: Any, limit: int = 80) -> str:
    """A short, safe rendering of a (possibly hostile) value for an error message."""
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return f"a {type(value).__name__} of shape {list(shape)}"
    try:
        text = repr(value)
    except Exception:  # a hostile object's repr is not trusted to work
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def field_error(source: Any, field: str, expected: str, value: Any) -> CheckpointError:
    """The one error every check raises: '<file>: <field>: expected <what>, got <value>'."""
    return CheckpointError(f"{source}: {field}: expected {expected}, got {show(value)}")


def is_int(value: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
