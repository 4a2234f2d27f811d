"""bias_act: the reference path against a per-element definition; the custom autograd against autograd."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ipl.cuda_ops import bias_act
from ipl.cuda_ops.bias_act import ACT_IDS, bias_act_kernel, bias_act_math, bias_act_ref

SQRT2 = math.sqrt(2)
# name -> (function of (z, alpha), default alpha, default gain), written out from the definitions.
DEFINITIONS = {
    "linear": (lambda z, a: z, 0.0, 1.0),
    "relu": (lambda z, a: max(z, 0.0), 0.0, SQRT2),
    "lrelu": (lambda z, a: z if z > 0 else a * z, 0.2, SQRT2),
    "tanh": (lambda z, a: math.tanh(z), 0.0, 1.0),
    "sigmoid": (lambda z, a: 1.0 / (1.0 + math.exp(-z)), 0.0, 1.0),
    "elu": (lambda z, a: z if z > 0 else math.exp(z) - 1.0, 0.0, 1.0),
    "selu": (lambda z, a: 1.0507009873554805 * (z if z > 0 else 1.6732632423543772 * (math.exp(z) - 1.0)), 0.0, 1.0),
    "softplus": (lambda z, a: z if z > 20 else math.log(1.0 + math.exp(z)), 0.0, 1.0),
    "swish": (lambda z, a: z / (1.0 + math.exp(-z)), 0.0, SQRT2),
}


def bias_act_loop(x, b, dim, act, alpha=None, gain=None, clamp=None):
    """One element at a time: act(x + b[channel]) * gain, clamped."""
    func, def_alpha, def_gain = DEFINITIONS[act]
    alpha = def_alpha if alpha is None else alpha
    gain = def_gain if gain is None else gain
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape):
        z = x[idx] + (0.0 if b is None else float(b[idx[dim]]))
        v = func(z, alpha) * gain
        if clamp is not None:
            v = min(max(v, -clamp), clamp)
        out[idx] = v
    return out


@pytest.mark.parametrize("act", sorted(DEFINITIONS))
def test_ref_matches_definition(act):
    gen = torch.Generator().manual_seed(ACT_IDS[act])
    x = torch.randn([2, 3, 4], generator=gen, dtype=torch.float64) * 3
    b = torch.randn([3], generator=gen, dtype=torch.float64)
    for kwargs in [{}, {"gain": 0.7}, {"clamp": 0.5}, {"alpha": 0.3, "gain": 2.0, "clamp": 1.5}]:
        got = bias_act_ref(x, b, dim=1, act=act, **kwargs)
        want = bias_act_loop(x.numpy(), b.numpy(), 1, act, **kwargs)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    # no bias, other dim, non-contiguous
    xt = x.transpose(0, 2)
    got = bias_act_ref(xt, b[:2], dim=2, act=act)
    np.testing.assert_allclose(got.numpy(), bias_act_loop(xt.numpy(), b[:2].numpy(), 2, act), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bias_act_ref(x, None, act=act).numpy(), bias_act_loop(x.numpy(), None, 1, act),
                               rtol=1e-12, atol=1e-12)


def test_ref_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn([2, 3, 2, 2], generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn([3], generator=gen, dtype=torch.float64, requires_grad=True)
    for act in ("lrelu", "tanh", "swish"):
        assert torch.autograd.gradcheck(lambda x, b: bias_act_ref(x, b, act=act, gain=1.3), (x, b))


def _grad_or_none(out, inputs):
    if not out.requires_grad:
        return (None,) * len(inputs)
    return torch.autograd.grad(out, inputs, allow_unused=True)


@pytest.mark.parametrize("act", sorted(DEFINITIONS))
def test_kernel_formulas_and_autograd_wiring(act):
    """The kernel's formulas (value, first, second derivative) through the custom autograd match autograd
    through the reference, including clamp, gain, and double backward; gradcheck in float64."""
    gen = torch.Generator().manual_seed(100 + ACT_IDS[act])
    # keep values off the kinks at 0 and off the clamp edges, where derivatives are one-sided
    x = torch.randn([2, 3, 3, 2], generator=gen, dtype=torch.float64) * 2
    x = torch.where(x.abs() < 0.05, x + 0.1, x).requires_grad_(True)
    b = (torch.randn([3], generator=gen, dtype=torch.float64) * 0.01).requires_grad_(True)
    for kwargs in [{}, {"alpha": 0.1, "gain": 0.8, "clamp": 1.0}]:
        def ref(x, b):
            return bias_act_ref(x, b, dim=1, act=act, **kwargs)

        def ours(x, b):
            return bias_act_kernel(x, b, bias_act_math, dim=1, act=act, **kwargs)

        torch.testing.assert_close(ours(x, b), ref(x, b), rtol=1e-12, atol=1e-12)
        g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        want = torch.autograd.grad(ref(x, b), (x, b), g, create_graph=True)
        got = torch.autograd.grad(ours(x, b), (x, b), g, create_graph=True)
        for w_, g_ in zip(want, got):
            torch.testing.assert_close(g_, w_, rtol=1e-10, atol=1e-10)
        # second order: gradient of <grad_x, h> with respect to x and b
        h = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        want2 = _grad_or_none((want[0] * h).sum(), (x, b))  # None: the reference's grad is constant in x
        got2 = _grad_or_none((got[0] * h).sum(), (x, b))
        for w_, g_ in zip(want2, got2):
            w_ = torch.zeros_like(x if g_ is None else g_) if w_ is None else w_
            g_ = torch.zeros_like(w_) if g_ is None else g_
            torch.testing.assert_close(g_, w_, rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradcheck(lambda x, b: bias_act_kernel(x, b, bias_act_math, act=act, gain=1.2), (x, b))
    assert torch.autograd.gradgradcheck(lambda x, b: bias_act_kernel(x, b, bias_act_math, act=act), (x, b))


def test_kernel_layouts_and_dtypes():
    """channels_last, non-dense inputs, dim != 1, no bias, and x/b dtype promotion as in the reference."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn([2, 4, 3, 5], generator=gen)
    b = torch.randn([4], generator=gen)
    xcl = x.to(memory_format=torch.channels_last)
    y = bias_act_kernel(xcl, b, bias_act_math, act="lrelu", clamp=1.0)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, bias_act_ref(x, b, act="lrelu", clamp=1.0))
    xs = x[:, :, ::2]  # not dense: copied to a dense layout first
    torch.testing.assert_close(bias_act_kernel(xs, b, bias_act_math, act="tanh"), bias_act_ref(xs, b, act="tanh"))
    b3 = torch.randn([5], generator=gen)
    torch.testing.assert_close(bias_act_kernel(x, b3, bias_act_math, dim=3, act="swish"),
                               bias_act_ref(x, b3, dim=3, act="swish"))
    torch.testing.assert_close(bias_act_kernel(x, None, bias_act_math, act="relu"), bias_act_ref(x, None, act="relu"))
    for dt in (torch.float16, torch.bfloat16):
        xh = x.to(dt)
        want = bias_act_ref(xh, b, act="lrelu")  # half + float32 bias promotes to float32
        got = bias_act_kernel(xh, b, bias_act_math, act="lrelu")
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want)
        want = bias_act_ref(xh, b.to(dt), act="lrelu")
        got = bias_act_kernel(xh, b.to(dt), bias_act_math, act="lrelu")
        assert got.dtype == dt
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)


def test_public_entry_point_on_cpu_is_reference():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn([2, 3, 4, 4], generator=gen)
    b = torch.randn([3], generator=gen)
    for impl in ("auto", "ref"):
        torch.testing.assert_close(bias_act(x, b, act="lrelu", clamp=0.5, impl=impl),
                                   bias_act_ref(x, b, act="lrelu", clamp=0.5), rtol=0, atol=0)
    with pytest.raises(ValueError):
        bias_act(x, b, act="nope")
