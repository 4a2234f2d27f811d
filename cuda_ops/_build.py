"""Build, cache and load the C++/CUDA extension; decide per call whether the CUDA or the reference path runs.

The extension is compiled on first use with `torch.utils.cpp_extension.load` (ninja) into
`<cache root>/ipl_cuda_ops_<key>/`, where `key` hashes the sources, the torch, Python and nvcc versions,
the GPU architecture and the flags, so a stale build is never loaded. An exclusive OS file lock (released
by the kernel if the holder dies) serialises concurrent first use; a finished build is marked by
`ok.json`, a failed one by `failed.json` with the reason, so later processes neither rebuild nor retry a
build known to fail (set IPL_CUDA_OPS_REBUILD=1 to try again). The compiler output goes to `build.log`.

Environment:
- IPL_CUDA_OPS=ref|auto|cuda  force the reference path everywhere / default / require the CUDA path.
- IPL_CUDA_OPS_CACHE=DIR      cache root (default: $XDG_CACHE_HOME/ipl/cuda_ops or ~/.cache/ipl/cuda_ops).
- IPL_CUDA_OPS_REBUILD=1      ignore a recorded failure (or a finished build) and build again.

Before `auto` trusts a build on a GPU, each op is checked once against the reference there (ipl.cuda_ops.verify:
forward and backward, float32/float16/bfloat16); the outcome is recorded next to the build (`verified.json`, or
`mismatch.json` with the reason, after which the reference runs, with one warning).
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

try:  # User-facing error class of the ipl CLI (prints the message, exits 2); plain RuntimeError without it.
    from ipl.core.errors import IPLError as _ErrorBase
except Exception:  # pragma: no cover - cuda_ops used on its own
    _ErrorBase = RuntimeError  # type: ignore[misc,assignment]

CSRC = Path(__file__).resolve().parent / "csrc"
CUDA_SOURCES = ("ops.cpp", "bias_act.cu", "upfirdn2d.cu")
HOST_SOURCES = ("ops.cpp",)
HEADERS = ("common.h", "bias_act.h", "upfirdn2d.h")
CXX_FLAGS = ("-O3",)  # the C++ standard is torch's choice (C++20 for torch >= 2.10)
NVCC_FLAGS = ("-O3", "--use_fast_math", "-lineinfo")
IMPLS = ("auto", "cuda", "ref")


class CudaOpsUnavailable(_ErrorBase):
    """impl='cuda' was asked for but the CUDA extension cannot run; the message says why and what to do."""


@dataclass
class BuildResult:
    """Outcome of one attempt to build or load the extension."""
    available: bool
    reason: str
    cache_dir: Optional[str] = None
    log_path: Optional[str] = None
    key: Optional[str] = None
    arch: Optional[str] = None
    with_cuda: bool = True
    cached: bool = False
    seconds: Optional[float] = None
    module: Any = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "module"}


# ----------------------------------------------------------------------------------------------------------
# Locating the toolchain.

def cache_root() -> Path:
    """Root folder of the build cache."""
    if os.environ.get("IPL_CUDA_OPS_CACHE"):
        return Path(os.environ["IPL_CUDA_OPS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ipl" / "cuda_ops"


def _site_nvidia_dirs() -> list[Path]:
    """The `nvidia/*` folders of the pip CUDA wheels that torch installs (headers and runtime libraries)."""
    out = []
    for entry in sys.path:
        root = Path(entry) / "nvidia"
        if root.is_dir():
            out.extend(sorted(p for p in root.iterdir() if p.is_dir()))
    return out


def _has_cuda_headers(home: Path) -> bool:
    return (home / "include" / "cuda_runtime.h").is_file() or bool(glob.glob(str(home / "targets/*/include/cuda_runtime.h")))


def find_cuda_home() -> tuple[Optional[Path], Optional[Path]]:
    """(CUDA toolkit root with bin/nvcc and headers, nvcc path); a wrapper script on PATH is looked through."""
    from torch.utils import cpp_extension

    candidates: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    if cpp_extension.CUDA_HOME:
        candidates.append(Path(cpp_extension.CUDA_HOME))
    which = shutil.which("nvcc")
    if which:
        candidates.append(Path(os.path.realpath(which)).parent.parent)
    candidates += [Path("/usr/local/cuda")] + sorted(Path("/usr/local").glob("cuda-*"), reverse=True)
    candidates += [Path("/opt/cuda"), Path("/usr")]
    nvcc_only = None
    for home in candidates:
        nvcc = home / "bin" / ("nvcc.exe" if os.name == "nt" else "nvcc")
        if nvcc.is_file():
            if _has_cuda_headers(home):
                return home, nvcc
            nvcc_only = nvcc_only or (home, nvcc)
    if nvcc_only:  # nvcc without headers beside it: the pip wheels' headers may still do
        return nvcc_only
    if which:
        return None, Path(which)
    return None, None


def nvcc_version(nvcc: Path) -> Optional[str]:
    """'13.0' from `nvcc --version`, or None."""
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60).stdout
    except Exception:
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"{m.group(1)}.{m.group(2)}" if m else None


_ARCHS: dict[int, str] = {}


def device_arch(device: Optional[torch.device] = None) -> Optional[str]:
    """'9.0' for an H100: the compute capability of `device` (default: the current GPU), or None."""
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device() if device is None or device.index is None else device.index
    if index not in _ARCHS:
        major, minor = torch.cuda.get_device_capability(index)
        _ARCHS[index] = f"{major}.{minor}"
    return _ARCHS[index]


def _cudart_shim(cuda_home: Optional[Path], build_root: Path) -> list[str]:
    """Linker flags so `-lcudart` resolves even when only a versioned libcudart.so.N exists (pip wheels)."""
    if cuda_home is not None:
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"):
            if (cuda_home / sub / "libcudart.so").exists():
                return []
    found = []
    for root in ([cuda_home] if cuda_home else []) + _site_nvidia_dirs():
        found += sorted(glob.glob(str(root / "lib*" / "libcudart.so.*")))
    if not found:
        return []
    shim = build_root / "cudart_shim"
    shim.mkdir(parents=True, exist_ok=True)
    link = shim / "libcudart.so"
    if not link.exists():
        with contextlib.suppress(FileExistsError):
            os.symlink(found[0], link)
    return [f"-L{shim}"]


# Headers that torch's CUDA headers pull in; a bare toolkit (nvcc + cudart only) may lack the library ones.
_NEEDED_HEADERS = ("cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h")


def _extra_includes(cuda_home: Optional[Path]) -> list[str]:
    """Header folders of the pip CUDA wheels, for what the toolkit root lacks (appended after it)."""
    have = cuda_home is not None and all((cuda_home / "include" / h).is_file() for h in _NEEDED_HEADERS)
    if have:
        return []
    return [str(p / "include") for p in _site_nvidia_dirs() if (p / "include" / "cuda_runtime.h").is_file()]


def _gencode(arch: str) -> list[str]:
    """nvcc flags for one architecture, with PTX for newer GPUs: '9.0' -> sm_90 SASS + compute_90 PTX."""
    num = arch.replace(".", "")
    return [f"-gencode=arch=compute_{num},code=sm_{num}", f"-gencode=arch=compute_{num},code=compute_{num}"]


# ----------------------------------------------------------------------------------------------------------
# Cache key, lock and build.

def source_files(with_cuda: bool = True) -> list[Path]:
    """The files compiled into the extension, headers included."""
    return [CSRC / n for n in (CUDA_SOURCES if with_cuda else HOST_SOURCES) + HEADERS]


def build_key(with_cuda: bool, arch: Optional[str], nvcc_ver: Optional[str]) -> str:
    """Hash of everything a compiled extension depends on."""
    h = hashlib.sha256()
    for path in source_files(with_cuda):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    parts = [torch.__version__, str(torch.version.cuda), str(nvcc_ver), str(arch), str(with_cuda),
             sys.implementation.cache_tag, platform.machine(), platform.system(),
             " ".join(CXX_FLAGS), " ".join(NVCC_FLAGS)]
    h.update("\0".join(parts).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock; the OS drops it if the holder dies, so it can never go stale."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: torch's own FileLock still guards the build folder
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _import_so(name: str, so_path: Path) -> Any:
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, so_path)
    assert spec is not None and spec.loader is not None, so_path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    sys.modules[name] = module
    return module


def _toolchain_problem(with_cuda: bool) -> tuple[Optional[str], Optional[Path], Optional[Path], Optional[str]]:
    """(reason the build cannot even start or None, cuda home, nvcc, nvcc version)."""
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        return "ninja was not found (pip install ninja)", None, None, None
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler: {cxx!r} is not on PATH (install g++ or set CXX)", None, None, None
    if not with_cuda:
        return None, None, None, None
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) was built without CUDA", None, None, None
    home, nvcc = find_cuda_home()
    if nvcc is None:
        return (f"nvcc was not found (install the CUDA {torch.version.cuda} toolkit, put nvcc on PATH or set "
                f"CUDA_HOME)"), None, None, None
    ver = nvcc_version(nvcc)
    if ver is None:
        return f"could not run {nvcc} --version", home, nvcc, None
    if ver.split(".")[0] != torch.version.cuda.split(".")[0]:
        return (f"nvcc {ver} ({nvcc}) does not match the CUDA {torch.version.cuda} this PyTorch was built with; "
                f"install the matching toolkit or set CUDA_HOME to it"), home, nvcc, ver
    if home is None and not _extra_includes(None):
        return f"CUDA headers (cuda_runtime.h) not found next to {nvcc}; set CUDA_HOME", home, nvcc, ver
    return None, home, nvcc, ver


def build(with_cuda: bool = True, arch: Optional[str] = None, rebuild: Optional[bool] = None) -> BuildResult:
    """Compile (or load from the cache) the extension; never raises, the result says why it is unavailable."""
    from torch.utils import cpp_extension

    if rebuild is None:
        rebuild = os.environ.get("IPL_CUDA_OPS_REBUILD", "") not in ("", "0")
    root = cache_root()
    problem, home, nvcc, ver = _toolchain_problem(with_cuda)
    if problem is not None:
        return BuildResult(False, problem, cache_dir=str(root), with_cuda=with_cuda, arch=arch)
    if with_cuda:
        arch = arch or device_arch()
        if arch is None:
            return BuildResult(False, "no CUDA GPU is visible and no architecture was given", cache_dir=str(root),
                               with_cuda=with_cuda)
    key = build_key(with_cuda, arch if with_cuda else None, ver)
    name = f"ipl_cuda_ops_{key}" if with_cuda else f"ipl_host_ops_{key}"
    folder = root / name
    so_path = folder / f"{name}{'.pyd' if os.name == 'nt' else '.so'}"
    log_path = folder / "build.log"
    ok_path, failed_path = folder / "ok.json", folder / "failed.json"
    result = BuildResult(False, "", cache_dir=str(folder), log_path=str(log_path), key=key, arch=arch,
                         with_cuda=with_cuda)

    with _file_lock(root / f"{name}.lock"):
        if not rebuild and ok_path.is_file() and so_path.is_file():
            try:
                result.module = _import_so(name, so_path)
                result.available, result.cached, result.reason = True, True, "loaded from cache"
                return result
            except Exception as exc:  # a damaged cache entry: rebuild below
                problem = f"cached build {so_path} failed to load ({exc}); rebuilding"
        if not rebuild and failed_path.is_file():
            info = json.loads(failed_path.read_text())
            result.reason = info.get("reason", "an earlier build failed")
            return result
        # Build in place: ninja redoes only what is missing or out of date (a command not in its log counts
        # as out of date), so a build killed half-way resumes instead of loading half-written objects.
        folder.mkdir(parents=True, exist_ok=True)
        for stale in (ok_path, failed_path):
            stale.unlink(missing_ok=True)
        ldflags = _cudart_shim(home, root) if with_cuda else []
        includes = [str(CSRC)] + (_extra_includes(home) if with_cuda else [])
        cflags = list(CXX_FLAGS) + ([] if with_cuda else ["-DIPL_NO_CUDA"])
        cuda_flags = list(NVCC_FLAGS) + (_gencode(arch) if with_cuda else [])  # type: ignore[arg-type]
        sources = [str(CSRC / n) for n in (CUDA_SOURCES if with_cuda else HOST_SOURCES)]
        header = {"name": name, "key": key, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                  "nvcc": str(nvcc), "nvcc_version": ver, "cuda_home": str(home), "arch": arch,
                  "sources": sources, "cflags": cflags, "cuda_cflags": cuda_flags, "ldflags": ldflags,
                  "include_paths": includes}
        log_path.write_text("ipl cuda_ops build\n" + json.dumps(header, indent=2) + "\n" +
                            (f"note: {problem}\n" if problem else ""))
        saved_home = cpp_extension.CUDA_HOME
        start = time.perf_counter()
        try:
            if with_cuda and home is not None:
                cpp_extension.CUDA_HOME = str(home)  # torch may have guessed a wrong root from a wrapper script
            module = cpp_extension.load(
                name=name, sources=sources, extra_cflags=cflags, extra_cuda_cflags=cuda_flags,
                extra_ldflags=ldflags, extra_include_paths=includes, build_directory=str(folder),
                with_cuda=with_cuda, verbose=False)
        except Exception as exc:
            seconds = time.perf_counter() - start
            with open(log_path, "a") as fh:
                fh.write(f"\nFAILED after {seconds:.1f} s:\n{exc}\n")
            result.reason = f"the CUDA ops build failed ({type(exc).__name__}); see the compiler log {log_path}"
            result.seconds = seconds
            _write_json(failed_path, {"reason": result.reason, "seconds": seconds, **header})
            return result
        finally:
            cpp_extension.CUDA_HOME = saved_home
        seconds = time.perf_counter() - start
        sys.modules[name] = module
        with open(log_path, "a") as fh:
            fh.write(f"\nbuilt in {seconds:.1f} s\n")
        _write_json(ok_path, {"seconds": seconds, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              **header})
        result.module, result.available, result.seconds = module, True, seconds
        result.reason = f"built in {seconds:.1f} s"
        return result


# ----------------------------------------------------------------------------------------------------------
# Per-process state and the impl decision.

_LOCK = threading.Lock()
_RESULTS: dict[str, BuildResult] = {}  # by GPU architecture
_WARNED: set[str] = set()
_OVERRIDE: Optional[str] = None


def set_impl_override(impl: Optional[str]) -> None:
    """Force 'ref' / 'cuda' / 'auto' for every call in this process (a CLI flag's hook); None clears it."""
    global _OVERRIDE
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    _OVERRIDE = impl


def forced_impl() -> Optional[str]:
    """The process-wide override, else IPL_CUDA_OPS, else None."""
    if _OVERRIDE is not None:
        return _OVERRIDE
    env = os.environ.get("IPL_CUDA_OPS", "").strip().lower()
    if not env:
        return None
    if env not in IMPLS:
        raise ValueError(f"IPL_CUDA_OPS must be one of {IMPLS}, got {env!r}")
    return env


def get_plugin(device: Optional[torch.device] = None) -> BuildResult:
    """The extension for `device`'s GPU architecture, built or loaded once per process."""
    arch = device_arch(device)
    with _LOCK:
        res = _RESULTS.get(str(arch))
        if res is None:
            if arch is None:
                res = BuildResult(False, "no CUDA GPU is visible", cache_dir=str(cache_root()))
            else:
                res = trusted(build(with_cuda=True, arch=arch), device)
            _RESULTS[str(arch)] = res
        return res


def trusted(res: BuildResult, device: Optional[torch.device] = None) -> BuildResult:
    """`res` if its kernels match the reference on `device` (checked once per build, the outcome recorded in its
    cache folder); otherwise an unavailable result whose reason names the mismatch."""
    if not res.available or res.module is None or res.cache_dir is None:
        return res
    folder = Path(res.cache_dir)
    verified, mismatch = folder / "verified.json", folder / "mismatch.json"
    rebuild = os.environ.get("IPL_CUDA_OPS_REBUILD", "") not in ("", "0")
    reason = None
    if mismatch.is_file() and not rebuild:
        try:
            reason = json.loads(mismatch.read_text()).get("reason") or "an earlier check failed"
        except (OSError, ValueError):
            reason = "an earlier check failed (unreadable record)"
    elif not verified.is_file() or rebuild:
        from ipl.cuda_ops.verify import verify_kernels

        dev = device if device is not None else torch.device("cuda")
        start = time.perf_counter()
        try:
            reason = verify_kernels(res.module, dev)
        except Exception as exc:  # a kernel that crashes is as untrustworthy as a wrong one
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        record = {"checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "arch": res.arch,
                  "device": str(dev), "seconds": round(time.perf_counter() - start, 3), "torch": torch.__version__}
        with contextlib.suppress(OSError):
            if reason is None:
                mismatch.unlink(missing_ok=True)
                _write_json(verified, record)
            else:
                verified.unlink(missing_ok=True)
                _write_json(mismatch, {"reason": reason, **record})
    if reason is None:
        return res
    return BuildResult(False, f"the CUDA ops disagree with the reference on this GPU ({reason}; recorded in "
                       f"{mismatch}; IPL_CUDA_OPS_REBUILD=1 checks again)", cache_dir=res.cache_dir,
                       log_path=res.log_path, key=res.key, arch=res.arch, with_cuda=res.with_cuda,
                       cached=res.cached, seconds=res.seconds)


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def resolve_impl(impl: str, x: torch.Tensor, op: str) -> tuple[str, Any]:
    """('cuda', module) or ('ref', None) for one call of `op` on `x`; see the module docstring."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
    forced = forced_impl()
    if forced == "ref" or impl == "ref":
        return "ref", None
    strict = impl == "cuda" or forced == "cuda"
    if not x.is_cuda:
        if strict:
            raise CudaOpsUnavailable(f"{op}: impl='cuda' needs a tensor on a CUDA GPU, got one on {x.device}; "
                                     f"use impl='auto' or 'ref' on CPU")
        return "ref", None
    if not strict and _is_compiling():
        return "ref", None  # let the compiler fuse the reference ops instead of breaking the graph
    res = get_plugin(x.device)
    if res.available:
        return "cuda", res.module
    if strict:
        raise CudaOpsUnavailable(f"{op}: the CUDA ops are unavailable: {res.reason}. Use impl='ref' or "
                                 f"IPL_CUDA_OPS=ref to run the (slower) reference path.")
    with _LOCK:
        if res.reason not in _WARNED:
            _WARNED.add(res.reason)
            warnings.warn(f"cuda_ops: using the slower reference PyTorch ops because {res.reason}. "
                          f"Set IPL_CUDA_OPS=ref to silence this.", RuntimeWarning, stacklevel=3)
    return "ref", None


def build_status(build_now: bool = False, device: Optional[torch.device] = None) -> dict:
    """{'available', 'reason', 'cache_dir', 'log_path', ...} for this machine; builds only if build_now."""
    forced = forced_impl()
    arch = device_arch(device)
    with _LOCK:
        res = _RESULTS.get(str(arch))
    if res is None and build_now:
        res = get_plugin(device)
    if res is None:
        problem = _toolchain_problem(True)[0]
        if problem is None and arch is None:
            problem = "no CUDA GPU is visible (the reference ops run on CPU)"
        res = BuildResult(False, problem or "not built yet in this process (first use on a GPU builds it)",
                          cache_dir=str(cache_root()), arch=arch)
    out = res.as_dict()
    out["forced_impl"] = forced
    return out
