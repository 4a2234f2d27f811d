"""The toy CLIP: a small open_clip model (real BPE tokenizer) for the toy world; config, build and load.

What the product needs of it (the architecture, the loader, zero-shot domains). Its builder and the analysis
of its directions (path losses, delta ratio, content selectivity, ...) are research tooling in scripts/toy/
(build_toy_clip.py, analysis.py), not installed.
"""
from __future__ import annotations

import json
from typing import Optional

import torch

from ipl.core.assets import shipped

ASSETS = shipped("toy")
CLIP_CONFIG = ASSETS / "clip_config.json"
CLIP_WEIGHTS = ASSETS / "clip.safetensors"

# open_clip model config dict (the same keys as open_clip's model_configs/*.json). The shipped toy CLIP has a
# ResNet image tower (open_clip's ModifiedResNet, as OpenAI's RN CLIPs: width 16, one bottleneck per stage,
# attention pooling); the first one, a ViT, is scripts/toy/build_toy_clip.py's TOY_VIT_CONFIG (`--config vit`).
TOY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
# CLIP normalisation (open_clip's OpenAI defaults), used after mapping images from [-1, 1] to [0, 1].
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def build_model(config: Optional[dict] = None):
    """A fresh open_clip CLIP with the toy config (random weights)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    cfg = config or TOY_CLIP_CONFIG
    return CLIP(embed_dim=cfg["embed_dim"], vision_cfg=CLIPVisionCfg(**cfg["vision_cfg"]),
                text_cfg=CLIPTextCfg(**cfg["text_cfg"]))


def tokenizer(context_length: int = TOY_CLIP_CONFIG["text_cfg"]["context_length"]):
    """open_clip's BPE tokenizer at the toy context length."""
    import open_clip

    return open_clip.SimpleTokenizer(context_length=context_length)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images at the model's input size -> CLIP-normalised input."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return ((images + 1) / 2 - mean) / std


def load_toy_clip(device="cpu"):
    """(open_clip model, tokenizer) from the shipped assets; eval mode, frozen."""
    from safetensors.torch import load_file

    from ipl.core.errors import WeightsNotFoundError

    if not CLIP_CONFIG.exists() or not CLIP_WEIGHTS.exists():
        raise WeightsNotFoundError(f"toy CLIP assets missing: expected {CLIP_CONFIG} and {CLIP_WEIGHTS}; "
                                   f"rebuild them with `python scripts/toy/build_toy_clip.py`")
    cfg = json.loads(CLIP_CONFIG.read_text())
    model = build_model(cfg)
    model.load_state_dict(load_file(str(CLIP_WEIGHTS)))
    model.eval().requires_grad_(False).to(device)
    return model, tokenizer(cfg["text_cfg"]["context_length"])


@torch.no_grad()
def zero_shot_domain(model, tok, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Zero-shot domain index (into DOMAINS) of [-1, 1] 64 px images, by prompt-ensemble text features."""
    from .captions import ZERO_SHOT_PROMPTS

    dev = next(model.parameters()).device
    feats = []
    for prompts in ZERO_SHOT_PROMPTS.values():
        t = model.encode_text(tok(prompts).to(dev))
        t = t / t.norm(dim=-1, keepdim=True)
        t = t.mean(0)
        feats.append(t / t.norm())
    text = torch.stack(feats)
    out = []
    for i in range(0, len(images), batch):
        f = model.encode_image(normalise(images[i:i + batch].to(dev)))
        out.append((f / f.norm(dim=-1, keepdim=True)) @ text.T)
    return torch.cat(out).argmax(1).cpu()
