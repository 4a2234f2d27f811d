"""Analysis of the toy CLIP's directions: the measurements behind the toy world's research rounds.

Not part of the installed product (`ipl adapt`, `ipl eval` and `ipl sample` use none of it): the CLIP builder
(build_toy_clip.py) records these numbers after training, the tests check them on the shipped CLIP, and
docs/toy_findings.md reports them. Run the scripts of this folder as `python scripts/toy/X.py`; that puts this
folder on sys.path, so they import it as `analysis`.

`model` is an open_clip CLIP (or a stand-in with encode_image / encode_text), `tok` its tokenizer, as returned by
`ipl.generators.toy.clip_model.load_toy_clip`.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from augment import neutral_chroma
from ipl.generators.toy.captions import SOURCE_TEXT, TARGET_TEXTS, ZERO_SHOT_PROMPTS
from ipl.generators.toy.clip_model import normalise
from ipl.generators.toy.render import SHAPES, STYLE_DOMAINS, background_lightness, render, sample_params
from ipl.method.losses import directional_loss


@torch.no_grad()
def path_losses(model, tok, n: int = 64, seed: int = 0, steps: tuple[float, ...] = (0.1, 0.3, 1.0)) -> dict:
    """NADA directional loss of solid -> domain pixel blends (1-t) solid + t domain, per domain and t.

    1 means the image change is orthogonal to the text change, above 1 that it points backwards. A CLIP that
    can guide an adaptation must already give < 1 at small t: a generator's first steps are small.
    """
    dev = next(model.parameters()).device
    p = sample_params(n, torch.Generator().manual_seed(seed))
    src = render(p, "solid").to(dev)
    fs = F.normalize(model.encode_image(normalise(src)), dim=-1)
    ts = F.normalize(model.encode_text(tok([ZERO_SHOT_PROMPTS["solid"][0]]).to(dev)), dim=-1)
    out = {}
    for d in STYLE_DOMAINS[1:]:
        tt = F.normalize(model.encode_text(tok([ZERO_SHOT_PROMPTS[d][0]]).to(dev)), dim=-1)
        d_txt = F.normalize(tt - ts, dim=-1)
        tgt = render(p, d).to(dev)
        row = {}
        for t in steps:
            fb = F.normalize(model.encode_image(normalise((1 - t) * src + t * tgt)), dim=-1)
            d_img = F.normalize(fb - fs, dim=-1)
            row[f"t={t}"] = round(1 - (d_img @ d_txt.T).mean().item(), 4)
        out[d] = row
    return out


@torch.no_grad()
def delta_ratio(model, tok, n: int = 64, seed: int = 0) -> dict:
    """The image/text change-length ratio for `ipl.method.losses.length_loss`, per style domain and their mean.

    For each domain d: the mean projection of E(render_d) - E(render_solid) (same scenes, unit features) on the
    text change T(target text of d) - T("a solid shape"), divided by that text change's length. Image
    features of two domains lie far closer together than their texts (the modality gap), so it is small.
    """
    dev = next(model.parameters()).device
    p = sample_params(n, torch.Generator().manual_seed(seed))
    fs = F.normalize(model.encode_image(normalise(render(p, "solid").to(dev))), dim=-1)
    ts = F.normalize(model.encode_text(tok([SOURCE_TEXT]).to(dev)), dim=-1)
    out = {}
    for d, text in TARGET_TEXTS.items():
        fd = F.normalize(model.encode_image(normalise(render(p, d).to(dev))), dim=-1)
        d_txt = F.normalize(model.encode_text(tok([text]).to(dev)), dim=-1) - ts
        along = (fd - fs) @ F.normalize(d_txt, dim=-1).T
        out[d] = round(along.mean().item() / d_txt.norm().item(), 4)
    out["mean"] = round(sum(out.values()) / len(TARGET_TEXTS), 4)
    return out


CONTENT_HUE_SHIFTS = (-60.0, -30.0, 30.0, 60.0)  # degrees; the named colours are 60 degrees apart


def content_variants(p, hue_shifts: tuple[float, ...] = CONTENT_HUE_SHIFTS) -> list:
    """The scenes `p` with their content changed: each hue shift, then each other shape (same place and size)."""
    out = [dataclasses.replace(p, hue=(p.hue + dh) % 360) for dh in hue_shifts]
    out += [dataclasses.replace(p, shape=(p.shape + k) % len(SHAPES)) for k in range(1, len(SHAPES))]
    return out


def content_lead(cos_faithful: torch.Tensor, cos_changed: list[torch.Tensor]) -> dict:
    """`wins` (share where the faithful change has the highest cos) and `margin` (its mean lead), from [N] cosines."""
    lead = cos_faithful - torch.stack(cos_changed).amax(0)
    return {"wins": round((lead > 0).float().mean().item(), 4), "margin": round(lead.mean().item(), 4)}


@torch.no_grad()
def content_selectivity(model, tok, n: int = 64, seed: int = 0) -> dict:
    """Does the directional loss prefer keeping a scene's colour and shape? Per style domain and overall.

    For each scene and target domain X: cos(dI, dT) of the render of the same scene in X against the best
    cos of the same scene in X with its hue shifted (+-30, +-60 degrees) or its shape swapped; dI is the
    change of unit image features from the `solid` render, dT that of the adaptation texts. `wins`: share
    of scenes where the faithful render scores highest; `margin`: mean lead of its cos. A CLIP whose
    direction is as well served by a green shape turning blue as by it turning pale lets stage 2 drift.
    """
    dev = next(model.parameters()).device
    p = sample_params(n, torch.Generator().manual_seed(seed))
    others = content_variants(p)
    fs = F.normalize(model.encode_image(normalise(render(p, "solid").to(dev))), dim=-1)
    ts = F.normalize(model.encode_text(tok([SOURCE_TEXT]).to(dev)), dim=-1)

    def cos(q, domain, d_txt):
        f = F.normalize(model.encode_image(normalise(render(q, domain).to(dev))), dim=-1)
        return (F.normalize(f - fs, dim=-1) @ d_txt.T)[:, 0]

    out, wins, margins = {}, [], []
    for d, text in TARGET_TEXTS.items():
        d_txt = F.normalize(F.normalize(model.encode_text(tok([text]).to(dev)), dim=-1) - ts, dim=-1)
        out[d] = content_lead(cos(p, d, d_txt), [cos(q, d, d_txt) for q in others])
        wins.append(out[d]["wins"])
        margins.append(out[d]["margin"])
    out["mean"] = {"wins": round(sum(wins) / len(wins), 4), "margin": round(sum(margins) / len(margins), 4)}
    return out


def gradient_alignment(model, tok, n: int = 32, seed: int = 0) -> dict:
    """Per style domain: cos between the image gradient of <E(x), dT> at `solid` renders and the change to that domain.

    dT = T(target text) - T("a solid shape") (the stage-2 texts); the change is render_d - render_solid of the
    same scenes. Stage 2 moves the generator's images along this gradient (as far as the generator can draw
    it), so near 0 means the CLIP rewards first of all pixel patterns that are not the domain (edges,
    textures, tints), and a generator will draw those.
    """
    dev = next(model.parameters()).device
    p = sample_params(n, torch.Generator().manual_seed(seed))
    src = render(p, "solid").to(dev)
    out = {}
    with torch.no_grad():
        ts = F.normalize(model.encode_text(tok([SOURCE_TEXT]).to(dev)), dim=-1)
    for d, text in TARGET_TEXTS.items():
        with torch.no_grad():
            d_txt = F.normalize(F.normalize(model.encode_text(tok([text]).to(dev)), dim=-1) - ts, dim=-1)
        x = src.clone().requires_grad_(True)
        with torch.enable_grad():
            score = (F.normalize(model.encode_image(normalise(x)), dim=-1) @ d_txt.T).sum()
            (grad,) = torch.autograd.grad(score, [x])
        goal = render(p, d).to(dev) - src
        out[d] = round(F.cosine_similarity(grad.flatten(1), goal.flatten(1), dim=1).mean().item(), 4)
    return out


@torch.no_grad()
def background_step_losses(model, tok, n: int = 32, seed: int = 0, step: float = 0.1, hues: int = 12) -> dict:
    """NADA directional loss toward "on a dark background" of small changes of the background colour alone.

    From `solid` renders, the background RGB moves by `step` (Euclidean, [0, 1] units) along: grey darkening,
    grey lightening, and `hues` luminance-neutral tints. A generator's first steps follow whichever is lowest;
    unless `darken` is, descent tints the background instead of darkening it (a local minimum: the loss over
    all background colours is lowest on dark ones for every toy CLIP we built).
    """
    dev = next(model.parameters()).device
    p = sample_params(n, torch.Generator().manual_seed(seed))
    base = background_lightness(p, "solid")[:, None].expand(n, 3)
    src = render(p, "solid", background=base).to(dev)
    fs = F.normalize(model.encode_image(normalise(src)), dim=-1)
    ts = F.normalize(model.encode_text(tok([ZERO_SHOT_PROMPTS["solid"][0]]).to(dev)), dim=-1)
    tt = F.normalize(model.encode_text(tok([TARGET_TEXTS["dark"]]).to(dev)), dim=-1)
    d_txt = F.normalize(tt - ts, dim=-1)

    def loss(direction: torch.Tensor) -> float:
        direction = direction / direction.norm()
        img = render(p, "solid", background=(base + step * direction).clamp(0, 1)).to(dev)
        d_img = F.normalize(F.normalize(model.encode_image(normalise(img)), dim=-1) - fs, dim=-1)
        return round(1 - (d_img @ d_txt.T).mean().item(), 4)

    out = {"darken": loss(-torch.ones(3)), "lighten": loss(torch.ones(3))}
    tints = {}
    for h in range(hues):
        tints[h * 360 // hues] = loss(neutral_chroma(torch.tensor([h * 360.0 / hues]))[0])
    best = min(tints, key=tints.get)
    out.update(tint_min=tints[best], tint_min_hue=best, tints=tints)
    return out


def background_descent(model, tok, n: int = 16, seed: int = 0, steps: int = 150, lr: float = 0.01,
                       min_delta: float = 0.05) -> dict:
    """Where descent on the background colour alone leads under the NADA directional loss toward "dark".

    From `solid` renders, each image's background RGB is a free parameter (the simplest freedom a generator
    has) moved by Adam on 1 - cos(dI, dT), dI = E(image) - E(source), dT = E("on a dark background") -
    E("a solid shape"). Returns the final mean background lightness and chroma and the loss. A CLIP that can
    guide the `dark` adaptation takes the lightness far below the source's 0.86-0.97 with little chroma; one
    with a tint basin stops at a light, tinted background (`background_step_losses` shows the first step only).
    min_delta: the image-change length below which the loss is linear (`ipl.method.losses.safe_direction`); 0.05
    rather than the trainer's 1e-3 keeps the first step's gradient from dwarfing the later ones in Adam.
    """
    dev = next(model.parameters()).device
    p = sample_params(n, torch.Generator().manual_seed(seed))
    # Renders are linear in the background colour: image = r0 + (r1 - r0) * rgb, unclamped so the gradient
    # never vanishes at the [0, 1] boundary.
    r0 = render(p, "solid", background=torch.zeros(n, 3)).to(dev)
    r1 = render(p, "solid", background=torch.ones(n, 3)).to(dev)
    rgb = background_lightness(p, "solid")[:, None].expand(n, 3).clone().to(dev)
    with torch.no_grad():
        fs = model.encode_image(normalise(r0 + (r1 - r0) * rgb[:, :, None, None]))
        ts = model.encode_text(tok([ZERO_SHOT_PROMPTS["solid"][0]]).to(dev))
        tt = model.encode_text(tok([TARGET_TEXTS["dark"]]).to(dev))
    rgb.requires_grad_(True)
    opt = torch.optim.Adam([rgb], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            ft = model.encode_image(normalise(r0 + (r1 - r0) * rgb[:, :, None, None]))
            loss = directional_loss(fs, ft, ts, tt, min_image_delta=min_delta)
            (rgb.grad,) = torch.autograd.grad(loss, [rgb])  # not into the model's weights (it may be training)
            opt.step()
    with torch.no_grad():
        ft = model.encode_image(normalise(r0 + (r1 - r0) * rgb[:, :, None, None]))
        final = directional_loss(fs, ft, ts, tt, min_image_delta=1e-6).item()  # the plain cosine
        c = rgb.detach().clamp(0, 1)
        lightness = c.mean(1)
        chroma = (c - lightness[:, None]).norm(dim=1)
    return {"lightness": round(lightness.mean().item(), 4), "chroma": round(chroma.mean().item(), 4),
            "loss": round(final, 4)}
