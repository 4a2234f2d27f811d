"""Train the toy CLIP contrastively on captioned renders of every domain and degraded images.

python scripts/toy/build_toy_clip.py [--minutes 25] [--seed 0] [--threads 1] [--bank-cache FILE]
                                     [--init clip.safetensors] [--photometric 1] [--tint 0] [--bg-tint 0]
                                     [--grey-bg 0 [--soft-grey]] [--interp-domains LIST] [--align-weight 0]
                                     [--grad-align-weight 0 [--grad-align-noise 0] [--grad-align-path 0]]
                                     [--fare-eps 0] [--config MODEL_CONFIG.json] [--out ipl/assets/toy]
                                     [--record assets/toy]
Writes clip_config.json (open_clip model config) and clip.safetensors (state dict) into --out, and
clip_build.json (settings, steps, measured zero-shot accuracies and path losses; analysis.py) into --record,
checkpointing every few minutes. By default --out is the shipped package data (ipl/assets/toy/) and the
record goes to assets/toy/; with another --out, the record goes next to the weights.

Besides the contrastive loss, an interpolation loss (--interp-weight) asks the embedding of a pixel blend
(1-t) A + t B of one scene in two variants (domains or a degradation) to lie on the chord between the
embeddings of A and B, a small step held to the same relative accuracy as a large one. Without it the first
toy CLIP read a slightly darkened background as a move *away* from "on a dark background" (directional loss
above 1 for the first ~30% of the way), so no gradient could lead a generator there; real CLIP changes
gradually with gradual image changes, and the toy CLIP must too.

With --fare-eps, the run instead fine-tunes the image tower of --init to be adversarially robust by FARE
(Schlarmann et al., 2024): the embedding of a worst-case perturbed image (L-inf ball of radius eps, found by
PGD) is pulled to the original model's embedding of the clean image; the text tower stays as it was, so the
zero-shot classifier is kept. A non-robust CLIP's image gradient points at imperceptible pixel patterns, and
a generator fine-tuned by that gradient learns them (tints, faint textures) instead of the style; robust
models have perceptually aligned gradients (Santurkar et al., 2019), which is what a CLIP guidance needs.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from analysis import (background_descent, background_step_losses, content_selectivity, delta_ratio,
                      gradient_alignment, path_losses)
from augment import augment, cheap_augment, neutral_chroma, tint
from ipl.core.atomic import atomic_path, write_json
from ipl.generators.toy.captions import caption
from ipl.generators.toy.clip_model import TOY_CLIP_CONFIG, build_model, normalise, tokenizer, zero_shot_domain
from ipl.generators.toy.render import (DEGRADATIONS, DOMAINS, RESOLUTION, SHAPES, STYLE_DOMAINS,
                                       background_lightness, degrade, render, render_dataset, sample_params)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "ipl" / "assets" / "toy"   # clip_config.json + clip.safetensors: package data
RECORDS = ROOT / "assets" / "toy"           # clip_build.json: how they were made (not installed)
# The first toy CLIP (shipped until round 5, docs/toy_findings.md): a ViT image tower; `--config vit`.
TOY_VIT_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 96, "layers": 3, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}


def multi_positive_clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, captions: list[str]
                             ) -> torch.Tensor:
    """Symmetric CLIP loss where every pair with an identical caption string counts as a positive."""
    img = F.normalize(img, dim=-1)
    txt = F.normalize(txt, dim=-1)
    logits = scale * img @ txt.T
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cid = torch.tensor([ids[c] for c in captions])
    pos = (cid[:, None] == cid[None, :]).float()
    target = pos / pos.sum(1, keepdim=True)
    return 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.log_softmax(0)).sum(0).mean())


INTERP_VARIANTS = (*STYLE_DOMAINS, "degraded")


def scene_variants(n: int, g: torch.Generator, variants: tuple[str, ...] = INTERP_VARIANTS) -> torch.Tensor:
    """n scenes, each rendered in `variants` (style domains, "degraded": the solid render degraded).

    Returns [n, V, 3, H, W]; variant 0 is `solid`, the source domain.
    """
    assert variants and variants[0] == "solid", variants
    p = sample_params(n, g)
    out = []
    for v in variants:
        if v == "degraded":
            kind = torch.randint(0, len(DEGRADATIONS), (n,), generator=g)
            out.append(degrade(render(p, "solid"), kind, g))
        else:
            out.append(render(p, v))
    return torch.stack(out, dim=1)


def interpolation_loss(model, variants: torch.Tensor, g: torch.Generator, t_min: float = 0.02,
                       power: float = 2.0, from_source: float = 0.5) -> torch.Tensor:
    """mean (1 - cos(E(blend_t), norm((1-t) E(A) + t E(B)))) / t**power over variant pairs (A, B) of each scene.

    E is the normalised image embedding, blend_t = (1-t) A + t B with t log-uniform in [t_min, 1]: the
    embedding of a blend should lie on the chord between the endpoints' embeddings. With power 2 the loss is
    about (angle off the chord / angle travelled)^2 / 2, so a small step is held to the same relative accuracy
    as a large one; it stays bounded because the target is a point on the chord, never a normalised
    vanishing difference (normalising E(blend) - E(A) collapsed the model within minutes). A share
    `from_source` of the pairs starts at the source domain (variant 0, `solid`), where adaptation starts.
    """
    n, v = variants.shape[:2]
    a = torch.randint(0, v, (n,), generator=g)
    a = torch.where(torch.rand(n, generator=g) < from_source, torch.zeros_like(a), a)
    b = (a + torch.randint(1, v, (n,), generator=g)) % v              # a different variant of the same scene
    t = torch.exp(torch.rand(n, generator=g) * math.log(t_min))[:, None]
    img_a, img_b = variants[torch.arange(n), a], variants[torch.arange(n), b]
    with torch.no_grad():  # the endpoints are placed by the contrastive loss; only the path between them is taught
        ea = F.normalize(model.encode_image(normalise(img_a)), dim=-1)
        eb = F.normalize(model.encode_image(normalise(img_b)), dim=-1)
        target = F.normalize((1 - t) * ea + t * eb, dim=-1)
    blend = (1 - t)[:, :, None, None] * img_a + t[:, :, None, None] * img_b
    e = F.normalize(model.encode_image(normalise(blend)), dim=-1)
    return ((1 - (e * target).sum(-1)) / t[:, 0] ** power).mean()


def alignment_loss(model, tok, variants: torch.Tensor, g: torch.Generator, rng: random.Random,
                   t_min: float = 0.1) -> torch.Tensor:
    """mean (cos(dI_X, dT_Y) - [X == Y])^2: the change from `solid` toward X points along the text change to Y
    exactly when X is Y, and is orthogonal to every other domain's text change (and to all of them for a
    degraded image).

    variants: [n, 7, 3, H, W] from `scene_variants` (solid, the five style domains, degraded). dI_X is the
    normalised embedding change from the solid render to its blend (1-t) solid + t X, t uniform in [t_min, 1];
    dT_Y the normalised change of text embedding from a `solid` prompt to a prompt of Y. Contrastive training
    alone places the domains at the corners of a simplex, where moving toward *any* other domain (or a tint,
    read as a colour-cast degradation) scores cos 0.5 against the target's direction; that floor is the
    local minimum stage 2 falls into. Here, the source domain is the origin of independent style directions.
    """
    n, v = variants.shape[:2]
    assert v == len(STYLE_DOMAINS) + 1, tuple(variants.shape)
    t = t_min + (1 - t_min) * torch.rand(n, 1, 1, 1, 1, generator=g)
    blends = variants[:, :1] + t * (variants[:, 1:] - variants[:, :1])                 # [n, v-1, 3, H, W]
    e0 = F.normalize(model.encode_image(normalise(variants[:, 0])), dim=-1)
    e = F.normalize(model.encode_image(normalise(blends.flatten(0, 1))), dim=-1).view(n, v - 1, -1)
    d_img = F.normalize(e - e0[:, None], dim=-1)
    prompts = [caption_for_direction(d, rng) for d in STYLE_DOMAINS]
    txt = F.normalize(model.encode_text(tok(prompts)), dim=-1)
    d_txt = F.normalize(txt[1:] - txt[:1], dim=-1)                                      # [5, D]
    cos = d_img @ d_txt.T                                                               # [n, v-1, 5]
    target = torch.eye(v - 1, len(STYLE_DOMAINS) - 1)                                  # degraded row: zeros
    return (cos - target).pow(2).mean()


def content_loss(model, tok, n: int, g: torch.Generator, rng: random.Random, margin: float = 0.1,
                 t_min: float = 0.1) -> torch.Tensor:
    """mean relu(margin - cos(dI, dT_X) + cos(dI', dT_X)): the change toward X scores higher when the scene
    keeps its colour and shape than when it does not.

    Each of n scenes draws a style domain X and one content change (a hue shift of 20-60 degrees either way,
    or another shape); dI is the change from the solid render to the blend (1-t) solid + t X, dI' the same
    toward the changed scene in X, t uniform in [t_min, 1]. Measured by `content_selectivity`: without it,
    a green shape turning blue while it pales served "a pastel shape" as well as it staying green.
    """
    import dataclasses

    p = sample_params(n, g)
    pick = torch.randint(1, len(STYLE_DOMAINS), (n,), generator=g)
    shift = (20 + 40 * torch.rand(n, generator=g)) * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    new_shape = (p.shape + torch.randint(1, len(SHAPES), (n,), generator=g)) % len(SHAPES)
    by_hue = torch.rand(n, generator=g) < 0.5
    q = dataclasses.replace(p, hue=torch.where(by_hue, (p.hue + shift) % 360, p.hue),
                            shape=torch.where(by_hue, p.shape, new_shape))
    src = render(p, "solid")
    true = torch.stack([render(p.index([i]), STYLE_DOMAINS[k])[0] for i, k in enumerate(pick.tolist())])
    other = torch.stack([render(q.index([i]), STYLE_DOMAINS[k])[0] for i, k in enumerate(pick.tolist())])
    t = t_min + (1 - t_min) * torch.rand(n, 1, 1, 1, generator=g)
    e = F.normalize(model.encode_image(normalise(torch.cat([src, src + t * (true - src), src + t * (other - src)]))),
                    dim=-1).view(3, n, -1)
    texts = [caption_for_direction(d, rng) for d in STYLE_DOMAINS]
    txt = F.normalize(model.encode_text(tok(texts)), dim=-1)
    d_txt = F.normalize(txt[1:] - txt[:1], dim=-1)[pick - 1]                               # [n, D]
    cos_true = (F.normalize(e[1] - e[0], dim=-1) * d_txt).sum(-1)
    cos_other = (F.normalize(e[2] - e[0], dim=-1) * d_txt).sum(-1)
    return F.relu(margin - cos_true + cos_other).mean()


def gradient_alignment_loss(model, tok, variants: torch.Tensor, g: torch.Generator, rng: random.Random,
                            noise: float = 0.0, path: float = 0.0) -> torch.Tensor:
    """mean (1 - cos(d/dx <E(x), dT_X>, X - solid)) at (or near) `solid` renders: perceptually aligned gradients.

    variants: [n, 7, 3, H, W] from `scene_variants`; each scene draws one style domain X, and the image
    gradient of the embedding's progress along X's (fixed) text change should point at the render of the
    same scene in X (Ganz et al., 2023, train the input gradient toward a target direction). A small
    non-robust CLIP's image gradient is dominated by edge and texture patterns; stage 2 moves a generator
    along that gradient, so it draws those patterns instead of the domain.
    Off the renders, where a generator's images are after a few steps: with `path` > 0, x is the blend
    (1-t) solid + t X, t uniform in [0, path]; with `noise` > 0, per-pixel Gaussian noise of a standard
    deviation uniform in [0, noise] is added to x (the speckle a small CLIP's gradient draws). The goal stays
    the change toward X.
    """
    n = variants.shape[0]
    pick = torch.randint(1, len(STYLE_DOMAINS), (n,), generator=g)
    with torch.no_grad():  # the text side is the classifier's; only the image tower's gradient is shaped here
        texts = [caption_for_direction(d, rng) for d in STYLE_DOMAINS]
        txt = F.normalize(model.encode_text(tok(texts)), dim=-1)
        d_txt = F.normalize(txt[1:] - txt[:1], dim=-1)[pick - 1]                       # [n, D]
    from torch.nn.attention import SDPBackend, sdpa_kernel

    goal = variants[torch.arange(n), pick] - variants[:, 0]
    x = variants[:, 0].clone()
    if path > 0:
        x = x + path * torch.rand(n, 1, 1, 1, generator=g) * goal
    if noise > 0:
        x = x + noise * torch.rand(n, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    x.requires_grad_(True)
    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention kernels have no double backward
        e = F.normalize(model.encode_image(normalise(x)), dim=-1)
    (grad,) = torch.autograd.grad((e * d_txt).sum(), [x], create_graph=True)
    return (1 - F.cosine_similarity(grad.flatten(1), goal.flatten(1), dim=1)).mean()


def caption_for_direction(domain: str, rng: random.Random) -> str:
    """A prompt of `domain` for a text direction: one of its zero-shot prompts or its target text."""
    from ipl.generators.toy.captions import TARGET_TEXTS, ZERO_SHOT_PROMPTS

    return rng.choice(ZERO_SHOT_PROMPTS[domain] + [TARGET_TEXTS.get(domain, ZERO_SHOT_PROMPTS[domain][0])])


def fare_loss(model, teacher, images: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """FARE: max over ||delta||_inf <= eps of ||E(x + delta) - E_0(x)||^2, found by PGD; images in [-1, 1].

    eps is in [-1, 1] image units (2/255 per 8-bit level). Returns the loss at the found delta, with graph.
    """
    with torch.no_grad():
        target = teacher.encode_image(normalise(images))
    delta = (torch.rand_like(images) * 2 - 1) * eps
    alpha = 2.5 * eps / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        emb = model.encode_image(normalise((images + delta).clamp(-1, 1)))
        inner = (emb - target).pow(2).sum(-1).mean()
        (grad,) = torch.autograd.grad(inner, delta)
        delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    emb = model.encode_image(normalise((images + delta).clamp(-1, 1)))
    return (emb - target).pow(2).sum(-1).mean()


GREY_PHRASES = {  # background lightness bins between the light (solid) and the dark domain
    "dark grey": ["on a dark grey background", "a {c} {s} on a dark grey background",
                  "a shape on a dark grey background"],
    "grey": ["on a grey background", "a {c} {s} on a grey background", "a shape on a grey background"],
    "light grey": ["on a light grey background", "a {c} {s} on a light grey background",
                   "a shape on a light grey background"],
}


def grey_caption(level: float, shape: int, colour: int, rng: random.Random, soft: bool = False) -> str:
    """Caption of a solid scene on a background of lightness level in (0.15, 0.86).

    By bin ("on a grey background"...), or with soft=True one of the two domains' own captions, `dark` with
    probability growing linearly from 0 at the light range (0.86) to 1 at the dark range (0.15): its embedding
    is then pulled to a point between the two domains that moves steadily with the lightness.
    """
    from ipl.generators.toy.captions import WRAPPERS
    from ipl.generators.toy.render import COLOURS, SHAPES

    if soft:
        domain = "dark" if rng.random() < (0.86 - level) / (0.86 - 0.15) else "solid"
        return caption(DOMAINS.index(domain), shape, colour, -1, rng)
    name = "dark grey" if level < 0.4 else "grey" if level < 0.7 else "light grey"
    text = rng.choice(GREY_PHRASES[name]).format(c=COLOURS[colour], s=SHAPES[shape])
    return rng.choice(WRAPPERS).format(text)


def tinted_background_batch(n: int, amount: float, g: torch.Generator, rng: random.Random, grey: float = 0.0,
                            soft_grey: bool = False) -> tuple[torch.Tensor, list[str]]:
    """n renders of random style domains on a coloured background of the domain's lightness, with captions.

    The colour is a luminance-neutral chroma of amplitude up to `amount` (half that on dark backgrounds), so a
    light-blue background is still `solid` and a navy one still `dark`: background hue is not a style, and
    only background *lightness* moves an image toward "on a dark background".
    """
    p = sample_params(n, g)
    dom = torch.randint(0, len(STYLE_DOMAINS), (n,), generator=g)
    u = torch.rand(n, 2, generator=g)
    chroma = neutral_chroma(u[:, 0] * 360)
    dark = dom == STYLE_DOMAINS.index("dark")
    level = torch.where(dark, background_lightness(p, "dark"), background_lightness(p, "solid"))
    # A share `grey` of the scenes become solid shapes on a mid-lightness background, captioned by its bin,
    # so that lightness between the two domains' ranges is ordered rather than unseen.
    is_grey = torch.rand(n, generator=g) < grey
    dom = torch.where(is_grey, STYLE_DOMAINS.index("solid"), dom)
    level = torch.where(is_grey, 0.15 + 0.71 * torch.rand(n, generator=g), level)
    amp = amount * u[:, 1] * torch.where(dark, 0.5, 1.0)
    background = (level[:, None] + amp[:, None] * chroma).clamp(0, 1)
    images = torch.empty(n, 3, RESOLUTION, RESOLUTION)
    for i, d in enumerate(STYLE_DOMAINS):
        idx = (dom == i).nonzero()[:, 0]
        if len(idx):
            images[idx] = render(p.index(idx), d, background=background[idx])
    caps = [grey_caption(float(lv), int(s), int(c), rng, soft_grey) if gr else
            caption(DOMAINS.index(STYLE_DOMAINS[int(d)]), int(s), int(c), -1, rng)
            for d, s, c, gr, lv in zip(dom, p.shape, p.colour, is_grey, level)]
    return images, caps


@torch.no_grad()
def evaluate(model, tok, images, labels) -> dict:
    """Zero-shot accuracy on held-out renders (style and degraded), path and background diagnostics, delta ratio."""
    model.eval()
    pred = zero_shot_domain(model, tok, images)
    paths = path_losses(model, tok)
    steps = background_step_losses(model, tok)
    steps.pop("tints")
    descent = background_descent(model, tok)
    ratio = delta_ratio(model, tok)
    grads = gradient_alignment(model, tok)
    content = content_selectivity(model, tok)
    model.train()
    acc = (pred == labels["domain"]).float()
    per = {d: round(acc[labels["domain"] == i].mean().item(), 4) for i, d in enumerate(DOMAINS)}
    return {"zero_shot_domain_acc": round(acc.mean().item(), 4), "per_domain": per, "path_losses": paths,
            "background_steps": steps, "background_descent": descent, "delta_ratio": ratio,
            "gradient_alignment": grads, "content_selectivity": content}


def record_dir(out: Path, record=None) -> Path:
    """Where clip_build.json goes: --record if given; assets/toy/ for the shipped weights; else next to them."""
    if record is not None:
        return Path(record)
    return RECORDS if Path(out).resolve() == SHIPPED.resolve() else Path(out)


def save(model, out: Path, info: dict, record: Path | None = None) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "clip_config.json", info["config"])
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(out / "clip.safetensors") as tmp:
        save_file(sd, str(tmp))
    record = record_dir(out, record)
    record.mkdir(parents=True, exist_ok=True)
    write_json(record / "clip_build.json", info)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=25.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--bank", type=int, default=8192, help="renders drawn once and augmented per batch")
    ap.add_argument("--interp-weight", type=float, default=1.0, help="weight of the interpolation loss (0: off)")
    ap.add_argument("--interp-power", type=float, default=2.0, help="small steps weighted by 1/t**power")
    ap.add_argument("--interp-from-source", type=float, default=0.5,
                    help="share of interpolation pairs that start at the source domain (solid)")
    ap.add_argument("--interp-batch", type=int, default=24, help="scenes per step for the interpolation loss")
    ap.add_argument("--interp-domains", default=",".join(INTERP_VARIANTS),
                    help="comma-separated variants the interpolation loss blends between (solid is always in)")
    ap.add_argument("--align-weight", type=float, default=0.0,
                    help="weight of the directional alignment loss (0: off)")
    ap.add_argument("--align-batch", type=int, default=12, help="scenes per step for the alignment loss")
    ap.add_argument("--content-weight", type=float, default=0.0,
                    help="weight of the content loss (keep colour and shape along a direction; 0: off)")
    ap.add_argument("--content-batch", type=int, default=12, help="scenes per step for the content loss")
    ap.add_argument("--content-margin", type=float, default=0.1,
                    help="lead in cos the faithful change must have over a content-changing one")
    ap.add_argument("--grad-align-weight", type=float, default=0.0,
                    help="weight of the gradient alignment loss (perceptually aligned gradients; 0: off)")
    ap.add_argument("--grad-align-batch", type=int, default=8, help="scenes per step for the gradient alignment")
    ap.add_argument("--grad-align-noise", type=float, default=0.0,
                    help="also off the renders: Gaussian pixel noise of std up to this (0: on the renders)")
    ap.add_argument("--grad-align-path", type=float, default=0.0,
                    help="also off the renders: from blends up to this far toward the domain (0: at solid)")
    ap.add_argument("--photometric", type=float, default=1.0,
                    help="scale of the brightness/contrast jitter (0: none; it teaches invariance to darkening)")
    ap.add_argument("--tint", type=float, default=0.0,
                    help="max luminance-neutral colour cast per channel on half of the images (0: none)")
    ap.add_argument("--bg-tint", type=float, default=0.0,
                    help="add renders on coloured backgrounds of this chroma amplitude to each batch (0: none)")
    ap.add_argument("--bg-tint-batch", type=int, default=16, help="coloured-background renders per step")
    ap.add_argument("--grey-bg", type=float, default=0.0,
                    help="share of those renders on a mid-grey background, captioned by lightness (0: none)")
    ap.add_argument("--soft-grey", action="store_true",
                    help="caption the mid-grey backgrounds as solid or dark, dark with probability rising with darkness")
    ap.add_argument("--fare-eps", type=float, default=0.0,
                    help="FARE robust fine-tune of --init's image tower at this L-inf radius in 8-bit levels (0: off)")
    ap.add_argument("--fare-steps", type=int, default=5, help="PGD steps per FARE batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bank-cache", default=None, help="keep the render bank in this file (rebuild speed-up)")
    ap.add_argument("--init", default=None, help="continue from these clip.safetensors weights")
    ap.add_argument("--extra-bank", default=None,
                    help="captioned images to mix into every batch (scripts/toy/mine_toy_negatives.py output)")
    ap.add_argument("--extra-batch", type=int, default=16, help="images per step from --extra-bank")
    ap.add_argument("--config", default=None,
                    help="open_clip model config JSON (embed_dim, vision_cfg, text_cfg) instead of the shipped "
                         "architecture (a ResNet image tower); 'vit' for the first toy CLIP's ViT; default with "
                         "--init: the clip_config.json next to it")
    ap.add_argument("--out", default=str(SHIPPED),
                    help="folder for clip_config.json + clip.safetensors (default: the shipped ipl/assets/toy/)")
    ap.add_argument("--record", default=None,
                    help="folder for clip_build.json (default: assets/toy/ with the default --out, else --out)")
    args = ap.parse_args(argv)
    for name in ("tint", "bg_tint", "fare_eps", "align_weight", "content_weight", "grad_align_weight", "grad_align_noise",
                 "grad_align_path"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be >= 0 (0 turns it off), got {getattr(args, name)}")
    interp_variants = ("solid", *dict.fromkeys(v.strip() for v in args.interp_domains.split(",")
                                               if v.strip() and v.strip() != "solid"))
    unknown = [v for v in interp_variants if v not in INTERP_VARIANTS]
    if unknown or len(interp_variants) < 2:
        ap.error(f"--interp-domains: expected at least one of {', '.join(INTERP_VARIANTS[1:])}, "
                 f"got {args.interp_domains!r}")
    if not 0 <= args.grey_bg <= 1:
        ap.error(f"--grey-bg is a share in [0, 1], got {args.grey_bg}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    config = TOY_CLIP_CONFIG
    config_file = args.config
    if config_file is None and args.init and Path(args.init).with_name("clip_config.json").is_file():
        config_file = str(Path(args.init).with_name("clip_config.json"))  # continue the --init model's config
    if config_file == "vit":
        config = TOY_VIT_CONFIG
    elif config_file:
        try:
            config = json.loads(Path(config_file).read_text())
        except (OSError, ValueError) as e:
            ap.error(f"--config {config_file}: cannot read an open_clip model config JSON ({e})")
        if not all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
            ap.error(f"--config {config_file}: expected the keys embed_dim, vision_cfg and text_cfg")
    model = build_model(config)
    if args.init:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(args.init))
        previous = record_dir(Path(args.init).parent) / "clip_build.json"
    # The token table (49408 x 64) stays at its seeded random init: every step would otherwise update all
    # 3.2M entries (most tokens never occur here); the transformer learns on top of the fixed vectors.
    model.token_embedding.requires_grad_(False)
    teacher = None
    if args.fare_eps > 0:
        if not args.init:
            ap.error("--fare-eps fine-tunes a trained toy CLIP: give its weights with --init")
        import copy

        teacher = copy.deepcopy(model).eval().requires_grad_(False)
        model.requires_grad_(False)
        model.visual.requires_grad_(True)  # only the image tower moves; text features (the classifier) stay
    model.train()
    tok = tokenizer(config["text_cfg"]["context_length"])
    eval_images, eval_labels = render_dataset(700, torch.Generator().manual_seed(10_000 + args.seed))
    # A bank of renders drawn once (rendering every batch costs more than the model step on a busy CPU);
    # a quarter of it is first given the full affine augmentation so scale/rotation variety exists.
    t_bank = time.time()
    cache = Path(args.bank_cache) if args.bank_cache else None
    if cache is not None and cache.exists():
        bank, bank_labels = torch.load(cache)
    else:
        chunks = [render_dataset(1024, g) for _ in range(args.bank // 1024)]
        bank = torch.cat([c[0] for c in chunks])
        bank_labels = {k: torch.cat([c[1][k] for c in chunks]) for k in chunks[0][1]}
        quarter = len(bank) // 4
        bank[:quarter] = augment(bank[:quarter], g)
        bank = ((bank + 1) * 127.5).round().to(torch.uint8)
        if cache is not None:
            torch.save((bank, bank_labels), cache)
    print(f"bank of {len(bank)} renders in {time.time() - t_bank:.0f}s", flush=True)
    extra = None
    if args.extra_bank:
        try:
            extra = torch.load(args.extra_bank)
            assert extra["images"].dtype == torch.uint8 and len(extra["images"]) == len(extra["captions"]) > 0
        except (OSError, KeyError, AssertionError, RuntimeError) as e:
            ap.error(f"--extra-bank {args.extra_bank}: expected the output of scripts/toy/mine_toy_negatives.py "
                     f"(uint8 images with one caption each): {e!r}")
        print(f"extra bank of {len(extra['captions'])} captioned images", flush=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.05,
                            betas=(0.9, 0.98))
    t0 = time.time()
    budget = args.minutes * 60
    warmup = 200
    info = {"init": args.init, "seed": args.seed, "batch": args.batch, "bank": args.bank, "lr": args.lr,
            "interp_weight": args.interp_weight, "interp_batch": args.interp_batch,
            "interp_power": args.interp_power, "interp_from_source": args.interp_from_source,
            "interp_domains": list(interp_variants), "align_weight": args.align_weight,
            "align_batch": args.align_batch, "content_weight": args.content_weight,
            "content_batch": args.content_batch, "content_margin": args.content_margin,
            "grad_align_weight": args.grad_align_weight,
            "grad_align_batch": args.grad_align_batch, "grad_align_noise": args.grad_align_noise,
            "grad_align_path": args.grad_align_path,
            "photometric": args.photometric, "tint": args.tint, "bg_tint": args.bg_tint, "grey_bg": args.grey_bg,
            "soft_grey": args.soft_grey,
            "bg_tint_batch": args.bg_tint_batch,
            "fare_eps": args.fare_eps, "fare_steps": args.fare_steps,
            "extra_bank": args.extra_bank, "extra_batch": args.extra_batch,
            "config": config, "history": []}
    if args.init and previous.exists():
        info["previous"] = json.loads(previous.read_text())
    last_save = t0
    step = 0
    while step < args.max_steps:
        frac = min((time.time() - t0) / budget, 1.0)
        if frac >= 1.0:
            break
        lr = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(bank), (args.batch,), generator=g)
        images = cheap_augment(bank[idx].float() / 127.5 - 1, g, photometric=args.photometric)
        if args.tint > 0:
            half = torch.rand(len(images), generator=g) < 0.5
            images[half] = tint(images[half], args.tint, g)
        labels = {k: v[idx] for k, v in bank_labels.items()}
        interp = align = content = grad_align = torch.zeros(())
        if teacher is not None:
            loss = fare_loss(model, teacher, images, 2 * args.fare_eps / 255, args.fare_steps)
        else:
            caps = [caption(int(d), int(s), int(c), int(k), rng) for d, s, c, k in
                    zip(labels["domain"], labels["shape"], labels["colour"], labels["degradation"])]
            if args.bg_tint > 0:
                extra_images, extra_caps = tinted_background_batch(args.bg_tint_batch, args.bg_tint, g, rng,
                                                                  grey=args.grey_bg, soft_grey=args.soft_grey)
                images = torch.cat([images, cheap_augment(extra_images, g, photometric=args.photometric)])
                caps = caps + extra_caps
            if extra is not None:
                pick = torch.randint(0, len(extra["captions"]), (args.extra_batch,), generator=g)
                images = torch.cat([images, cheap_augment(extra["images"][pick].float() / 127.5 - 1, g,
                                                          photometric=args.photometric)])
                caps = caps + [extra["captions"][i] for i in pick.tolist()]
            img_f = model.encode_image(normalise(images))
            txt_f = model.encode_text(tok(caps))
            loss = multi_positive_clip_loss(img_f, txt_f, model.logit_scale.exp().clamp(max=100), caps)
            if args.interp_weight > 0:
                interp = interpolation_loss(model, scene_variants(args.interp_batch, g, interp_variants), g,
                                            power=args.interp_power, from_source=args.interp_from_source)
                loss = loss + args.interp_weight * interp
            if args.align_weight > 0:
                align = alignment_loss(model, tok, scene_variants(args.align_batch, g), g, rng)
                loss = loss + args.align_weight * align
            if args.content_weight > 0:
                content = content_loss(model, tok, args.content_batch, g, rng, margin=args.content_margin)
                loss = loss + args.content_weight * content
            if args.grad_align_weight > 0:
                grad_align = gradient_alignment_loss(model, tok, scene_variants(args.grad_align_batch, g), g, rng,
                                                     noise=args.grad_align_noise, path=args.grad_align_path)
                loss = loss + args.grad_align_weight * grad_align
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step} t={time.time() - t0:.0f}s lr={lr:.2e} loss={loss.item():.4f} "
                  f"interp={interp.item():.4f} align={align.item():.4f} content={content.item():.4f} grad_align={grad_align.item():.4f} "
                  f"scale={model.logit_scale.exp().item():.1f}", flush=True)
        if time.time() - last_save > 240:
            ev = evaluate(model, tok, eval_images, eval_labels)
            info["history"].append({"step": step, "seconds": round(time.time() - t0), "loss": loss.item(), **ev})
            print(json.dumps(info["history"][-1]), flush=True)
            info.update(steps=step, seconds=round(time.time() - t0))
            save(model, Path(args.out), info, args.record)
            last_save = time.time()
    ev = evaluate(model, tok, eval_images, eval_labels)
    info["history"].append({"step": step, "seconds": round(time.time() - t0), **ev})
    info.update(steps=step, seconds=round(time.time() - t0), final=ev)
    save(model, Path(args.out), info, args.record)
    print(json.dumps(ev), flush=True)
    return ev


if __name__ == "__main__":
    main()
