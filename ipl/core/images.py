"""Generator output ([-1, 1] tensors) to uint8 arrays, PNG files and comparison grids."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ipl.core.atomic import atomic_path
from ipl.core.errors import IPLError

PathLike = Union[str, os.PathLike]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] images [3, H, W] or [N, 3, H, W] -> uint8 HWC ([H, W, 3] or [N, H, W, 3]); out-of-range clipped."""
    assert images.ndim in (3, 4) and images.shape[-3] in (1, 3), f"expected [N,] C, H, W, got {tuple(images.shape)}"
    x = images.detach().to("cpu", torch.float32)
    x = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def _write_png(array: np.ndarray, path: PathLike) -> Path:
    from PIL import Image

    path = Path(path)
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def make_grid(rows: Sequence[torch.Tensor], nrow: Optional[int] = None, padding: int = 2) -> np.ndarray:
    """uint8 HWC grid: each tensor is a row of images; rows wrap every nrow images, chunks interleaved."""
    rows = [r for r in rows]
    assert rows, "no rows to draw"
    n_max = max(r.shape[0] for r in rows)
    shape = rows[0].shape[1:]
    for r in rows:
        assert r.ndim == 4 and r.shape[1:] == shape, f"every row must be [N, {', '.join(map(str, shape))}]"
    if nrow is None:
        # A single row is laid out square-ish; several rows keep one line each (source over adapted).
        nrow = math.ceil(math.sqrt(n_max)) if len(rows) == 1 else n_max
    nrow = max(1, min(nrow, n_max))
    channels, height, width = shape
    n_chunks = math.ceil(n_max / nrow)
    lines = [(r, j) for j in range(n_chunks) for r in rows]  # chunk j of every row, then chunk j+1 ...
    grid_h = len(lines) * (height + padding) + padding
    grid_w = nrow * (width + padding) + padding
    grid = np.full([grid_h, grid_w, channels], 255, dtype=np.uint8)
    for li, (r, j) in enumerate(lines):
        imgs = to_uint8(r[j * nrow: (j + 1) * nrow])
        for k, img in enumerate(imgs):
            y = padding + li * (height + padding)
            x = padding + k * (width + padding)
            grid[y: y + height, x: x + width] = img
    return grid


def save_grid(rows: Union[torch.Tensor, Sequence[torch.Tensor]], path: PathLike, nrow: Optional[int] = None) -> Path:
    """Write a PNG grid; `rows` is a list of [N, 3, H, W] tensors stacked vertically (or one tensor)."""
    if isinstance(rows, torch.Tensor):
        rows = [rows]
    return _write_png(make_grid(rows, nrow=nrow), path)


def save_images(images: torch.Tensor, outdir: PathLike, names: Sequence[str]) -> list[Path]:
    """One PNG per image in outdir ('.png' appended to names without a suffix)."""
    assert images.ndim == 4 and len(names) == images.shape[0], (tuple(images.shape), len(names))
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    arrays = to_uint8(images)
    paths = []
    for array, name in zip(arrays, names):
        name = name if Path(name).suffix else f"{name}.png"
        paths.append(_write_png(array, outdir / name))
    return paths


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_image_folder(folder: Union[str, Path], resolution: int, limit: Optional[int] = None) -> torch.Tensor:
    """Images of a folder (sorted by name), centre-cropped and resized to resolution, as [N,3,R,R] in [-1,1]."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise IPLError(f"--source-images {folder}: not a folder. Pass a folder of .png/.jpg images.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise IPLError(f"--source-images {folder}: no images found (looked for {', '.join(IMAGE_EXTS)}).")
    if limit is not None:
        files = files[:limit]
    out = []
    for path in files:
        try:
            img = Image.open(path).convert("RGB")
        except Exception as e:  # PIL raises several types for unreadable files
            raise IPLError(f"--source-images: cannot read {path} as an image ({e}).") from e
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        img = img.resize((resolution, resolution), Image.BICUBIC)
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
        out.append(arr / 127.5 - 1)
    return torch.stack(out)


def read_image(path: Union[str, Path], resolution: int) -> torch.Tensor:
    """One image file of any size and mode as [3, R, R] in [-1, 1]: EXIF-rotated, alpha dropped, centre-cropped to
    a square and resized (Lanczos, as NVIDIA's projector) to resolution. IPLError naming the file if unreadable."""
    from PIL import Image, ImageOps

    path = Path(path)
    try:
        with Image.open(path) as opened:
            img = ImageOps.exif_transpose(opened).convert("RGB")
    except Exception as e:  # PIL raises several types for unreadable or truncated files
        raise IPLError(f"cannot read {path} as an image ({type(e).__name__}: {e}); expected a "
                       f"{'/'.join(ext[1:] for ext in IMAGE_EXTS)} file") from e
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    img = img.resize((resolution, resolution), Image.LANCZOS)
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
    return arr / 127.5 - 1


def list_images(paths: Sequence[Union[str, Path]]) -> list[Path]:
    """Image files named or inside named folders (a folder's IMAGE_EXTS files sorted by name), in order given.
    A named file is kept whatever its suffix (reading it says what is wrong); a missing path is an IPLError."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS))
        elif p.exists():
            out.append(p)
        else:
            raise IPLError(f"{p}: no such image file or folder")
    if not out:
        raise IPLError(f"no images found in {', '.join(map(str, paths))} (looked for {', '.join(IMAGE_EXTS)})")
    return out
