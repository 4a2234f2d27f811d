"""upfirdn2d: the reference path against a loop-level definition, the custom autograd against autograd."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ipl.cuda_ops import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d
from ipl.cuda_ops.upfirdn2d import upfirdn2d_kernel, upfirdn2d_math, upfirdn2d_ref


def upfirdn2d_loop(x, f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), flip_filter=False, gain=1.0):
    """The definition, one output sample at a time: insert zeros, pad/crop, convolve, keep every down-th."""
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    f2 = np.outer(f, f) if f.ndim == 1 else f
    f2 = f2 * gain
    n, c, h, w = x.shape
    (ux, uy), (dx, dy), (x0, x1, y0, y1) = up, down, pad
    upsampled = np.zeros((n, c, h * uy, w * ux))
    for iy in range(h):
        for ix in range(w):
            upsampled[:, :, iy * uy, ix * ux] = x[:, :, iy, ix]
    hp, wp = h * uy + y0 + y1, w * ux + x0 + x1
    padded = np.zeros((n, c, hp, wp))
    for yy in range(hp):
        for xx in range(wp):
            sy, sx = yy - y0, xx - x0
            if 0 <= sy < h * uy and 0 <= sx < w * ux:
                padded[:, :, yy, xx] = upsampled[:, :, sy, sx]
    fh, fw = f2.shape
    full = np.zeros((n, c, hp - fh + 1, wp - fw + 1))
    for oy in range(full.shape[2]):
        for ox in range(full.shape[3]):
            acc = np.zeros((n, c))
            for i in range(fh):
                for j in range(fw):
                    # convolution: tap (i, j) of the window meets filter entry (fh-1-i, fw-1-j)
                    tap = f2[i, j] if flip_filter else f2[fh - 1 - i, fw - 1 - j]
                    acc += padded[:, :, oy + i, ox + j] * tap
            full[:, :, oy, ox] = acc
    return full[:, :, ::dy, ::dx]


def _filter(kind: str, taps: int, gen: torch.Generator) -> torch.Tensor:
    """Non-symmetric random filters, so that a flip mistake cannot hide."""
    shape = [taps] if kind == "1d" else [taps, taps + (1 if taps < 4 else -1)]
    return torch.rand(shape, generator=gen, dtype=torch.float32) + 0.1


CASES = []
for up, down in [(1, 1), (2, 1), (1, 2), (4, 1), (1, 4), (2, 2), (4, 2), ((2, 1), (1, 2))]:
    for kind, taps in [("1d", 3), ("1d", 4), ("2d", 3), ("2d", 4)]:
        CASES.append((up, down, kind, taps))


@pytest.mark.parametrize("up,down,kind,taps", CASES)
def test_ref_matches_loop_definition(up, down, kind, taps):
    gen = torch.Generator().manual_seed(hash((str(up), str(down), kind, taps)) % 2**31)
    x = torch.randn([2, 3, 5, 7], generator=gen, dtype=torch.float64)
    f = _filter(kind, taps, gen)
    upx, upy = (up, up) if isinstance(up, int) else up
    downx, downy = (down, down) if isinstance(down, int) else down
    fh, fw = (f.shape[0], f.shape[0]) if f.ndim == 1 else f.shape
    for pad, flip, gain in [((1, 2, 2, 1), False, 1.0), ((-1, fw, fh, -2), True, 3.0), ((0, fw - 1, fh - 1, 0), False, 0.5)]:
        if 5 * upy + pad[2] + pad[3] < fh or 7 * upx + pad[0] + pad[1] < fw:
            continue
        got = upfirdn2d_ref(x, f, up=up, down=down, padding=list(pad), flip_filter=flip, gain=gain)
        want = upfirdn2d_loop(x.numpy(), f.numpy(), (upx, upy), (downx, downy), pad, flip, gain)
        assert got.shape == want.shape, (got.shape, want.shape)
        # (the reference scales the float32 filter by the gain in float32: ~1e-7 relative rounding)
        np.testing.assert_allclose(got.numpy(), want, rtol=2e-6, atol=2e-6)


def test_ref_channels_last_and_float32():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn([2, 4, 6, 9], generator=gen)
    f = _filter("2d", 4, gen)
    want = upfirdn2d_loop(x.double().numpy(), f.numpy(), (2, 2), (1, 1), (2, 1, 1, 2))
    got = upfirdn2d_ref(x.to(memory_format=torch.channels_last), f, up=2, padding=[2, 1, 1, 2])
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-5)


def test_kernel_wiring_matches_ref_forward_and_layouts():
    """The autograd.Function path (here with the reference as its kernel) gives the reference's results."""
    gen = torch.Generator().manual_seed(2)
    for (up, down, kind, taps), flip in itertools.product(CASES[::3], [False, True]):
        x = torch.randn([2, 3, 6, 5], generator=gen, dtype=torch.float64)
        f = _filter(kind, taps, gen)
        pad = [1, -1, 2, 0]
        want = upfirdn2d_ref(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=2.0)
        got = upfirdn2d_kernel(x, f, upfirdn2d_math, up=up, down=down, padding=pad, flip_filter=flip, gain=2.0)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("up,down,pad", [(1, 1, [1, 2, 0, 1]), (2, 1, [2, 1, 2, 1]), (1, 2, [1, 1, 2, 1]),
                                         (4, 2, [-1, 3, 2, -2]), ((2, 1), (1, 4), [0, 2, 3, 1])])
def test_custom_backward_gradcheck(up, down, pad):
    """The hand-written backward (up/down swapped, flipped filter, adjusted padding) is exact, twice."""
    gen = torch.Generator().manual_seed(3)
    for kind, taps in [("1d", 3), ("2d", 4)]:
        f = _filter(kind, taps, gen)
        x = torch.randn([1, 2, 4, 5], generator=gen, dtype=torch.float64, requires_grad=True)

        def fn(x):
            return upfirdn2d_kernel(x, f, upfirdn2d_math, up=up, down=down, padding=pad, gain=1.5)

        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))
        # and the same gradient as autograd through the reference
        g = torch.randn(fn(x).shape, generator=gen, dtype=torch.float64)
        (want,) = torch.autograd.grad(upfirdn2d_ref(x, f, up=up, down=down, padding=pad, gain=1.5), x, g)
        (got,) = torch.autograd.grad(fn(x), x, g)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_ref_gradcheck_float64():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn([1, 2, 3, 4], generator=gen, dtype=torch.float64, requires_grad=True)
    f = _filter("2d", 3, gen)
    assert torch.autograd.gradcheck(lambda x: upfirdn2d_ref(x, f, up=2, down=1, padding=[1, 2, 2, 1]), (x,))


def test_helpers_known_answers():
    """upsample2d / downsample2d / filter2d keep sizes and the mean, and a box downsample is avg_pool2d."""
    gen = torch.Generator().manual_seed(5)
    k = setup_filter([1, 3, 3, 1])
    assert k.shape == (4, 4) and abs(float(k.sum()) - 1.0) < 1e-6
    const = torch.full([1, 2, 8, 6], 3.0)
    up = upsample2d(const, k)
    assert up.shape == (1, 2, 16, 12)
    torch.testing.assert_close(up[:, :, 2:-2, 2:-2], torch.full_like(up[:, :, 2:-2, 2:-2], 3.0))
    down = downsample2d(const, k)
    assert down.shape == (1, 2, 4, 3)
    torch.testing.assert_close(down[:, :, 1:-1, 1:-1], torch.full_like(down[:, :, 1:-1, 1:-1], 3.0))
    filt = filter2d(const, k)
    assert filt.shape == const.shape
    x = torch.randn([2, 3, 8, 6], generator=gen)
    torch.testing.assert_close(downsample2d(x, setup_filter([1, 1])), F.avg_pool2d(x, 2))
    # separable 1-D filter (8+ taps) equals its 2-D outer product
    f1 = setup_filter([1, 2, 3, 4, 4, 3, 2, 1], separable=True)
    f2 = setup_filter([1, 2, 3, 4, 4, 3, 2, 1], separable=False)
    assert f1.ndim == 1 and f2.ndim == 2
    torch.testing.assert_close(upsample2d(x, f1), upsample2d(x, f2), rtol=1e-5, atol=1e-5)


def test_public_entry_point_on_cpu_is_reference():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn([1, 2, 5, 5], generator=gen)
    f = _filter("2d", 3, gen)
    for impl in ("auto", "ref"):
        torch.testing.assert_close(upfirdn2d(x, f, up=2, padding=1, impl=impl),
                                   upfirdn2d_ref(x, f, up=2, padding=1), rtol=0, atol=0)
