"""The IPL and StyleGAN-NADA losses on CLIP features.

Every function accepts unnormalised or normalised features (it normalises them itself) and returns a scalar.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

#: Below this length an image-feature difference is treated as "no change yet" (see `safe_direction`).
MIN_IMAGE_DELTA = 1e-3


def _norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def safe_direction(delta: torch.Tensor, min_norm: float) -> torch.Tensor:
    """delta / max(|delta|, min_norm): the unit direction, shrinking linearly to 0 as delta vanishes.

    Below `min_norm` the map is linear (delta / min_norm), so the value is finite at delta = 0 and the gradient
    is bounded by 1 / min_norm (a plain x / (|x| + eps) has gradient 1 / eps there, which froze Adam).
    """
    return delta / delta.norm(dim=-1, keepdim=True).clamp_min(min_norm)


def contrastive_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Symmetric CLIP loss: image i should match prompt i. image_feats, text_feats: [B, D]."""
    assert image_feats.ndim == 2 and image_feats.shape == text_feats.shape, \
        (tuple(image_feats.shape), tuple(text_feats.shape))
    logits = float(logit_scale) * _norm(image_feats.float()) @ _norm(text_feats.float()).t()  # [B, B]
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def domain_regularizer(prompt_feats: torch.Tensor, template_feat: torch.Tensor) -> torch.Tensor:
    """mean_i (1 - cos(T(w_i), t_bar)): keeps image-specific target prompts inside the target domain.

    prompt_feats [B, D]; template_feat [D] or [1, D] (mean of the ImageNet-template features).
    """
    assert prompt_feats.ndim == 2, tuple(prompt_feats.shape)
    t = template_feat.reshape(1, -1).float()
    assert t.shape[1] == prompt_feats.shape[1], (tuple(prompt_feats.shape), tuple(template_feat.shape))
    return (1 - (_norm(prompt_feats.float()) * _norm(t)).sum(dim=-1)).mean()


def directional_loss(src_img: torch.Tensor, tgt_img: torch.Tensor, src_txt: torch.Tensor, tgt_txt: torch.Tensor,
                     eps: float = 1e-8, min_image_delta: float = MIN_IMAGE_DELTA) -> torch.Tensor:
    """mean_i (1 - cos(dI_i, dT_i)): the image change should point along the text change.

    src_img, tgt_img: image features [B, D] of G_s(w_i) and G_t(w_i); src_txt, tgt_txt: text features, either
    per image [B, D] (IPL) or one shared [1, D] / [D] (NADA). dI = norm(tgt) - norm(src) is normalised with
    `safe_direction(., min_image_delta)`, so the loss is 1 with a bounded, non-zero gradient when
    tgt_img == src_img (the first stage-2 step); dT is normalised with `eps`.
    """
    assert src_img.ndim == 2 and src_img.shape == tgt_img.shape, (tuple(src_img.shape), tuple(tgt_img.shape))
    src_txt = src_txt.reshape(-1, src_img.shape[1]) if src_txt.ndim == 1 else src_txt
    tgt_txt = tgt_txt.reshape(-1, src_img.shape[1]) if tgt_txt.ndim == 1 else tgt_txt
    assert src_txt.shape == tgt_txt.shape and src_txt.shape[0] in (1, src_img.shape[0]), \
        (tuple(src_txt.shape), tuple(tgt_txt.shape), tuple(src_img.shape))
    d_img = safe_direction(_norm(tgt_img.float(), eps) - _norm(src_img.float(), eps), min_image_delta)
    d_txt = _norm(_norm(tgt_txt.float(), eps) - _norm(src_txt.float(), eps), eps)
    return (1 - (d_img * d_txt).sum(dim=-1)).mean()


def length_loss(src_img: torch.Tensor, tgt_img: torch.Tensor, src_txt: torch.Tensor, tgt_txt: torch.Tensor,
                ratio: float, eps: float = 1e-8,
                reference: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """mean_i relu(1 - <dI_i, dT_i / |dT_i|> / (ratio |dT_ref|)): the image change must also be long enough.

    The directional loss is blind to the length of dI: an image change too small to see already has the right
    direction. This hinge asks the projection of dI (unnormalised, as in `directional_loss`) on the text
    direction to reach `ratio` times the text change's length, and stops pulling once it does. `ratio` is a
    property of the CLIP model: image embeddings of two domains lie much closer together than their texts
    (the modality gap), e.g. 0.69 for the shipped toy CLIP (`scripts/toy/analysis.py delta_ratio`).
    `reference` = (source, target) text features of one fixed text change whose length sets the goal (dT_ref);
    default: dT itself. The stage-2 trainer passes the template texts, so that image-specific (IPL) text
    changes, whose lengths differ from the fixed texts' that `ratio` was measured on, ask for the same
    amount of image change as NADA's. Shapes as in `directional_loss`; reference features [1, D] or [B, D].
    """
    assert ratio > 0, ratio
    assert src_img.ndim == 2 and src_img.shape == tgt_img.shape, (tuple(src_img.shape), tuple(tgt_img.shape))
    src_txt = src_txt.reshape(-1, src_img.shape[1])
    tgt_txt = tgt_txt.reshape(-1, src_img.shape[1])
    assert src_txt.shape == tgt_txt.shape and src_txt.shape[0] in (1, src_img.shape[0]), \
        (tuple(src_txt.shape), tuple(tgt_txt.shape), tuple(src_img.shape))
    d_img = _norm(tgt_img.float(), eps) - _norm(src_img.float(), eps)
    d_txt = _norm(tgt_txt.float(), eps) - _norm(src_txt.float(), eps)
    d_ref = d_txt
    if reference is not None:
        ref_src, ref_tgt = (t.float().reshape(-1, src_img.shape[1]) for t in reference)
        assert ref_src.shape == ref_tgt.shape and ref_src.shape[0] in (1, src_img.shape[0]), \
            (tuple(ref_src.shape), tuple(ref_tgt.shape), tuple(src_img.shape))
        d_ref = _norm(ref_tgt, eps) - _norm(ref_src, eps)
    goal = ratio * d_ref.norm(dim=-1).clamp_min(eps)
    along = (d_img * _norm(d_txt, eps)).sum(dim=-1)
    return torch.relu(1 - along / goal).mean()


def global_clip_loss(image_feats: torch.Tensor, text_feat: torch.Tensor) -> torch.Tensor:
    """mean_i (1 - cos(E_I(x_i), E_T(target))): NADA's global loss, also used for adaptive layer selection."""
    assert image_feats.ndim == 2, tuple(image_feats.shape)
    t = text_feat.reshape(-1, image_feats.shape[1]).float()
    assert t.shape[0] in (1, image_feats.shape[0]), (tuple(image_feats.shape), tuple(text_feat.shape))
    return (1 - (_norm(image_feats.float()) * _norm(t)).sum(dim=-1)).mean()


def weighted_sum(losses: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """sum_k lambda_k L_k over CLIP models."""
    assert len(losses) == len(weights) and losses, (len(losses), len(weights))
    return sum(float(w) * l for w, l in zip(weights, losses))
