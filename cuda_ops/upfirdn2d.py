"""Upsample, FIR-filter and downsample in one op: one entry point, `impl='auto'|'cuda'|'ref'`."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ipl.cuda_ops._build import resolve_impl

IntOrPair = Union[int, Sequence[int]]


def _pair(v: IntOrPair) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    assert len(v) == 2, v
    return int(v[0]), int(v[1])


def _padding4(padding: IntOrPair) -> tuple[int, int, int, int]:
    """[x0, x1, y0, y1] from an int, an [x, y] pair or a 4-list."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        px, py = padding
        return px, px, py, py
    assert len(padding) == 4, padding
    return tuple(padding)  # type: ignore[return-value]


def setup_filter(
    f: Union[Sequence[float], torch.Tensor, None],
    device: torch.device = torch.device("cpu"),
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1.0,
    separable: Optional[bool] = None,
) -> torch.Tensor:
    """Turn a list of taps into a float32 filter tensor (1-D if separable, else 2-D), normalised to sum 1."""
    if f is None:
        f = [1.0]
    f = torch.as_tensor(f, dtype=torch.float32)
    assert f.ndim in (0, 1, 2), f.shape
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = f.ger(f)
    assert f.ndim == (1 if separable else 2)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def upfirdn2d_ref(
    x: torch.Tensor,
    f: Optional[torch.Tensor],
    up: IntOrPair = 1,
    down: IntOrPair = 1,
    padding: IntOrPair = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """Reference PyTorch path: zero-insert upsample, pad (negative crops), convolve with f, decimate."""
    assert x.ndim == 4, f"expected [N, C, H, W], got {tuple(x.shape)}"
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    assert f.ndim in (1, 2) and f.dtype == torch.float32, (f.shape, f.dtype)
    batch, channels, in_h, in_w = x.shape
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _padding4(padding)

    # Upsample by inserting up-1 zeros after every sample.
    x = x.reshape(batch, channels, in_h, 1, in_w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape(batch, channels, in_h * upy, in_w * upx)

    # Pad with zeros, then crop where padding is negative.
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]

    # True convolution (conv2d correlates, so flip unless asked not to); gain applies per dimension.
    f = f * (gain ** (f.ndim / 2))
    f = f.to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    weight = f[None, None].repeat([channels, 1] + [1] * f.ndim)
    if f.ndim == 2:
        x = F.conv2d(x, weight, groups=channels)
    else:
        x = F.conv2d(x, weight.unsqueeze(2), groups=channels)
        x = F.conv2d(x, weight.unsqueeze(3), groups=channels)

    # Keep every down-th sample.
    return x[:, :, ::downy, ::downx]


# A kernel computes upfirdn2d with a float32 correlation filter w (already flipped and gain-scaled):
# kernel(x, w, upx, upy, downx, downy, px0, px1, py0, py1, separable) -> y.
Kernel = Callable[..., torch.Tensor]


def upfirdn2d_math(x: torch.Tensor, w: torch.Tensor, upx: int, upy: int, downx: int, downy: int,
                   px0: int, px1: int, py0: int, py1: int, separable: bool) -> torch.Tensor:
    """A `Kernel` made of the reference path (used to test the autograd wiring without the extension)."""
    assert w.ndim == (1 if separable else 2), (w.shape, separable)
    return upfirdn2d_ref(x, w, up=(upx, upy), down=(downx, downy), padding=[px0, px1, py0, py1],
                         flip_filter=True)


class _UpFirDn2d(torch.autograd.Function):
    """upfirdn2d through a `Kernel`; its backward is upfirdn2d again (so every order of gradient works)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, f: torch.Tensor, cfg: tuple) -> torch.Tensor:
        kernel, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain = cfg
        w = f * (gain ** (f.ndim / 2))
        if not flip_filter:  # true convolution = correlation with the flipped filter
            w = w.flip(list(range(f.ndim)))
        w = w.to(device=x.device, dtype=torch.float32).contiguous()
        y = kernel(x, w, upx, upy, downx, downy, px0, px1, py0, py1, f.ndim == 1)
        ctx.save_for_backward(f)
        ctx.cfg = cfg
        ctx.in_hw = x.shape[2:]
        ctx.out_hw = y.shape[2:]
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor):  # type: ignore[override]
        (f,) = ctx.saved_tensors
        kernel, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain = ctx.cfg
        if not ctx.needs_input_grad[0]:
            return None, None, None
        in_h, in_w = ctx.in_hw
        out_h, out_w = ctx.out_hw
        fw, fh = _filter_size(f)
        # d out[o] / d x[k] = w[k*up - o*down + p0]: upfirdn2d of dy with up and down swapped, the filter
        # flipped, leading padding fw - p0 - 1, and trailing padding that makes the result in_h x in_w.
        grad_cfg = (kernel, downx, downy, upx, upy,
                    fw - px0 - 1, in_w * upx - out_w * downx + px0 - upx + 1,
                    fh - py0 - 1, in_h * upy - out_h * downy + py0 - upy + 1,
                    not flip_filter, gain)
        dx = _UpFirDn2d.apply(dy, f, grad_cfg)
        assert dx.shape[2:] == (in_h, in_w), (dx.shape, (in_h, in_w))
        return dx, None, None


def upfirdn2d_kernel(
    x: torch.Tensor,
    f: Optional[torch.Tensor],
    kernel: Kernel,
    up: IntOrPair = 1,
    down: IntOrPair = 1,
    padding: IntOrPair = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """upfirdn2d with the semantics of `upfirdn2d_ref`, computed by `kernel` (gradients for x, not f)."""
    assert x.ndim == 4, f"expected [N, C, H, W], got {tuple(x.shape)}"
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    assert f.ndim in (1, 2) and f.dtype == torch.float32, (f.shape, f.dtype)
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _padding4(padding)
    cfg = (kernel, upx, upy, downx, downy, px0, px1, py0, py1, bool(flip_filter), float(gain))
    return _UpFirDn2d.apply(x, f.detach(), cfg)


def upfirdn2d(
    x: torch.Tensor,
    f: Optional[torch.Tensor],
    up: IntOrPair = 1,
    down: IntOrPair = 1,
    padding: IntOrPair = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
    impl: str = "auto",
) -> torch.Tensor:
    """Pad, upsample, FIR-filter and downsample a batch of images [N, C, H, W]."""
    which, module = resolve_impl(impl, x, "upfirdn2d")
    if which == "cuda" and not (f is not None and f.requires_grad and torch.is_grad_enabled()):
        # (A trainable filter needs its own gradient, which only the reference path computes.)
        return upfirdn2d_kernel(x, f, module.upfirdn2d, up=up, down=down, padding=padding,
                                flip_filter=flip_filter, gain=gain)
    return upfirdn2d_ref(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


def _filter_size(f: Optional[torch.Tensor]) -> tuple[int, int]:
    if f is None:
        return 1, 1
    fw = f.shape[-1]
    fh = f.shape[0]
    return fw, fh


def filter2d(x, f, padding: IntOrPair = 0, flip_filter: bool = False, gain: float = 1.0, impl: str = "auto"):
    """Filter with f, keeping the size (plus padding)."""
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up: IntOrPair = 2, padding: IntOrPair = 0, flip_filter: bool = False, gain: float = 1.0,
               impl: str = "auto"):
    """Upsample by `up` with the interpolation filter f (gain up*up keeps the mean)."""
    upx, upy = _pair(up)
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down: IntOrPair = 2, padding: IntOrPair = 0, flip_filter: bool = False, gain: float = 1.0,
                 impl: str = "auto"):
    """Anti-alias filter with f, then keep every `down`-th sample."""
    downx, downy = _pair(down)
    px0, px1, py0, py1 = _padding4(padding)
    fw, fh = _filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
