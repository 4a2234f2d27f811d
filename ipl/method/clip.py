"""Frozen CLIP models behind one small wrapper: spec parsing, offline-safe loading, image and text encoding.

A spec names one model: ``NAME[:PRETRAINED][@WEIGHT]``.
- NAME: an open_clip model name (``ViT-B-32``), ``toy`` (the shipped offline CLIP in ipl/assets/toy/), or a path to an
  open_clip model-config JSON (a dict with embed_dim / vision_cfg / text_cfg, or open_clip's
  ``{"model_cfg": ..., "preprocess_cfg": ...}`` file).
- PRETRAINED: an open_clip tag (``openai``, ``laion2b_s34b_b79k``), a local weights file (.pt / .bin / .safetensors,
  OpenAI's TorchScript archives included), or ``none`` for random weights (tests and timing only).
- WEIGHT: the weight of this model's loss term (default 1.0).
"""
from __future__ import annotations

import json
import os
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ipl.core.assets import shipped
from ipl.core.errors import CheckpointError, IPLError, WeightsNotFoundError


# The offline toy CLIP ships as package data (ipl/assets/toy/).
TOY_CLIP_CONFIG = shipped("toy/clip_config.json")
TOY_CLIP_WEIGHTS = shipped("toy/clip.safetensors")

# OpenAI's image normalisation; used when a config names none.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_SCHEMAS = ("hf-hub:", "local-dir:")


class RandomWeightsWarning(UserWarning):
    """A CLIP model was built with random weights: nothing it scores may be reported as a result."""


@dataclass(frozen=True)
class ClipSpec:
    """One CLIP model to use: what to build, which weights, and its loss weight."""

    name: str                          # open_clip model name, 'toy', or a model-config JSON path
    pretrained: Optional[str] = None   # tag, weights path, 'none', or None (= the default for `name`)
    weight: float = 1.0                # weight of this model's loss term

    def __str__(self) -> str:
        out = self.name
        if self.pretrained is not None:
            out += f":{self.pretrained}"
        if self.weight != 1.0:
            out += f"@{self.weight:g}"
        return out


def parse_clip_spec(spec: Union[str, ClipSpec]) -> ClipSpec:
    """Parse ``NAME[:PRETRAINED][@WEIGHT]`` into a ClipSpec."""
    if isinstance(spec, ClipSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise IPLError(f"CLIP spec {spec!r}: expected 'NAME[:PRETRAINED][@WEIGHT]', e.g. 'ViT-B-32:openai@1.0'.")
    text = spec.strip()
    weight = 1.0
    if "@" in text:
        head, tail = text.rsplit("@", 1)
        try:
            weight = float(tail)
        except ValueError:
            head = text  # an '@' inside a path, not a weight
        else:
            text = head
    if weight < 0 or weight != weight:
        raise IPLError(f"CLIP spec {spec!r}: the weight after '@' must be a non-negative number, got {weight}.")
    schema = next((s for s in _SCHEMAS if text.startswith(s)), "")
    body = text[len(schema):]
    name, pretrained = body, None
    if ":" in body:
        name, pretrained = body.split(":", 1)
        pretrained = pretrained or None
    name = schema + name
    if not body or not name:
        raise IPLError(f"CLIP spec {spec!r}: missing model name; expected 'NAME[:PRETRAINED][@WEIGHT]'.")
    return ClipSpec(name=name, pretrained=pretrained, weight=weight)


# ----------------------------------------------------------------------------------------------------------
# The wrapper.

class FrozenClip(nn.Module):
    """A frozen CLIP model (eval mode, no grad on weights) that gradients still flow through."""

    def __init__(self, model: nn.Module, tokenizer: Any, spec: ClipSpec,
                 mean: Sequence[float] = OPENAI_MEAN, std: Sequence[float] = OPENAI_STD,
                 random_weights: bool = False):
        super().__init__()
        self.model = model                    # an open_clip CLIP / CustomTextCLIP
        self.tokenizer = tokenizer            # open_clip tokenizer: list[str] -> LongTensor [N, context_length]
        self.spec = spec
        self.weight = float(spec.weight)
        self.random_weights = random_weights  # True: no number from this model may be reported
        self.model.eval()
        self.model.requires_grad_(False)

        size = getattr(model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

        from ipl.method.prompts import text_tower  # imported here to keep module import order free
        tower = text_tower(model)
        self.ctx_dim = int(tower.token_embedding.weight.shape[1])
        self.embed_dim = _embed_dim(model, tower)
        self.logit_scale = float(model.logit_scale.detach().float().exp().item())
        self._text_cache: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> "FrozenClip":
        """Stay in eval mode whatever the caller asks (dropout/BN must not change under training)."""
        return super().train(False)

    def _apply(self, fn, *args, **kwargs):
        self._text_cache = {}  # cached features live on the old device/dtype
        return super()._apply(fn, *args, **kwargs)

    def clear_text_cache(self) -> None:
        """Forget cached text features (a batched encode differs from a single one in the last ulp)."""
        self._text_cache.clear()

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Generator output in [-1, 1], any size -> normalised CLIP input [N, 3, S, S] (differentiable)."""
        assert images.ndim == 4 and images.shape[1] == 3, f"expected [N, 3, H, W], got {tuple(images.shape)}"
        x = (images.float() + 1) * 0.5
        s = self.image_size
        h, w = x.shape[-2:]
        if (h, w) != (s, s):
            # Shortest side to s, then centre crop: CLIP's own preprocessing, done in autograd.
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            top, left = (nh - s) // 2, (nw - s) // 2
            x = x[:, :, top:top + s, left:left + s]
        return (x - self.mean) / self.std

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features [N, embed_dim] of images in [-1, 1]."""
        return self.model.encode_image(self.preprocess(images))

    def encode_texts(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        """Unnormalised text features [N, embed_dim] of fixed texts (computed once, then cached)."""
        if isinstance(texts, str):
            texts = [texts]
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            with torch.no_grad():
                tokens = self.tokenizer(missing).to(self.device)
                feats = self.model.encode_text(tokens).float()
            for t, f in zip(missing, feats):
                self._text_cache[t] = f
        return torch.stack([self._text_cache[t] for t in texts])

    def encode_prompts(self, ctx: torch.Tensor, class_texts: Union[str, Sequence[str]]) -> torch.Tensor:
        """Unnormalised features [B, embed_dim] of 'ctx_1 .. ctx_n {class}.' (differentiable w.r.t. ctx)."""
        from ipl.method.prompts import encode_with_context

        return encode_with_context(self.model, self.tokenizer, ctx, class_texts)

    def extra_repr(self) -> str:
        return (f"spec={str(self.spec)!r}, image_size={self.image_size}, ctx_dim={self.ctx_dim}, "
                f"embed_dim={self.embed_dim}, random_weights={self.random_weights}")


def _embed_dim(model: nn.Module, tower: Any) -> int:
    proj = getattr(tower, "text_projection", None)
    if isinstance(proj, nn.Linear):
        return int(proj.out_features)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[1])
    return int(tower.token_embedding.weight.shape[1])


# ----------------------------------------------------------------------------------------------------------
# Loading.

def load_clips(specs: Sequence[Union[str, ClipSpec]], device: Union[str, torch.device] = "cpu") -> list[FrozenClip]:
    """Load several CLIP models (each with its own loss weight)."""
    if not specs:
        raise IPLError("No CLIP model given: pass at least one spec such as 'ViT-B-32:openai'.")
    return [load_clip(s, device=device) for s in specs]


def load_clip(spec: Union[str, ClipSpec], device: Union[str, torch.device] = "cpu") -> FrozenClip:
    """Build one frozen CLIP model from a spec, without any network access unless weights must be fetched."""
    spec = parse_clip_spec(spec)
    if spec.name == "toy":
        if not TOY_CLIP_CONFIG.is_file():
            raise WeightsNotFoundError(
                f"The toy CLIP config {TOY_CLIP_CONFIG} is missing; it ships with ipl as package data "
                f"(reinstall ipl, or rebuild it with scripts/toy/build_toy_clip.py).")
        pretrained = spec.pretrained or str(TOY_CLIP_WEIGHTS)
        clip = _load_from_config(TOY_CLIP_CONFIG, pretrained, spec)
    elif spec.name.endswith(".json") or Path(spec.name).is_file():
        clip = _load_from_config(Path(spec.name), spec.pretrained, spec)
    else:
        clip = _load_open_clip(spec)
    return clip.to(device)


def _is_none(pretrained: Optional[str]) -> bool:
    return pretrained is not None and pretrained.lower() in ("none", "random")


def _warn_random(spec: ClipSpec) -> None:
    # Point the warning at the first caller outside this module.
    level, frame = 1, sys._getframe(0)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(
        f"CLIP '{spec}' has RANDOM weights: use it for tests and timing only; no reported number may come "
        f"from it.", RandomWeightsWarning, stacklevel=level)


def _build_model(model_cfg: dict, quick_gelu: bool = False) -> nn.Module:
    """Instantiate an open_clip model from a config dict (the same class choice open_clip makes)."""
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = json.loads(json.dumps(model_cfg))  # deep copy
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise IPLError(f"CLIP model config lacks '{key}': expected an open_clip model config with "
                           f"embed_dim, vision_cfg and text_cfg.")
    if quick_gelu:
        cfg["quick_gelu"] = True
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
    if "multimodal_cfg" in cfg:
        raise IPLError("CoCa-style CLIP configs (multimodal_cfg) are not supported.")
    if "hf_model_name" in cfg["text_cfg"]:
        cfg["text_cfg"]["hf_model_pretrained"] = False
    if "timm_model_name" in cfg["vision_cfg"]:
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    cls = CustomTextCLIP if custom_text else CLIP
    return cls(**cfg)


def _tokenizer_for(text_cfg: dict) -> Any:
    from open_clip.tokenizer import SimpleTokenizer

    if text_cfg.get("hf_tokenizer_name"):
        raise IPLError("CLIP configs with a Hugging Face tokenizer are not supported offline; use a model with "
                       "CLIP's BPE tokenizer.")
    return SimpleTokenizer(context_length=int(text_cfg.get("context_length", 77)),
                           **text_cfg.get("tokenizer_kwargs", {}))


def _load_from_config(config_path: Path, pretrained: Optional[str], spec: ClipSpec) -> FrozenClip:
    """A model from an open_clip config JSON plus a local weights file (or random weights for 'none')."""
    config_path = Path(config_path)
    if not config_path.is_file():
        raise IPLError(f"CLIP config {config_path} not found: pass an open_clip model name (e.g. ViT-B-32), "
                       f"'toy', or the path of an open_clip model-config JSON.")
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise IPLError(f"CLIP config {config_path} is not valid JSON ({e}).") from e
    model_cfg = raw.get("model_cfg", raw)
    pp = raw.get("preprocess_cfg", {})
    mean, std = tuple(pp.get("mean", OPENAI_MEAN)), tuple(pp.get("std", OPENAI_STD))
    if pretrained is None:
        pretrained = _sibling_weights(config_path)
        if pretrained is None:
            raise WeightsNotFoundError(
                f"No weights for CLIP config {config_path}: put them next to it as "
                f"{config_path.with_suffix('.safetensors').name}, or name them in the spec "
                f"('{config_path}:/path/to/weights.safetensors'), or use ':none' for random weights (tests only).")
    model = _build_model(model_cfg)
    random = _is_none(pretrained)
    if random:
        _warn_random(spec)
    else:
        _load_weights_file(model, Path(pretrained))
    return FrozenClip(model, _tokenizer_for(model_cfg["text_cfg"]), spec, mean=mean, std=std,
                      random_weights=random)


def _sibling_weights(config_path: Path) -> Optional[str]:
    stems = [config_path.stem]
    for suffix in ("_config", "-config", ".config"):
        if config_path.stem.endswith(suffix):
            stems.append(config_path.stem[: -len(suffix)])
    for stem in stems:
        for ext in (".safetensors", ".pt", ".bin"):
            cand = config_path.with_name(stem + ext)
            if cand.is_file():
                return str(cand)
    return None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _load_weights_file(model: nn.Module, path: Path) -> None:
    """Load a state dict (safetensors, torch, or OpenAI TorchScript archive) strictly into an open_clip model."""
    if not path.is_file():
        raise WeightsNotFoundError(f"CLIP weights file {path} not found: check the path after ':' in the spec.")
    try:
        if _is_torchscript(path):
            # OpenAI's released .pt files are TorchScript archives; take only their tensors.
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
            for key in ("input_resolution", "context_length", "vocab_size"):
                state.pop(key, None)
            expected = model.state_dict()
            for key in [k for k in state if k not in expected and k.endswith("attn_mask")]:
                del state[key]  # a scripted module saves its (rebuildable) causal-mask buffers too
            model.load_state_dict(state, strict=True)
        else:
            from open_clip.factory import load_checkpoint

            load_checkpoint(model, str(path), strict=True, weights_only=True)
    except (RuntimeError, KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"CLIP weights {path} do not fit the model architecture or are unreadable: {e}. Check that the "
            f"weights match the model name / config in the spec.") from e


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes")
               for k in ("HF_HUB_OFFLINE", "IPL_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _cached_tag_file(pcfg: dict, cache_dir: Optional[str]) -> tuple[Optional[str], str]:
    """(local path if the tag's weights are already cached, a description of what to fetch and where)."""
    hub = pcfg.get("hf_hub", "")
    url = pcfg.get("url", "")
    hints = []
    if hub:
        repo_id, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pt", ".pth")):
            names.insert(0, os.path.splitext(filename)[0] + ".safetensors")
        try:
            from huggingface_hub import try_to_load_from_cache
            from huggingface_hub.constants import HF_HUB_CACHE
            for name in names:
                got = try_to_load_from_cache(repo_id=repo_id, filename=name, cache_dir=cache_dir)
                if isinstance(got, str) and os.path.isfile(got):
                    return got, ""
            hub_cache = cache_dir or HF_HUB_CACHE
        except ImportError:
            hub_cache = cache_dir or "~/.cache/huggingface/hub"
        hints.append(f"'{names[0]}' from https://huggingface.co/{repo_id} (into the Hugging Face hub cache "
                     f"{hub_cache}, e.g. `huggingface-cli download {repo_id} {names[0]}`)")
    if url:
        clip_cache = cache_dir or os.path.expanduser("~/.cache/clip")
        target = os.path.join(clip_cache, os.path.basename(url))
        if os.path.isfile(target):
            return target, ""
        hints.append(f"{url} saved as {target}")
    return None, " or ".join(hints)


def _load_open_clip(spec: ClipSpec) -> FrozenClip:
    """A built-in open_clip architecture with a tag's weights, a local file, or random weights."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    name = spec.name
    if name.startswith(_SCHEMAS):
        raise IPLError(f"CLIP spec '{spec}': hf-hub:/local-dir: names are not supported; pass an open_clip model "
                       f"name with ':TAG' or ':/path/to/weights', or a model-config JSON path.")
    if open_clip.get_model_config(name) is None:
        raise IPLError(f"Unknown CLIP model '{name}': use an open_clip model name (e.g. ViT-B-32, ViT-B-16; "
                       f"see open_clip.list_models()), 'toy', or the path of a model-config JSON.")
    tags = list_pretrained_tags_by_model(name)
    pretrained = spec.pretrained
    if pretrained is None:
        if not tags:
            raise WeightsNotFoundError(f"open_clip knows no pretrained weights for '{name}': give a weights file "
                                       f"('{name}:/path/to/weights.pt') or ':none' for random weights.")
        pretrained = "openai" if "openai" in tags else tags[0]

    cache_dir = os.environ.get("IPL_CLIP_CACHE") or None
    random = _is_none(pretrained)
    mean, std = OPENAI_MEAN, OPENAI_STD
    quick_gelu = False
    weights_path: Optional[str] = None
    if random:
        _warn_random(spec)
    elif os.path.isfile(os.path.expanduser(pretrained)):
        weights_path = os.path.expanduser(pretrained)
        # OpenAI's TorchScript releases were trained with QuickGELU; their plain config names lack it.
        quick_gelu = _is_torchscript(Path(weights_path))
    else:
        pcfg = get_pretrained_cfg(name, pretrained)
        if not pcfg:
            raise IPLError(f"CLIP spec '{spec}': '{pretrained}' is neither a known open_clip tag for {name} "
                           f"(known: {', '.join(tags) or 'none'}) nor an existing file.")
        quick_gelu = bool(pcfg.get("quick_gelu", False))
        mean, std = tuple(pcfg.get("mean", OPENAI_MEAN)), tuple(pcfg.get("std", OPENAI_STD))
        weights_path, hint = _cached_tag_file(pcfg, cache_dir)
        if weights_path is None:
            if _offline():
                raise WeightsNotFoundError(
                    f"CLIP weights for '{name}:{pretrained}' are not cached and downloads are off "
                    f"(HF_HUB_OFFLINE/IPL_OFFLINE). Fetch {hint}; or pass a local file as "
                    f"'--clip {name}:/path/to/weights'.")
            try:
                weights_path = open_clip.download_pretrained(pcfg, cache_dir=cache_dir)
            except Exception as e:  # any network / hub failure
                raise WeightsNotFoundError(
                    f"Could not download CLIP weights for '{name}:{pretrained}' ({type(e).__name__}: {e}). "
                    f"Fetch {hint}; or pass a local file as '--clip {name}:/path/to/weights'.") from e

    model_cfg = open_clip.get_model_config(name)
    model = _build_model(model_cfg, quick_gelu=quick_gelu)
    if weights_path is not None:
        _load_weights_file(model, Path(weights_path))
    tokenizer = open_clip.get_tokenizer(name)
    return FrozenClip(model, tokenizer, spec, mean=mean, std=std, random_weights=random)
