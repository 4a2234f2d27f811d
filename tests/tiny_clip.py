"""A tiny random CLIP for fast tests (open_clip architecture, CLIP's real BPE tokenizer, no downloads).

Use from any test file in tests/:
    from tiny_clip import make_tiny_clip, tiny_clip      # tiny_clip is a module-scoped pytest fixture
    clip = make_tiny_clip()                              # FrozenClip, random weights (random_weights=True)
Random weights: fine for shapes, gradients, exactness and "loss falls" tests; never for reported numbers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import pytest
import torch

from ipl.method.clip import ClipSpec, FrozenClip, _build_model, _tokenizer_for

# embed 32; ViT 32px, patch 16 (4 patches), width 64 x 2 layers; text width 32 x 2 layers, 2 heads.
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16,
                   "pool_type": "avg"},  # mean over patches: random weights still tell images apart
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def make_tiny_clip(device: Union[str, torch.device] = "cpu", seed: int = 0, config: dict = None) -> FrozenClip:
    """A frozen tiny CLIP with deterministic random weights (seeded)."""
    cfg = json.loads(json.dumps(config or TINY_CLIP_CONFIG))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build_model(cfg)
    spec = ClipSpec(name="tiny", pretrained="none", weight=1.0)
    return FrozenClip(model, _tokenizer_for(cfg["text_cfg"]), spec, random_weights=True).to(device)


def write_tiny_clip_files(folder: Union[str, Path], seed: int = 0, config: dict = None) -> tuple[Path, Path]:
    """Write an open_clip config JSON + safetensors state dict (the toy CLIP's file layout); returns both paths."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = config or TINY_CLIP_CONFIG
    clip = make_tiny_clip(seed=seed, config=cfg)
    cfg_path, w_path = folder / "clip_config.json", folder / "clip.safetensors"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(w_path))
    return cfg_path, w_path


@pytest.fixture(scope="module")
def tiny_clip() -> FrozenClip:
    """Module-scoped tiny random FrozenClip on CPU."""
    return make_tiny_clip()
