"""The toy judge: a small CNN classifying domain, shape and colour; the referee of toy adaptation runs.

Trained by scripts/toy/build_toy_judge.py on renders; never used by any training loss.
"""
from __future__ import annotations

import json
import math
from typing import Any, Optional

import torch
from torch import nn

from ipl.core.assets import shipped

from .captions import domain_from_text
from .render import COLOURS, DOMAINS, SHAPES

ASSETS = shipped("toy")
JUDGE_CONFIG = ASSETS / "judge_config.json"
JUDGE_WEIGHTS = ASSETS / "judge.safetensors"


class Judge(nn.Module):
    """Conv net on 64x64 images in [-1, 1] with three heads: domain, shape, colour."""

    def __init__(self,
                 width: int = 16,            # channels of the full-resolution conv (doubles per stage)
                 num_domains: int = len(DOMAINS),
                 num_shapes: int = len(SHAPES),
                 num_colours: int = len(COLOURS)):
        super().__init__()
        self.config = dict(width=width, num_domains=num_domains, num_shapes=num_shapes, num_colours=num_colours)
        chans = [width, width * 2, width * 4, width * 8]
        # One conv at full resolution (cheap), then two per stage at 32, 16 and 8 px.
        layers: list[nn.Module] = [nn.Conv2d(3, chans[0], 3, padding=1), nn.BatchNorm2d(chans[0]), nn.ReLU()]
        for i in range(1, 4):
            layers += [nn.MaxPool2d(2),
                       nn.Conv2d(chans[i - 1], chans[i], 3, padding=1), nn.BatchNorm2d(chans[i]), nn.ReLU(),
                       nn.Conv2d(chans[i], chans[i], 3, padding=1), nn.BatchNorm2d(chans[i]), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        feat = chans[-1] * 2  # mean and max pooled
        self.domain = nn.Linear(feat, num_domains)
        self.shape = nn.Linear(feat, num_shapes)
        self.colour = nn.Linear(feat, num_colours)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head for images [N, 3, 64, 64] in [-1, 1]."""
        assert x.ndim == 4 and x.shape[1] == 3, x.shape
        h = self.features(x)
        h = torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)
        return {"domain": self.domain(h), "shape": self.shape(h), "colour": self.colour(h)}

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
        """Predicted class indices {domain, shape, colour} [N] for images in [-1, 1] (any size -> 64 px)."""
        was_training = self.training
        self.eval()
        dev = next(self.parameters()).device
        outs: dict[str, list[torch.Tensor]] = {"domain": [], "shape": [], "colour": []}
        for i in range(0, len(images), batch):
            x = images[i:i + batch].to(dev, torch.float32)
            if x.shape[-1] != 64:
                x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bicubic", antialias=True,
                                                    align_corners=False)
            logits = self(x.clamp(-1, 1))
            for k in outs:
                outs[k].append(logits[k].argmax(1).cpu())
        self.train(was_training)
        return {k: torch.cat(v) for k, v in outs.items()}


_CACHE: dict[str, Judge] = {}


def load_judge(device="cpu") -> Judge:
    """The shipped judge (ipl/assets/toy/judge.safetensors + judge_config.json), eval mode, frozen."""
    from safetensors.torch import load_file

    from ipl.core.errors import WeightsNotFoundError

    key = str(device)
    if key in _CACHE:
        return _CACHE[key]
    if not JUDGE_CONFIG.exists() or not JUDGE_WEIGHTS.exists():
        raise WeightsNotFoundError(f"toy judge assets missing: expected {JUDGE_CONFIG} and {JUDGE_WEIGHTS}; "
                                   f"rebuild them with `python scripts/toy/build_toy_judge.py`")
    cfg = json.loads(JUDGE_CONFIG.read_text())
    judge = Judge(**cfg["model"])
    judge.load_state_dict(load_file(str(JUDGE_WEIGHTS)))
    judge.eval().requires_grad_(False).to(device)
    _CACHE[key] = judge
    return judge


def _entropy(labels: torch.Tensor, num: int) -> float:
    p = torch.bincount(labels, minlength=num).float()
    p = p / p.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def judge_report(source_images: torch.Tensor, adapted_images: torch.Tensor, target_domain: str,
                 clip: Optional[Any] = None, judge: Optional[Judge] = None) -> dict[str, Any]:
    """The judge's numbers for paired source/adapted samples (same latents, same order), images in [-1, 1].

    target_rate: share of adapted samples judged to be in the target domain.
    content_kept: share whose judged shape and colour equal those judged on the source image.
    diversity_kept: entropy of judged shape x colour over adapted / the same over source samples.
    clip_judge_agreement: share of adapted samples where `clip`'s zero-shot domain equals the judge's
    (None without a clip). `clip` is an ipl.method.clip.FrozenClip or an open_clip model with a `tokenizer` given
    via a (model, tokenizer) tuple. target_domain: a domain name or a target text naming one.
    """
    assert source_images.shape == adapted_images.shape, (source_images.shape, adapted_images.shape)
    assert source_images.ndim == 4 and source_images.shape[1] == 3, source_images.shape
    target = domain_from_text(target_domain)
    judge = judge or load_judge()
    src = judge.classify(source_images)
    adp = judge.classify(adapted_images)
    n = len(source_images)
    t = DOMAINS.index(target)
    content = (src["shape"] == adp["shape"]) & (src["colour"] == adp["colour"])
    nc = len(SHAPES) * len(COLOURS)
    h_src = _entropy(src["shape"] * len(COLOURS) + src["colour"], nc)
    h_adp = _entropy(adp["shape"] * len(COLOURS) + adp["colour"], nc)
    dom_counts = torch.bincount(adp["domain"], minlength=len(DOMAINS))
    report: dict[str, Any] = {
        "n": n,
        "target_domain": target,
        "target_rate": float((adp["domain"] == t).float().mean()),
        "content_kept": float(content.float().mean()),
        "shape_kept": float((src["shape"] == adp["shape"]).float().mean()),
        "colour_kept": float((src["colour"] == adp["colour"]).float().mean()),
        "diversity_kept": h_adp / h_src if h_src > 0 else float("nan"),
        "source_entropy": h_src,
        "adapted_entropy": h_adp,
        "source_domain_rate": float((src["domain"] == DOMAINS.index("solid")).float().mean()),
        "degraded_rate": float((adp["domain"] == DOMAINS.index("degraded")).float().mean()),
        "adapted_domains": {d: int(c) for d, c in zip(DOMAINS, dom_counts.tolist())},
        "clip_judge_agreement": None,
        "clip_target_rate": None,
    }
    if clip is not None:
        cdom = clip_zero_shot_domain(clip, adapted_images)
        report["clip_judge_agreement"] = float((cdom == adp["domain"]).float().mean())
        report["clip_target_rate"] = float((cdom == t).float().mean())
    assert all(not (isinstance(v, float) and math.isinf(v)) for v in report.values())
    return report


@torch.no_grad()
def clip_zero_shot_domain(clip: Any, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Zero-shot domain index (into DOMAINS) by a CLIP: an ipl FrozenClip or a (open_clip model, tokenizer)."""
    from .captions import ZERO_SHOT_PROMPTS

    if isinstance(clip, tuple):
        from .clip_model import zero_shot_domain

        return zero_shot_domain(clip[0], clip[1], images, batch)
    feats = []
    for prompts in ZERO_SHOT_PROMPTS.values():
        t = clip.encode_texts(list(prompts)).float()
        t = t / t.norm(dim=-1, keepdim=True)
        t = t.mean(0)
        feats.append(t / t.norm())
    text = torch.stack(feats)
    dev = text.device
    out = []
    for i in range(0, len(images), batch):
        f = clip.encode_images(images[i:i + batch].to(dev)).float()
        out.append((f / f.norm(dim=-1, keepdim=True)) @ text.T)
    return torch.cat(out).argmax(1).cpu()
