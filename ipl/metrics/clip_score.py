"""CLIP score: 100 x the mean cosine between CLIP image embeddings and the target text's embedding."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def clip_scores(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """Per-image 100 * cos(image, text) [N]; features may be unnormalised, text is [D] or [1, D]."""
    assert image_features.ndim == 2, f"image features must be [N, D], got {tuple(image_features.shape)}"
    text = text_features.reshape(1, -1)
    assert text.shape[1] == image_features.shape[1], "image and text features differ in width"
    return 100.0 * F.cosine_similarity(image_features.float(), text.float().to(image_features.device), dim=1)


class ClipScore:
    """Accumulates the CLIP score of streamed image batches against one text."""

    def __init__(self, clip, text: str):
        self.clip = clip                      # ipl.method.clip.FrozenClip (names its spec, knows if weights are random)
        self.text = text                      # the target text, as given (no template added)
        with torch.no_grad():
            self.text_features = clip.encode_texts([text])[0]
        self._scores: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, images: torch.Tensor) -> None:
        """Add a batch of images in [-1, 1]."""
        feats = self.clip.encode_images(images.to(self.clip.device).float())
        self._scores.append(clip_scores(feats, self.text_features).cpu())

    def compute(self) -> dict[str, Optional[float]]:
        """Mean and std of the per-image scores, with the CLIP spec and text named."""
        s = torch.cat(self._scores) if self._scores else torch.zeros(0)
        return {
            "clip_score": float(s.mean()) if len(s) else float("nan"),
            "clip_score_std": float(s.std()) if len(s) > 1 else None,
            "clip_model": str(self.clip.spec),
            "clip_text": self.text,
        }
