"""Procedural renderer of the toy world: one shape, one colour, one domain, 64x64 RGB, in torch."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

RESOLUTION = 64
SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
# Hue centre (degrees) of each colour name; a hue is named by the nearest centre on the circle.
COLOUR_HUES = (0.0, 30.0, 55.0, 120.0, 225.0, 280.0)
# Style domains; `solid` is the source. `degraded` is a label for broken images, not a style.
STYLE_DOMAINS = ("solid", "dark", "pastel", "outlined", "striped", "dotted")
DOMAINS = STYLE_DOMAINS + ("degraded",)
DEGRADATIONS = ("blurred", "faded", "noisy", "blank", "colour_shifted")


@dataclass
class SceneParams:
    """A batch of scenes; every field is a tensor with batch first, all on one device."""

    shape: torch.Tensor      # [N] long, index into SHAPES
    hue: torch.Tensor        # [N] float, degrees in [0, 360)
    cx: torch.Tensor         # [N] float, centre x in [0, 1] (image width units)
    cy: torch.Tensor         # [N] float, centre y in [0, 1]
    size: torch.Tensor       # [N] float, half-extent in [0, 1] units (about 0.13 .. 0.25)
    bg: torch.Tensor         # [N] float in [0, 1]: background lightness jitter within the domain's range
    pattern: torch.Tensor    # [N] float in [0, 1]: stripe angle / dot-grid phase

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    def index(self, idx) -> "SceneParams":
        """Select a sub-batch."""
        return SceneParams(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})

    def to(self, device) -> "SceneParams":
        """Move every field to a device."""
        return SceneParams(**{k: getattr(self, k).to(device) for k in self.__dataclass_fields__})

    @property
    def colour(self) -> torch.Tensor:
        """[N] long: index into COLOURS of the nearest named hue."""
        return colour_index(self.hue)


def colour_index(hue: torch.Tensor) -> torch.Tensor:
    """Nearest colour name (index into COLOURS) of hues in degrees."""
    centres = torch.tensor(COLOUR_HUES, device=hue.device, dtype=hue.dtype)
    d = (hue[:, None] - centres[None, :]).remainder(360.0)
    d = torch.minimum(d, 360.0 - d)
    return d.argmin(dim=1)


def _smootherstep(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def hue_from_u(u: torch.Tensor) -> torch.Tensor:
    """Map u in [0, 1) to a hue (degrees): a smooth staircase dwelling near the six colour centres.

    Smooth in u (so a generator can follow it), yet most hues fall clearly inside one colour name.
    """
    centres = list(COLOUR_HUES) + [360.0]
    c = torch.tensor(centres, device=u.device, dtype=u.dtype)
    k = len(COLOUR_HUES)
    s = u.clamp(0, 1 - 1e-6) * k
    i = s.floor().long()
    t = _smootherstep(_smootherstep(s - i))
    return (c[i] + (c[i + 1] - c[i]) * t).remainder(360.0)


def sample_params(n: int, generator: Optional[torch.Generator] = None, device="cpu",
                  shape: Optional[torch.Tensor] = None) -> SceneParams:
    """Draw n random scenes (deterministic for a seeded torch.Generator on CPU)."""
    def rand(*s):
        return torch.rand(*s, generator=generator)

    u = rand(n, 7)
    if shape is None:
        shape = torch.randint(0, len(SHAPES), (n,), generator=generator)
    return params_from_unit(u, shape.cpu()).to(device)


def params_from_unit(u: torch.Tensor, shape: torch.Tensor) -> SceneParams:
    """Scene from 7 numbers in [0, 1] per scene (hue, cx, cy, size, bg, pattern, unused) and a shape index.

    Every field is a smooth function of u: this is the map the toy generator is trained to follow.
    """
    assert u.ndim == 2 and u.shape[1] >= 6, u.shape
    size = 0.13 + 0.12 * u[:, 3]
    margin = size + 0.04
    cx = margin + (1 - 2 * margin) * u[:, 1]
    cy = margin + (1 - 2 * margin) * u[:, 2]
    return SceneParams(shape=shape.long(), hue=hue_from_u(u[:, 0]), cx=cx, cy=cy, size=size,
                       bg=u[:, 4], pattern=u[:, 5])


def hsv_to_rgb(h: torch.Tensor, s: float, v: float) -> torch.Tensor:
    """[N] hue degrees -> [N, 3] RGB in [0, 1] at fixed saturation and value."""
    k = torch.stack([(5 + h / 60) % 6, (3 + h / 60) % 6, (1 + h / 60) % 6], dim=1)
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _coords(n: int, res: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    # Pixel centres in pixel units, [1, res, res].
    r = torch.arange(res, device=device, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(r, r, indexing="ij")
    return x[None], y[None]


def shape_sdf(p: SceneParams, res: int = RESOLUTION) -> torch.Tensor:
    """Signed distance (pixels, negative inside) to each scene's shape: [N, res, res]."""
    n = len(p)
    x, y = _coords(n, res, p.hue.device)
    cx = (p.cx * res)[:, None, None]
    cy = (p.cy * res)[:, None, None]
    r = (p.size * res)[:, None, None]
    dx, dy = x - cx, y - cy
    circle = torch.sqrt(dx * dx + dy * dy) - r
    half = r * 0.86  # a square of similar area to the circle
    square = torch.maximum(dx.abs(), dy.abs()) - half
    # Equilateral triangle pointing up, circumradius 1.2 r, centred on its centroid.
    rt = r * 1.2
    inr = rt * 0.5
    s3 = math.sqrt(3) / 2
    d1 = dy - inr                              # bottom edge
    d2 = -0.5 * dy + s3 * dx - inr             # right edge
    d3 = -0.5 * dy - s3 * dx - inr             # left edge
    triangle = torch.maximum(torch.maximum(d1, d2), d3)
    sdf = torch.stack([circle, square, triangle], dim=1)  # [N, 3, res, res]
    return sdf.gather(1, p.shape[:, None, None, None].expand(n, 1, res, res))[:, 0]


def _cover(sdf: torch.Tensor) -> torch.Tensor:
    # Antialiased coverage of the region sdf < 0 (one-pixel ramp).
    return (0.5 - sdf).clamp(0, 1)


def background_lightness(p: SceneParams, domain: str) -> torch.Tensor:
    """[N] grey level in [0, 1] of each scene's background in a domain (dark: 0.03-0.15, else 0.86-0.97)."""
    return 0.03 + 0.12 * p.bg if domain == "dark" else 0.86 + 0.11 * p.bg


def render(p: SceneParams, domain: str, res: int = RESOLUTION, background: Optional[torch.Tensor] = None
           ) -> torch.Tensor:
    """Render scenes in one style domain: [N, 3, res, res] in [-1, 1].

    background: optional [N, 3] RGB in [0, 1] replacing the domain's grey background (used to teach the toy
    CLIP that a coloured background is not a style).
    """
    if domain not in STYLE_DOMAINS:
        raise ValueError(f"unknown toy domain {domain!r}; expected one of {STYLE_DOMAINS}")
    n = len(p)
    dev = p.hue.device
    sdf = shape_sdf(p, res)
    inside = _cover(sdf)[:, None]                     # [N, 1, H, W]
    colour = hsv_to_rgb(p.hue, 0.85, 0.92)[:, :, None, None]
    white = torch.full_like(colour, 0.97)
    bg = background_lightness(p, domain)[:, None, None, None].expand(n, 3, 1, 1)
    fill = colour.expand(n, 3, res, res)
    if background is not None:
        assert background.shape == (n, 3), background.shape
        bg = background.to(dev)[:, :, None, None]
    if domain == "pastel":
        fill = (0.42 * colour + 0.58 * white).expand(n, 3, res, res)
    elif domain == "striped":
        x, y = _coords(n, res, dev)
        ang = (math.pi / 6 + p.pattern * 2 * math.pi / 3)[:, None, None]   # 30 .. 150 degrees
        t = (x * torch.cos(ang) + y * torch.sin(ang)) / 6.0 * 2 * math.pi  # period 6 px
        m = (torch.sin(t) * 2.5 + 0.5).clamp(0, 1)[:, None]                # ~3 px bands, antialiased
        fill = m * colour + (1 - m) * white
    elif domain == "dotted":
        x, y = _coords(n, res, dev)
        ph = (p.pattern * 6.0)[:, None, None]
        gx = (x + ph).remainder(6.0) - 3.0
        gy = (y + ph * 0.5).remainder(6.0) - 3.0
        dot = _cover(torch.sqrt(gx * gx + gy * gy) - 1.6)[:, None]          # white dots, r 1.6 px
        fill = (1 - dot) * colour + dot * white
    img = bg + inside * (fill - bg)
    if domain == "outlined":
        ring = inside - _cover(sdf + 2.5)[:, None]                          # 2.5 px dark contour
        img = img + ring * (0.07 - img)
    return (img * 2 - 1).clamp(-1, 1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    # Per-image Gaussian blur with reflect padding; sigma [N] in pixels (<= 5).
    n, c, h, w = x.shape
    rad = 10
    t = torch.arange(-rad, rad + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    k = k / k.sum(1, keepdim=True)                                          # [N, K]
    xp = F.pad(x.reshape(1, n * c, h, w), (rad, rad, rad, rad), mode="reflect")
    kk = k.repeat_interleave(c, 0)
    xp = F.conv2d(xp, kk[:, None, None, :], groups=n * c)
    xp = F.conv2d(xp, kk[:, None, :, None], groups=n * c)
    return xp.reshape(n, c, h, w)


def degrade(images: torch.Tensor, kind: torch.Tensor, generator: Optional[torch.Generator] = None
            ) -> torch.Tensor:
    """Break images in [-1, 1]: kind [N] long indexes DEGRADATIONS. Returns [N, 3, H, W] in [-1, 1]."""
    n = images.shape[0]
    assert kind.shape == (n,), kind.shape
    dev = images.device
    u = torch.rand(n, 4, generator=generator).to(dev)
    x = (images + 1) / 2
    out = x.clone()
    k = kind.to(dev)
    m = k == 0  # blurred: far beyond what any style does
    if m.any():
        out[m] = _gaussian_blur(x[m], 2.2 + 2.3 * u[m, 0])
    m = k == 1  # faded: contrast crushed towards a light grey
    if m.any():
        a = (0.12 + 0.16 * u[m, 0])[:, None, None, None]
        out[m] = a * x[m] + (1 - a) * (0.72 + 0.2 * u[m, 1])[:, None, None, None]
    m = k == 2  # noisy
    if m.any():
        noise = torch.randn(x[m].shape, generator=generator).to(dev)
        out[m] = x[m] + (0.25 + 0.25 * u[m, 0])[:, None, None, None] * noise
    m = k == 3  # blank: one flat colour, a little noise
    if m.any():
        flat = hsv_to_rgb(u[m, 0] * 360, float(0.4), 1.0) * (0.2 + 0.8 * u[m, 1:2])
        grey = (u[m, 2] > 0.5)[:, None]
        flat = torch.where(grey, u[m, 1:2].expand(-1, 3), flat)
        out[m] = flat[:, :, None, None] + 0.01 * torch.randn(x[m].shape, generator=generator).to(dev)
    m = k == 4  # colour cast over the whole image, background included
    if m.any():
        tint = hsv_to_rgb(u[m, 0] * 360, 1.0, 1.0)[:, :, None, None]
        a = (0.45 + 0.2 * u[m, 1])[:, None, None, None]
        out[m] = (1 - a) * x[m] + a * tint * x[m].mean(1, keepdim=True).clamp(min=0.3)
    return (out.clamp(0, 1) * 2 - 1)


def render_dataset(n: int, generator: Optional[torch.Generator] = None, degraded_share: float = 1 / 7,
                   domains: tuple[str, ...] = STYLE_DOMAINS, device="cpu"
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """n labelled images: style domains uniformly, a share degraded. Labels: domain, shape, colour, degradation."""
    p = sample_params(n, generator)
    dom = torch.randint(0, len(domains), (n,), generator=generator)
    images = torch.empty(n, 3, RESOLUTION, RESOLUTION)
    for i, d in enumerate(domains):
        idx = (dom == i).nonzero()[:, 0]
        if len(idx):
            images[idx] = render(p.index(idx), d)
    dom_label = torch.tensor([DOMAINS.index(d) for d in domains])[dom]
    is_deg = torch.rand(n, generator=generator) < degraded_share
    kind = torch.randint(0, len(DEGRADATIONS), (n,), generator=generator)
    deg = torch.full((n,), -1, dtype=torch.long)
    idx = is_deg.nonzero()[:, 0]
    if len(idx):
        images[idx] = degrade(images[idx], kind[idx], generator)
        dom_label[idx] = DOMAINS.index("degraded")
        deg[idx] = kind[idx]
    labels = dict(domain=dom_label, shape=p.shape.clone(), colour=p.colour, degradation=deg,
                  style=torch.tensor([DOMAINS.index(d) for d in domains])[dom])
    return images.to(device), {k: v.to(device) for k, v in labels.items()}
