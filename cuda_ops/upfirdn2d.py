"""Upsample, FIR-filter and downsample in one op: one entry point, `impl='auto'|'cuda'|'ref'`."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

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
    # The CUDA path is filled in by the CUDA-ops work; until then every impl runs the reference.
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
