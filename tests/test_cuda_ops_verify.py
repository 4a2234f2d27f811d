"""Before impl='auto' trusts a fresh CUDA build it checks each op against the reference (here on CPU, with
stand-in kernels: the reference maths, and deliberately wrong ones)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ipl import cuda_ops
from ipl.cuda_ops import _build, verify
from ipl.cuda_ops.bias_act import bias_act_math
from ipl.cuda_ops.upfirdn2d import upfirdn2d_math

GOOD = SimpleNamespace(bias_act=bias_act_math, upfirdn2d=upfirdn2d_math)


def _wrong_bias_act_grad_in(dtype):
    """bias_act whose first derivative is 10 % off for one dtype."""
    def kernel(x, b, dy, dim, act, order, alpha, gain, clamp):
        out = bias_act_math(x, b, dy, dim, act, order, alpha, gain, clamp)
        return out * 1.1 if order == 1 and x.dtype == dtype else out
    return kernel


def _shifted_upfirdn(*args):
    return upfirdn2d_math(*args).roll(1, dims=-1)  # off by one pixel


@pytest.fixture(autouse=True)
def _fake_gpu(monkeypatch, tmp_path):
    """A 'GPU' of architecture 9.0 whose build is `state.module`; the check runs on CPU tensors."""
    monkeypatch.setenv("IPL_CUDA_OPS_CACHE", str(tmp_path / "cache"))
    for var in ("IPL_CUDA_OPS", "IPL_CUDA_OPS_REBUILD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(_build, "_RESULTS", {})
    monkeypatch.setattr(_build, "_WARNED", set())
    monkeypatch.setattr(_build, "_OVERRIDE", None)
    monkeypatch.setattr(_build, "device_arch", lambda device=None: "9.0")
    state = SimpleNamespace(module=GOOD, builds=0, checks=0, folder=tmp_path / "cache" / "ipl_cuda_ops_k")

    def fake_build(with_cuda=True, arch=None, rebuild=None):
        state.builds += 1
        state.folder.mkdir(parents=True, exist_ok=True)
        return _build.BuildResult(True, "built", cache_dir=str(state.folder), key="k", arch=arch, module=state.module)

    real = verify.verify_kernels

    def on_cpu(module, device):
        state.checks += 1
        return real(module, torch.device("cpu"))

    monkeypatch.setattr(_build, "build", fake_build)
    monkeypatch.setattr(verify, "verify_kernels", on_cpu)
    return state


def _gpu_tensor():
    return SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0))


def test_the_reference_maths_passes_and_is_trusted(_fake_gpu):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        which, module = _build.resolve_impl("auto", _gpu_tensor(), "bias_act")
    assert which == "cuda" and module is GOOD and _fake_gpu.checks == 1
    record = json.loads((_fake_gpu.folder / "verified.json").read_text())
    assert record["arch"] == "9.0" and not (_fake_gpu.folder / "mismatch.json").exists()
    # Another process finds the record and does not check again.
    _build._RESULTS.clear()
    assert _build.resolve_impl("auto", _gpu_tensor(), "upfirdn2d")[0] == "cuda" and _fake_gpu.checks == 1


@pytest.mark.parametrize("module,expected", [
    (SimpleNamespace(bias_act=_wrong_bias_act_grad_in(torch.bfloat16), upfirdn2d=upfirdn2d_math),
     "bias_act linear bfloat16 backward (x): max relative error"),
    (SimpleNamespace(bias_act=_wrong_bias_act_grad_in(torch.float32), upfirdn2d=upfirdn2d_math),
     "bias_act linear float32 backward (x)"),
    (SimpleNamespace(bias_act=bias_act_math, upfirdn2d=_shifted_upfirdn), "upfirdn2d {'up': 2"),
])
def test_a_wrong_kernel_is_recorded_and_auto_falls_back_with_one_warning(_fake_gpu, module, expected):
    _fake_gpu.module = module
    with pytest.warns(RuntimeWarning, match="disagree with the reference on this GPU") as rec:
        for op in ("bias_act", "upfirdn2d", "bias_act"):
            assert _build.resolve_impl("auto", _gpu_tensor(), op) == ("ref", None)
    assert len(rec) == 1 and expected in str(rec[0].message)
    record = json.loads((_fake_gpu.folder / "mismatch.json").read_text())
    assert expected in record["reason"] and not (_fake_gpu.folder / "verified.json").exists()
    # impl='cuda' refuses with the same reason; the status says it too.
    with pytest.raises(cuda_ops.CudaOpsUnavailable, match="disagree"):
        _build.resolve_impl("cuda", _gpu_tensor(), "bias_act")
    assert expected in _build.build_status(device=torch.device("cuda", 0))["reason"]
    # A later process trusts the record without checking again; IPL_CUDA_OPS_REBUILD=1 checks again.
    _build._RESULTS.clear()
    checks = _fake_gpu.checks
    assert _build.get_plugin(torch.device("cuda", 0)).available is False and _fake_gpu.checks == checks
    _build._RESULTS.clear()
    _fake_gpu.module = GOOD
    import os
    os.environ["IPL_CUDA_OPS_REBUILD"] = "1"
    try:
        assert _build.get_plugin(torch.device("cuda", 0)).available
    finally:
        del os.environ["IPL_CUDA_OPS_REBUILD"]
    assert (_fake_gpu.folder / "verified.json").exists() and not (_fake_gpu.folder / "mismatch.json").exists()


def test_a_crashing_kernel_counts_as_a_mismatch(_fake_gpu):
    def crash(*args):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    _fake_gpu.module = SimpleNamespace(bias_act=crash, upfirdn2d=upfirdn2d_math)
    res = _build.get_plugin(torch.device("cuda", 0))
    assert not res.available and "no kernel image" in res.reason


def test_every_dtype_and_both_directions_are_checked():
    seen = []

    def spy(x, b, dy, dim, act, order, alpha, gain, clamp):
        seen.append((x.dtype, order))
        return bias_act_math(x, b, dy, dim, act, order, alpha, gain, clamp)

    assert verify.verify_kernels(SimpleNamespace(bias_act=spy, upfirdn2d=upfirdn2d_math), torch.device("cpu")) is None
    assert {dt for dt, _ in seen} == {torch.float32, torch.float16, torch.bfloat16}
    assert {o for _, o in seen} == {0, 1}
