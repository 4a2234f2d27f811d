"""`--compile`: torch.compile for the passes of stage 2, with a fallback to eager that warns once."""
from __future__ import annotations

import functools
import os
import shutil
import threading
import warnings
from typing import Any, Callable, Optional

import torch

_WARNED: set[str] = set()
_LOCK = threading.Lock()


def compile_problem() -> Optional[str]:
    """Why torch.compile cannot work here (None when it may): no torch.compile, or no C++ compiler (inductor needs
    one for CPU code and for its wrappers)."""
    if not hasattr(torch, "compile"):
        return f"this PyTorch ({torch.__version__}) has no torch.compile"
    cxx = os.environ.get("CXX", "")
    if not any(shutil.which(c) for c in ([cxx] if cxx else []) + ["g++", "c++", "clang++"]):
        return "no C++ compiler (g++, c++ or clang++) is on PATH, which torch.compile needs"
    return None


def _warn_once(key: str, message: str) -> None:
    with _LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def compiled(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """`fn` through torch.compile (dynamic shapes off); where compiling (or the compiled call) fails, one warning
    and `fn` itself from then on.

    Compilation happens on the first call of each input shape. A failure is most often raised before anything
    ran; where a graph break let an eager part run first (e.g. a noise draw), the retry runs it again.
    """
    if getattr(fn, "_ipl_compiled", False):
        return fn
    problem = compile_problem()
    if problem is not None:
        _warn_once(problem, f"--compile: running {name} eagerly: {problem}")
        return fn
    fast = torch.compile(fn, dynamic=False)
    state = {"failed": False}

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if state["failed"]:
            return fn(*args, **kwargs)
        try:
            return fast(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # compiler/back-end errors of any kind: the eager path always works
            state["failed"] = True
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            _warn_once(f"{name}:{type(exc).__name__}", f"--compile: torch.compile of {name} failed "
                       f"({type(exc).__name__}: {first}); running it eagerly")
            return fn(*args, **kwargs)

    call._ipl_compiled = True  # type: ignore[attr-defined]
    call.eager = fn  # type: ignore[attr-defined]
    return call
