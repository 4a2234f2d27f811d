"""A restricted unpickler for NVIDIA network pickles: reads their data, never imports or runs their code.

NVIDIA's pickles reduce every network to `torch_utils.persistence._reconstruct_persistent_obj(meta)`, which
would normally exec the module source embedded in `meta`. Here that name maps to `PersistentRecord`, a plain
record of (class name, state); every other global must be on a short allow-list of tensor/numpy/container
constructors, each replaced by a checked equivalent. Anything else raises `UnsafePickleError` naming the
global, before any object from the file is called.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import pickletools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import numpy as np
import torch

from ipl.core.errors import CheckpointError, UnsafePickleError


@dataclass
class PersistentRecord:
    """What a persistent NVIDIA object would have been: its class name and its `__dict__`, as data."""
    class_name: str
    module_name: str
    state: dict = field(default_factory=dict)
    version: Any = None


class EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict: a plain dict (attribute access is not needed)."""


class TensorFlowPickleError(CheckpointError):
    """The file is an original TensorFlow StyleGAN pickle."""


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise CheckpointError("malformed persistent object in the network pickle (expected a class record)")
    state = meta.get("state")
    if not isinstance(state, dict):
        raise CheckpointError(f"persistent object {meta['class_name']} has no state dict")
    module_name, _, class_name = meta["class_name"].rpartition(".")
    # meta['module_src'] (the source code) is deliberately never looked at beyond this point.
    return PersistentRecord(class_name=class_name, module_name=module_name, state=state, version=meta.get("version"))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None) -> torch.Tensor:
    if not isinstance(storage, (torch.UntypedStorage, torch.TypedStorage)):
        raise CheckpointError(f"tensor rebuilt from a {type(storage).__name__}, expected a torch storage")
    if backward_hooks:
        raise CheckpointError("tensor in the pickle carries backward hooks; refusing it")
    if not isinstance(storage_offset, int) or not all(isinstance(v, int) for v in (*size, *stride)):
        raise CheckpointError("malformed tensor record (non-integer size/stride/offset)")
    _check_extent(storage, storage_offset, tuple(size), tuple(stride))
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), False,
                                           collections.OrderedDict())


def _check_extent(storage, offset: int, size: tuple, stride: tuple) -> None:
    """The view must lie inside its storage: torch's set_ would grow the storage with uninitialised memory."""
    if len(size) != len(stride):
        raise CheckpointError(f"malformed tensor record: {len(size)} sizes but {len(stride)} strides")
    if offset < 0 or any(v < 0 for v in (*size, *stride)):
        raise CheckpointError(f"malformed tensor record: negative size, stride or offset (size {list(size)}, "
                              f"stride {list(stride)}, offset {offset})")
    if isinstance(storage, torch.TypedStorage):
        length = storage._size()  # elements (.size() is the same but warns that TypedStorage is deprecated)
    else:  # an untyped storage counts bytes; torch cannot rebuild a tensor from it without a dtype anyway
        raise CheckpointError("tensor rebuilt from an untyped storage (no dtype); expected a typed storage")
    if 0 in size:  # an empty view reads nothing
        if offset > length:
            raise CheckpointError(f"malformed tensor record: offset {offset} beyond its storage of {length} elements")
        return
    extent = offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1
    if extent > length:
        raise CheckpointError(f"malformed tensor record: a view of size {list(size)}, stride {list(stride)} at "
                              f"offset {offset} reaches element {extent}, beyond its storage of {length} elements "
                              f"(the file is corrupt or was crafted)")


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise CheckpointError(f"parameter rebuilt from a {type(data).__name__}, expected a tensor")
    if backward_hooks:
        raise CheckpointError("parameter in the pickle carries backward hooks; refusing it")
    return data  # plain tensors are all the loader needs


def _load_from_bytes(blob: Any):
    if not isinstance(blob, (bytes, bytearray)):
        raise CheckpointError("storage record is not a byte string")
    # A legacy torch.save blob holding one storage; torch's own weights-only loader reads it.
    return torch.load(io.BytesIO(bytes(blob)), weights_only=True, map_location="cpu")


def _check_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.hasobject:
        raise CheckpointError("numpy object arrays are not allowed in a network pickle")
    return dtype


def _np_dtype(*args) -> np.dtype:
    return _check_dtype(np.dtype(*args[:1], *[bool(a) for a in args[1:3]]))


def _np_scalar(dtype: Any, data: Any = None):
    if not isinstance(dtype, np.dtype):
        raise CheckpointError("numpy scalar record without a dtype")
    _check_dtype(dtype)
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("numpy scalar record without its bytes")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _np_reconstruct(cls, shape, dtype_code):
    if cls is not np.ndarray:
        raise CheckpointError("numpy array record for a class other than ndarray")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _tensorflow(module: str, name: str) -> Callable:
    raise TensorFlowPickleError(
        f"the pickle mixes a TensorFlow network object ('{module}.{name}') into a PyTorch network pickle; expected "
        f"either an NVIDIA TensorFlow StyleGAN2 pickle (a tuple (G, D, Gs) of TensorFlow networks) or an NVIDIA "
        f"PyTorch network pickle")


# (module, name) -> safe replacement. Both numpy 1 ('numpy.core') and numpy 2 ('numpy._core') spellings.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _np_dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals only through `allowed` (default ALLOWED_GLOBALS)."""

    allowed: dict[tuple[str, str], Any] = ALLOWED_GLOBALS
    kind = "StyleGAN2 network pickles"

    def __init__(self, file: BinaryIO, source: str = "<pickle>") -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 spellings (protocol < 3 pickles), e.g. '__builtin__' -> 'builtins'.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = (module, name)
        if key in self.allowed:
            return self.allowed[key]
        if module.startswith("dnnlib.tflib"):
            _tensorflow(module, name)
        raise UnsafePickleError(
            f"{self.source}: refused to load: the pickle asks for the global '{module}.{name}', which is not on the "
            f"allow-list for {self.kind}. Nothing from the file was executed. If this is a genuine "
            f"checkpoint of a supported kind, please report it; otherwise do not load this file.")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused to load: unexpected persistent id in the pickle "
                                f"({type(pid).__name__}); nothing from the file was executed")


def safe_load_pickle(path: Path | str, unpickler: type[RestrictedUnpickler] = RestrictedUnpickler,
                     expected: str = "an NVIDIA StyleGAN2 network pickle") -> Any:
    """Unpickle `path` with a restricted unpickler; errors name the file."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return unpickler(fh, source=str(path)).load()
    except CheckpointError as e:
        msg = str(e)
        raise type(e)(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            RuntimeError, MemoryError, OverflowError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: the pickle is truncated or corrupt ({type(e).__name__}: {e}); expected "
                              f"{expected}. Re-download or re-export the file.") from None


_STRING_OPS = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
               "SHORT_BINSTRING")


def first_global(path: Path | str, max_ops: int = 256) -> Optional[tuple[str, str]]:
    """The first global a pickle names, read from its opcodes without unpickling anything; None when there is
    none early in the file or the opcodes cannot be read (the loader then reports what is wrong)."""
    strings: list[str] = []
    try:
        with open(path, "rb") as fh:
            for i, (op, arg, _pos) in enumerate(pickletools.genops(fh)):
                if i >= max_ops:
                    return None
                if op.name == "GLOBAL" and isinstance(arg, str):
                    module, _, name = arg.partition(" ")
                    return module, name
                if op.name == "STACK_GLOBAL":
                    return (strings[-2], strings[-1]) if len(strings) >= 2 else None
                if op.name in _STRING_OPS and isinstance(arg, str):
                    strings.append(arg)
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    return None  # a memoised name: not worth following here
    except (ValueError, EOFError, OSError, UnicodeDecodeError):
        return None
    return None
