"""Check a freshly built extension against the reference once, on the device, before `impl='auto'` trusts it.

Each op runs forward and backward on small inputs of every dtype the project uses (float32, float16, bfloat16)
in the configurations StyleGAN2 uses (bias_act: linear and lrelu with gain and clamp; upfirdn2d: the 2x upsampling
of the synthesis and a 2x downsampling), and is compared with the reference path computed in float32.
A mismatch is recorded in the build's cache folder (`mismatch.json`, with the reason) and the reference runs
instead (one warning); a pass is recorded as `verified.json`, so later processes skip the check.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Largest allowed |kernel - reference| / max |reference| (the gpu tests' tolerances).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
BIAS_ACT_CASES = ({"act": "linear"}, {"act": "lrelu", "gain": 2 ** 0.5}, {"act": "lrelu", "gain": 2 ** 0.5, "clamp": 0.5},
                  {"act": "linear", "clamp": 0.5})
UPFIRDN_CASES = ({"up": 2, "padding": [2, 1, 2, 1], "gain": 4}, {"down": 2, "padding": [1, 1, 1, 1]},
                 {"up": 2, "padding": [1, 1, 1, 1], "gain": 4, "separable": True})


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _compare(what: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> Optional[str]:
    if got.shape != want.shape:
        return f"{what}: shape {tuple(got.shape)}, reference {tuple(want.shape)}"
    if got.dtype != dtype:
        return f"{what}: returned {got.dtype}"
    err = _rel_err(got, want)
    if not err <= TOLERANCE[dtype]:  # also catches NaN
        return f"{what}: max relative error {err:.3g} > {TOLERANCE[dtype]:g}"
    return None


def verify_kernels(module: Any, device: torch.device) -> Optional[str]:
    """None when both ops of `module` match the reference on `device` (forward and backward, every dtype);
    otherwise the first mismatch, e.g. 'bias_act lrelu float16 backward: max relative error 0.31 > 0.002'."""
    from ipl.cuda_ops.bias_act import bias_act_kernel, bias_act_ref
    from ipl.cuda_ops.upfirdn2d import setup_filter, upfirdn2d_kernel, upfirdn2d_ref

    gen = torch.Generator().manual_seed(0)
    x32 = torch.randn([2, 8, 6, 5], generator=gen)
    b32 = torch.randn([8], generator=gen)
    img32 = torch.randn([2, 3, 9, 7], generator=gen)
    for dtype in DTYPES:
        name = str(dtype).replace("torch.", "")
        for case in BIAS_ACT_CASES:
            x = x32.to(device=device, dtype=dtype).requires_grad_(True)
            b = b32.to(device=device, dtype=dtype).requires_grad_(True)
            y = bias_act_kernel(x, b, module.bias_act, **case)
            xr = x.detach().float().requires_grad_(True)
            br = b.detach().float().requires_grad_(True)
            yr = bias_act_ref(xr, br, **case)
            what = f"bias_act {case['act']}{' clamp' if 'clamp' in case else ''} {name}"
            problem = _compare(f"{what} forward", y, yr, dtype)
            if problem:
                return problem
            dy = torch.randn(y.shape, generator=gen).to(device)
            gx, gb = torch.autograd.grad(y, [x, b], dy.to(dtype))
            gxr, gbr = torch.autograd.grad(yr, [xr, br], dy)
            problem = _compare(f"{what} backward (x)", gx, gxr, dtype) or \
                _compare(f"{what} backward (bias)", gb, gbr, dtype)
            if problem:
                return problem
        for case in UPFIRDN_CASES:
            case = dict(case)
            f = setup_filter([1, 3, 3, 1], separable=case.pop("separable", False), device=device)
            x = img32.to(device=device, dtype=dtype).requires_grad_(True)
            y = upfirdn2d_kernel(x, f, module.upfirdn2d, **case)
            xr = x.detach().float().requires_grad_(True)
            yr = upfirdn2d_ref(xr, f, **case)
            what = f"upfirdn2d {case} {name}"
            problem = _compare(f"{what} forward", y, yr, dtype)
            if problem:
                return problem
            dy = torch.randn(y.shape, generator=gen).to(device)
            (gx,) = torch.autograd.grad(y, [x], dy.to(dtype))
            (gxr,) = torch.autograd.grad(yr, [xr], dy)
            problem = _compare(f"{what} backward", gx, gxr, dtype)
            if problem:
                return problem
    return None
