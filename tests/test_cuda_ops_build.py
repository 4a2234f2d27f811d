"""Build machinery and impl selection (fast, no compiler), plus a `cuda_build` test that really compiles."""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ipl import cuda_ops
from ipl.cuda_ops import _build
from ipl.cuda_ops.bias_act import ACT_IDS, bias_act_kernel, bias_act_math, bias_act_ref
from ipl.cuda_ops.upfirdn2d import upfirdn2d_kernel, upfirdn2d_ref

_USER_CACHE = os.environ.get("IPL_CUDA_OPS_CACHE")  # the real build goes where the user keeps it


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch, tmp_path):
    monkeypatch.setenv("IPL_CUDA_OPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("IPL_CUDA_OPS", raising=False)
    monkeypatch.delenv("IPL_CUDA_OPS_REBUILD", raising=False)
    monkeypatch.setattr(_build, "_RESULTS", {})
    monkeypatch.setattr(_build, "_WARNED", set())
    monkeypatch.setattr(_build, "_OVERRIDE", None)


def _fake_gpu_tensor():
    """Enough of a CUDA tensor for resolve_impl, which only asks where the tensor lives."""
    return SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))


def test_env_forces_reference_and_cuda_on_cpu_raises(monkeypatch):
    x = torch.zeros(2)
    assert _build.resolve_impl("auto", x, "op") == ("ref", None)
    with pytest.raises(cuda_ops.CudaOpsUnavailable, match="needs a tensor on a CUDA GPU"):
        _build.resolve_impl("cuda", x, "op")
    with pytest.raises(ValueError):
        _build.resolve_impl("fast", x, "op")
    monkeypatch.setenv("IPL_CUDA_OPS", "ref")
    assert _build.resolve_impl("cuda", x, "op") == ("ref", None)
    assert _build.resolve_impl("auto", _fake_gpu_tensor(), "op") == ("ref", None)
    monkeypatch.setenv("IPL_CUDA_OPS", "bogus")
    with pytest.raises(ValueError, match="IPL_CUDA_OPS"):
        _build.resolve_impl("auto", x, "op")
    monkeypatch.delenv("IPL_CUDA_OPS")
    cuda_ops.set_impl_override("ref")
    assert _build.resolve_impl("auto", _fake_gpu_tensor(), "op") == ("ref", None)


def test_auto_on_gpu_without_build_warns_once_and_cuda_raises_with_reason(monkeypatch):
    failed = _build.BuildResult(False, "nvcc was not found (install ...)")
    monkeypatch.setattr(_build, "get_plugin", lambda device=None: failed)
    with pytest.warns(RuntimeWarning, match="nvcc was not found"):
        assert _build.resolve_impl("auto", _fake_gpu_tensor(), "op") == ("ref", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _build.resolve_impl("auto", _fake_gpu_tensor(), "op") == ("ref", None)  # no second warning
    with pytest.raises(cuda_ops.CudaOpsUnavailable, match="nvcc was not found"):
        _build.resolve_impl("cuda", _fake_gpu_tensor(), "op")
    monkeypatch.setenv("IPL_CUDA_OPS", "cuda")
    with pytest.raises(cuda_ops.CudaOpsUnavailable):
        _build.resolve_impl("auto", _fake_gpu_tensor(), "op")
    ok = _build.BuildResult(True, "built", module="MODULE")
    monkeypatch.setattr(_build, "get_plugin", lambda device=None: ok)
    assert _build.resolve_impl("auto", _fake_gpu_tensor(), "op") == ("cuda", "MODULE")


def test_build_key_depends_on_sources_arch_and_versions(monkeypatch, tmp_path):
    k = _build.build_key(True, "9.0", "13.0")
    assert k == _build.build_key(True, "9.0", "13.0")
    assert len({k, _build.build_key(True, "8.0", "13.0"), _build.build_key(True, "9.0", "13.1"),
                _build.build_key(False, None, None)}) == 4
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert _build.build_key(True, "9.0", "13.0") != k
    monkeypatch.undo()
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    for path in _build.source_files(True):
        (csrc / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(_build, "CSRC", csrc)
    assert _build.build_key(True, "9.0", "13.0") == k
    (csrc / "upfirdn2d.h").write_text((csrc / "upfirdn2d.h").read_text() + "\n// edited\n")
    assert _build.build_key(True, "9.0", "13.0") != k


def test_failed_build_is_logged_recorded_and_not_retried(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    calls = []

    def failing_load(**kwargs):
        calls.append(kwargs["build_directory"])
        raise RuntimeError("Error building extension: fake compiler said no")

    monkeypatch.setattr(_build, "_toolchain_problem", lambda with_cuda: (None, None, Path("nvcc"), "13.0"))
    monkeypatch.setattr(cpp_extension, "load", failing_load)
    res = _build.build(with_cuda=True, arch="9.0")
    assert not res.available and len(calls) == 1
    assert res.log_path and res.log_path in res.reason
    assert "fake compiler said no" in Path(res.log_path).read_text()
    again = _build.build(with_cuda=True, arch="9.0")
    assert not again.available and again.reason == res.reason and len(calls) == 1
    _build.build(with_cuda=True, arch="9.0", rebuild=True)
    assert len(calls) == 2
    status = cuda_ops.build_status()
    assert {"available", "reason", "cache_dir", "log_path"} <= set(status)


def test_missing_toolchain_gives_reason(monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    res = _build.build(with_cuda=True, arch="9.0")
    assert not res.available and "ninja" in res.reason
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setattr(_build, "find_cuda_home", lambda: (None, None))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    res = _build.build(with_cuda=True, arch="9.0")
    assert not res.available and "nvcc was not found" in res.reason


def test_status_command_prints_json(capsys):
    from ipl.cuda_ops.__main__ import main

    assert main([]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["available"] is False and status["reason"] and status["forced_impl"] is None


def test_file_lock_is_exclusive(tmp_path):
    order = []
    lock = tmp_path / "x.lock"

    def hold(tag, delay):
        with _build._file_lock(lock):
            order.append(f"{tag}-in")
            time.sleep(delay)
            order.append(f"{tag}-out")

    with _build._file_lock(lock):
        t = threading.Thread(target=hold, args=("b", 0.0))
        t.start()
        time.sleep(0.3)
        order.append("a-out")
    t.join(10)
    assert order == ["a-out", "b-in", "b-out"]


# ------------------------------------------------------------------------------------------------------------
# Real compilation (minutes on a busy 2-core machine): `pytest -m cuda_build tests/test_cuda_ops_build.py`.

@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The real extension, built with nvcc for sm_90 into the user's cache (reused across runs)."""
    mp = pytest.MonkeyPatch()
    if _USER_CACHE:
        mp.setenv("IPL_CUDA_OPS_CACHE", _USER_CACHE)
    else:
        mp.delenv("IPL_CUDA_OPS_CACHE", raising=False)
    start = time.perf_counter()
    res = _build.build(with_cuda=True, arch="9.0")
    mp.undo()
    print(f"\ncuda_ops build: {res.reason} ({time.perf_counter() - start:.1f} s, cached={res.cached})")
    assert res.available, f"{res.reason}\n{Path(res.log_path).read_text() if res.log_path else ''}"
    return res


@pytest.mark.cuda_build
def test_extension_compiles_with_nvcc(compiled):
    assert compiled.module.with_cuda
    meta = json.loads((Path(compiled.cache_dir) / "ok.json").read_text())
    assert meta["arch"] == "9.0" and any("sm_90" in f for f in meta["cuda_cflags"])


@pytest.mark.cuda_build
@pytest.mark.parametrize("act", sorted(ACT_IDS))
def test_compiled_bias_act_maths_on_host(compiled, act):
    """The kernels' per-element maths (compiled from the same header for the host) match the reference."""
    kernel = compiled.module.bias_act
    gen = torch.Generator().manual_seed(ACT_IDS[act])
    x = torch.randn([2, 3, 4, 5], generator=gen, dtype=torch.float64) * 3
    x = torch.where(x.abs() < 0.05, x + 0.1, x)
    b = torch.randn([3], generator=gen, dtype=torch.float64) * 0.01
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    for alpha, gain, clamp in [(0.2, 1.0, -1.0), (0.1, 1.7, 1.0)]:
        for order in (0, 1, 2):
            got = kernel(x, b, dy, 1, ACT_IDS[act], order, alpha, gain, clamp)
            want = bias_act_math(x, b, dy, 1, ACT_IDS[act], order, alpha, gain, clamp)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    xr = x.clone().requires_grad_(True)
    br = b.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, b: bias_act_kernel(x, b, kernel, act=act, clamp=2.0), (xr, br))
    assert torch.autograd.gradgradcheck(lambda x, b: bias_act_kernel(x, b, kernel, act=act), (xr, br))
    xcl = x.float().to(memory_format=torch.channels_last)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        got = bias_act_kernel(xcl.to(dt), b.to(dt), kernel, act=act, clamp=3.0)
        want = bias_act_ref(xcl.to(dt).float(), b.to(dt).float(), act=act, clamp=3.0)
        tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dt]
        torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)


@pytest.mark.cuda_build
def test_compiled_upfirdn2d_maths_on_host(compiled):
    kernel = compiled.module.upfirdn2d
    gen = torch.Generator().manual_seed(0)
    ups = [1, 2, 4, (2, 1)]
    downs = [1, 2, 4, (1, 2)]
    for up, down, ndim, taps in itertools.product(ups, downs, (1, 2), (3, 4)):
        f = torch.rand([taps] if ndim == 1 else [taps, taps + 1], generator=gen) + 0.1
        x = torch.randn([2, 3, 7, 6], generator=gen, dtype=torch.float64)
        for pad, flip in [([1, 2, 2, 1], False), ([-1, 4, 3, -2], True)]:
            want = upfirdn2d_ref(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=2.0)
            got = upfirdn2d_kernel(x, f, kernel, up=up, down=down, padding=pad, flip_filter=flip, gain=2.0)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        # the 64-bit-index instantiation of the same maths (used for huge tensors) agrees too
        w = (f.flip(list(range(f.ndim))) * 2.0 ** (f.ndim / 2)).contiguous()
        (upx, upy), (dx, dy) = [(v, v) if isinstance(v, int) else v for v in (up, down)]
        a = kernel(x, w, upx, upy, dx, dy, 1, 2, 2, 1, ndim == 1)
        b = kernel(x, w, upx, upy, dx, dy, 1, 2, 2, 1, ndim == 1, force_int64=True)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    f = torch.rand([4, 4], generator=gen) + 0.1
    x = torch.randn([2, 5, 6, 7], generator=gen)
    xcl = x.to(memory_format=torch.channels_last)
    got = upfirdn2d_kernel(xcl, f, kernel, up=2, padding=[2, 1, 2, 1])
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, upfirdn2d_ref(x, f, up=2, padding=[2, 1, 2, 1]), rtol=1e-5, atol=1e-5)
    for dt, tol in [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)]:
        got = upfirdn2d_kernel(x.to(dt), f, kernel, down=2, padding=1)
        torch.testing.assert_close(got.float(), upfirdn2d_ref(x.to(dt).float(), f, down=2, padding=1),
                                   rtol=tol, atol=tol)
    xr = torch.randn([1, 2, 4, 5], generator=gen, dtype=torch.float64, requires_grad=True)
    fn = lambda x: upfirdn2d_kernel(x, f, kernel, up=2, down=1, padding=[2, 1, 1, 2])  # noqa: E731
    assert torch.autograd.gradcheck(fn, (xr,)) and torch.autograd.gradgradcheck(fn, (xr,))


@pytest.mark.cuda_build
def test_concurrent_first_use_shares_one_build(compiled, tmp_path):
    """Two processes asking for the same build at once: one compiles, the other waits and loads it."""
    code = ("import json, sys; from ipl.cuda_ops import _build; r = _build.build(with_cuda=True, arch='9.0'); "
            "print(json.dumps([r.available, r.cached, r.reason]))")
    # Seed the fresh cache with a copy of the finished build minus its marker, so the race is on the lock
    # and the marker rather than on minutes of compilation (ninja finds the objects up to date).
    src = Path(compiled.cache_dir)
    shutil.copytree(src, tmp_path / src.name, ignore=shutil.ignore_patterns("ok.json", "lock"))
    env = dict(os.environ, IPL_CUDA_OPS_CACHE=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1]) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=3600)[0].strip().splitlines()[-1]) for p in procs]
    assert all(o[0] for o in outs), outs
    assert sorted(o[1] for o in outs) == [False, True], outs  # exactly one built, one loaded the cache


@pytest.mark.cuda_build
def test_stylegan2_generator_through_compiled_kernels(compiled, monkeypatch):
    """The generator's real calls (paddings, gains, clamps, dtypes) through the CUDA-path wrappers and the
    compiled kernel maths give the reference's images and gradients."""
    from ipl.generators.stylegan2 import Generator

    # (the package's `bias_act` / `upfirdn2d` attributes are the functions; the modules live in sys.modules)
    ba, ud = sys.modules["ipl.cuda_ops.bias_act"], sys.modules["ipl.cuda_ops.upfirdn2d"]

    torch.manual_seed(0)
    G = Generator(z_dim=16, w_dim=16, img_resolution=16, channel_base=256, channel_max=16, conv_clamp=0.5)
    for p in G.synthesis.parameters():  # random biases so that the bias path matters
        if p.ndim == 1:
            p.data.normal_()
    ws = G.mapping(torch.randn([2, 16])).detach().requires_grad_(True)
    g = None
    results = []
    for use_kernels in (False, True):
        if use_kernels:
            calls = {"bias_act": 0, "upfirdn2d": 0}

            def counted(name):
                def fn(*args, **kwargs):
                    calls[name] += 1
                    return getattr(compiled.module, name)(*args, **kwargs)
                return fn

            counting = SimpleNamespace(bias_act=counted("bias_act"), upfirdn2d=counted("upfirdn2d"))
            fake = lambda impl, x, op: ("cuda", counting)  # noqa: E731
            monkeypatch.setattr(ba, "resolve_impl", fake)
            monkeypatch.setattr(ud, "resolve_impl", fake)
        G.zero_grad(set_to_none=True)
        img = G.synthesis(ws)
        g = torch.randn(img.shape, generator=torch.Generator().manual_seed(1)) if g is None else g
        grads = torch.autograd.grad(img, [ws] + list(G.synthesis.parameters()), g, allow_unused=True)
        results.append((img, grads))
    (img_ref, grads_ref), (img_k, grads_k) = results
    assert calls["bias_act"] > 10 and calls["upfirdn2d"] > 4, calls  # the kernels really ran, both ways
    torch.testing.assert_close(img_k, img_ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads_k, grads_ref):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
