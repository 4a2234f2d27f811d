"""CUDA kernels against the reference on a GPU: `pytest -m gpu tests/test_cuda_ops_gpu.py` (builds on first use)."""
from __future__ import annotations

import itertools

import pytest
import torch

from ipl.cuda_ops import bias_act, build_status, downsample2d, setup_filter, upfirdn2d, upsample2d
from ipl.cuda_ops.bias_act import ACT_IDS, bias_act_ref
from ipl.cuda_ops.upfirdn2d import upfirdn2d_ref

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEV = "cuda"
LOW = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # relative to the largest magnitude, per dtype


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float64."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.fixture(scope="module", autouse=True)
def built():
    status = build_status(build_now=True)
    assert status["available"], status
    return status


@pytest.fixture(autouse=True)
def exact_reference():
    """The reference runs cuDNN convolutions: keep them in true float32 (no TF32) for a 1e-5 comparison."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("act", sorted(ACT_IDS))
def test_bias_act_parity(act):
    gen = torch.Generator(device=DEV).manual_seed(ACT_IDS[act])
    x = torch.randn([4, 32, 17, 9], generator=gen, device=DEV) * 2
    b = torch.randn([32], generator=gen, device=DEV)
    for kw in [{}, {"gain": 0.5, "clamp": 1.0}, {"alpha": 0.3}]:
        got = bias_act(x, b, act=act, impl="cuda", **kw)
        want = bias_act_ref(x, b, act=act, **kw)
        assert rel_err(got, want) <= 1e-5, (act, kw)
        xcl = x.to(memory_format=torch.channels_last)
        got = bias_act(xcl, b, act=act, impl="cuda", **kw)
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert rel_err(got, want) <= 1e-5, (act, kw, "channels_last")
    for dt, tol in LOW.items():
        got = bias_act(x.to(dt), b.to(dt), act=act, impl="cuda", clamp=4.0)
        want = bias_act_ref(x.to(dt).float(), b.to(dt).float(), act=act, clamp=4.0)
        assert got.dtype == dt and rel_err(got, want) <= tol, (act, dt)


@pytest.mark.parametrize("act", sorted(ACT_IDS))
def test_bias_act_gradients(act):
    gen = torch.Generator(device=DEV).manual_seed(10 + ACT_IDS[act])
    x = (torch.randn([3, 8, 5, 4], generator=gen, device=DEV) * 2).requires_grad_(True)
    b = torch.randn([8], generator=gen, device=DEV).requires_grad_(True)
    g = torch.randn(x.shape, generator=gen, device=DEV)
    want = torch.autograd.grad(bias_act_ref(x, b, act=act, clamp=2.0), (x, b), g)
    got = torch.autograd.grad(bias_act(x, b, act=act, clamp=2.0, impl="cuda"), (x, b), g)
    for w_, g_ in zip(want, got):
        assert rel_err(g_, w_) <= 1e-5, act
    xd = x.detach().double()[:1, :2, :3, :3].requires_grad_(True)
    bd = b.detach().double()[:2].requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, b: bias_act(x, b, act=act, impl="cuda"), (xd, bd))
    assert torch.autograd.gradgradcheck(lambda x, b: bias_act(x, b, act=act, impl="cuda"), (xd, bd))


CONFIGS = list(itertools.product([1, 2, 4], [1, 2, 4], [1, 2], [3, 4]))


@pytest.mark.parametrize("up,down,ndim,taps", CONFIGS)
def test_upfirdn2d_parity(up, down, ndim, taps):
    gen = torch.Generator(device=DEV).manual_seed(up * 100 + down * 10 + ndim + taps)
    f = torch.rand([taps] if ndim == 1 else [taps, taps + 1], generator=gen, device=DEV) + 0.1
    x = torch.randn([3, 16, 19, 12], generator=gen, device=DEV)
    for pad, flip, gain in [([1, 2, 2, 1], False, 1.0), ([-1, 3, 2, -2], True, 4.0)]:
        want = upfirdn2d_ref(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
        got = upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain, impl="cuda")
        assert got.shape == want.shape
        assert rel_err(got, want) <= 1e-5, (up, down, ndim, taps, pad)
        xcl = x.to(memory_format=torch.channels_last)
        got = upfirdn2d(xcl, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain, impl="cuda")
        assert rel_err(got, want) <= 1e-5, "channels_last"
    for dt, tol in LOW.items():
        got = upfirdn2d(x.to(dt), f, up=up, down=down, padding=1, impl="cuda")
        want = upfirdn2d_ref(x.to(dt).float(), f, up=up, down=down, padding=1)
        assert got.dtype == dt and rel_err(got, want) <= tol, dt


@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2), (4, 2)])
def test_upfirdn2d_gradients(up, down):
    gen = torch.Generator(device=DEV).manual_seed(up + 7 * down)
    f = setup_filter([1, 3, 3, 1], device=DEV)
    x = torch.randn([2, 8, 13, 10], generator=gen, device=DEV, requires_grad=True)
    pad = [2, 1, 1, 2]
    g = torch.randn(upfirdn2d_ref(x, f, up=up, down=down, padding=pad).shape, generator=gen, device=DEV)
    (want,) = torch.autograd.grad(upfirdn2d_ref(x, f, up=up, down=down, padding=pad), x, g)
    (got,) = torch.autograd.grad(upfirdn2d(x, f, up=up, down=down, padding=pad, impl="cuda"), x, g)
    assert rel_err(got, want) <= 1e-5
    xd = x.detach().double()[:1, :2, :5, :4].requires_grad_(True)
    fn = lambda x: upfirdn2d(x, f, up=up, down=down, padding=pad, impl="cuda")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (xd,)) and torch.autograd.gradgradcheck(fn, (xd,))


def test_stylegan_helpers_parity():
    gen = torch.Generator(device=DEV).manual_seed(0)
    f = setup_filter([1, 3, 3, 1], device=DEV)
    x = torch.randn([2, 64, 32, 32], generator=gen, device=DEV)
    for op in (upsample2d, downsample2d):
        assert rel_err(op(x, f, impl="cuda"), op(x, f, impl="ref")) <= 1e-5
    # auto picks CUDA on a GPU and gives the same numbers
    assert rel_err(upsample2d(x, f, impl="auto"), upsample2d(x, f, impl="ref")) <= 1e-5
