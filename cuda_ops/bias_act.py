"""Fused bias + activation + gain + clamp: one entry point, `impl='auto'|'cuda'|'ref'`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from ipl.cuda_ops._build import resolve_impl


@dataclass(frozen=True)
class ActivationSpec:
    """An activation function with its default slope and gain."""
    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float
    def_gain: float


ACTIVATIONS: dict[str, ActivationSpec] = {
    "linear": ActivationSpec(lambda x, a: x, 0.0, 1.0),
    "relu": ActivationSpec(lambda x, a: F.relu(x), 0.0, math.sqrt(2)),
    "lrelu": ActivationSpec(lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2)),
    "tanh": ActivationSpec(lambda x, a: torch.tanh(x), 0.0, 1.0),
    "sigmoid": ActivationSpec(lambda x, a: torch.sigmoid(x), 0.0, 1.0),
    "elu": ActivationSpec(lambda x, a: F.elu(x), 0.0, 1.0),
    "selu": ActivationSpec(lambda x, a: F.selu(x), 0.0, 1.0),
    "softplus": ActivationSpec(lambda x, a: F.softplus(x), 0.0, 1.0),
    "swish": ActivationSpec(lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2)),
}


def bias_act_ref(
    x: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    dim: int = 1,
    act: str = "linear",
    alpha: Optional[float] = None,
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
) -> torch.Tensor:
    """Reference PyTorch path: act(x + b) * gain, clamped to [-clamp, clamp]."""
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; known: {sorted(ACTIVATIONS)}")
    spec = ACTIVATIONS[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    clamp = float(clamp if clamp is not None else -1)
    if b is not None:
        assert b.ndim == 1 and b.shape[0] == x.shape[dim], (b.shape, x.shape, dim)
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


# Activation ids of the C++/CUDA kernels (csrc/bias_act.h, enum Act): same order.
ACT_IDS: dict[str, int] = {name: i for i, name in enumerate(
    ["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"])}
assert set(ACT_IDS) == set(ACTIVATIONS)

# A kernel computes, elementwise over a dense x (bias b along dim, dy with x's strides):
# order 0: clamp(act(x + b) * gain); order 1: dy * d/dx of that; order 2: dy * d2/dx2 of that.
Kernel = Callable[..., torch.Tensor]


def bias_act_math(x: torch.Tensor, b: torch.Tensor, dy: torch.Tensor, dim: int, act: int, order: int,
                  alpha: float, gain: float, clamp: float) -> torch.Tensor:
    """The CUDA kernel's per-element formulas written in PyTorch (a `Kernel`; used to test the autograd wiring)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    z = x.to(acc)
    if b.numel() > 0:
        z = z + b.to(acc).reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    one = torch.ones_like(z)
    zero = torch.zeros_like(z)
    name = [k for k, v in ACT_IDS.items() if v == act][0]
    if name == "linear":
        a, d1, d2 = z, one, zero
    elif name == "relu":
        a, d1, d2 = z.clamp_min(0), (z > 0).to(acc), zero
    elif name == "lrelu":
        a, d1, d2 = torch.where(z > 0, z, z * alpha), torch.where(z > 0, one, one * alpha), zero
    elif name == "tanh":
        a = torch.tanh(z); d1 = 1 - a * a; d2 = -2 * a * d1
    elif name == "sigmoid":
        a = torch.sigmoid(z); d1 = a * (1 - a); d2 = d1 * (1 - 2 * a)
    elif name == "elu":
        e = torch.exp(z.clamp_max(0))
        a = torch.where(z > 0, z, torch.expm1(z.clamp_max(0))); d1 = torch.where(z > 0, one, e)
        d2 = torch.where(z > 0, zero, e)
    elif name == "selu":
        scale, sa = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
        e = torch.exp(z.clamp_max(0))
        a = scale * torch.where(z > 0, z, sa * torch.expm1(z.clamp_max(0)))
        d1 = torch.where(z > 0, one * scale, scale * sa * e); d2 = torch.where(z > 0, zero, scale * sa * e)
    elif name == "softplus":
        s = torch.sigmoid(z)
        a = torch.where(z > 20, z, torch.log1p(torch.exp(z.clamp_max(20))))
        d1 = torch.where(z > 20, one, s); d2 = torch.where(z > 20, zero, s * (1 - s))
    else:  # swish
        s = torch.sigmoid(z)
        a = z * s; d1 = s * (1 + z * (1 - s)); d2 = s * (1 - s) * (2 + z * (1 - 2 * s))
    v = a * gain
    if order == 0:
        out = v.clamp(-clamp, clamp) if clamp >= 0 else v
    else:
        out = dy.to(acc) * gain * (d1 if order == 1 else d2)
        if clamp >= 0:
            out = torch.where((v >= -clamp) & (v <= clamp), out, zero)
    return out.to(x.dtype)


def _is_dense(t: torch.Tensor) -> bool:
    """True when t's elements fill a block of memory exactly once, in some dimension order."""
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`t` with `ref`'s strides (a copy only when they differ)."""
    if t.stride() == ref.stride():
        return t
    out = torch.empty_like(ref)
    out.copy_(t)
    return out


def _sum_except(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t.sum([i for i in range(t.ndim) if i != dim])


class _BiasActGrad(torch.autograd.Function):
    """dx = dy * g'(x + b), itself differentiable: gives bias_act an exact second derivative."""

    @staticmethod
    def forward(ctx: Any, dy: torch.Tensor, x: torch.Tensor, b: torch.Tensor, cfg: tuple) -> torch.Tensor:
        kernel, dim, act, alpha, gain, clamp = cfg
        ctx.save_for_backward(dy, x, b)
        ctx.cfg = cfg
        return kernel(x, b, _like(dy, x), dim, act, 1, alpha, gain, clamp)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):  # type: ignore[override]
        dy, x, b = ctx.saved_tensors
        kernel, dim, act, alpha, gain, clamp = ctx.cfg
        g = _like(g, x)
        d_dy = d_x = d_b = None
        if ctx.needs_input_grad[0]:
            d_dy = _BiasActGrad.apply(g, x, b, ctx.cfg)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            d_x = kernel(x, b, _like(g * dy, x), dim, act, 2, alpha, gain, clamp)
            if ctx.needs_input_grad[2]:
                d_b = _sum_except(d_x, dim)
        return d_dy, d_x, d_b, None


class _BiasAct(torch.autograd.Function):
    """bias_act through a `Kernel` (the CUDA extension, or a stand-in in tests)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, b: torch.Tensor, cfg: tuple) -> torch.Tensor:
        kernel, dim, act, alpha, gain, clamp = cfg
        ctx.save_for_backward(x, b)
        ctx.cfg = cfg
        return kernel(x, b, b.new_empty([0]), dim, act, 0, alpha, gain, clamp)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor):  # type: ignore[override]
        x, b = ctx.saved_tensors
        dim = ctx.cfg[1]
        dx = _BiasActGrad.apply(dy, x, b, ctx.cfg)
        db = _sum_except(dx, dim) if ctx.needs_input_grad[1] else None
        return (dx if ctx.needs_input_grad[0] else None), db, None


def bias_act_kernel(
    x: torch.Tensor,
    b: Optional[torch.Tensor],
    kernel: Kernel,
    dim: int = 1,
    act: str = "linear",
    alpha: Optional[float] = None,
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
) -> torch.Tensor:
    """bias_act with the same semantics as `bias_act_ref` (dtype promotion included), computed by `kernel`."""
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; known: {sorted(ACTIVATIONS)}")
    assert 0 <= dim < x.ndim, (dim, x.shape)
    spec = ACTIVATIONS[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    clamp = float(clamp if clamp is not None else -1)
    if b is not None:
        assert b.ndim == 1 and b.shape[0] == x.shape[dim], (b.shape, x.shape, dim)
        dtype = torch.result_type(x, b)  # as `x + b` in the reference
        x, b = x.to(dtype), b.to(device=x.device, dtype=dtype).contiguous()
    else:
        b = x.new_empty([0])
    if not _is_dense(x):
        x = x.contiguous()
    return _BiasAct.apply(x, b, (kernel, dim, ACT_IDS[act], alpha, gain, clamp))


def bias_act(
    x: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    dim: int = 1,
    act: str = "linear",
    alpha: Optional[float] = None,
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Add bias `b` along `dim`, apply `act`, scale by `gain`, clamp to +-`clamp`."""
    which, module = resolve_impl(impl, x, "bias_act")
    if which == "cuda":
        return bias_act_kernel(x, b, module.bias_act, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    return bias_act_ref(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
