"""Every setting of one adaptation run, with the paper's defaults; JSON in and out."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from ipl.core.errors import IPLError

METHODS = ("ipl", "nada")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cuda", "cpu")


@dataclass
class AdaptConfig:
    """One run: source, target, method, and the hyperparameters of both stages (IPL, CVPR 2023)."""

    # --- what to adapt ---
    source: str = "ffhq"                    # registry name or checkpoint path
    target_text: str = ""                   # target domain, e.g. "Pixar character"
    source_text: Optional[str] = None       # None: the registry default ("photo" etc.)
    method: str = "ipl"                     # "ipl" (two stages) or "nada" (fixed text direction)
    clip: list[str] = field(default_factory=lambda: ["ViT-B-32:openai"])  # NAME[:PRETRAINED][@WEIGHT]

    # --- stage 1: prompt learners (ignored for nada) ---
    iters_prompt: int = 300                 # stage-1 iterations
    batch_prompt: int = 32                  # stage-1 batch (latents per step)
    lr_prompt: float = 0.05                 # Adam lr of the prompt learners
    n_ctx: int = 4                          # learned context tokens per prompt
    lambda_l: float = 1.0                   # weight of the domain regulariser L_d
    lambda_src: float = 0.0                 # weight of L_d on the source text

    # --- stage 2: adapt the generator ---
    iters: int = 300                        # stage-2 iterations
    batch: int = 2                          # stage-2 batch
    lr: float = 0.002 * 0.8                 # Adam lr of the generator
    beta1: float = 0.0                      # Adam beta1
    beta2: float = 0.99 ** 0.8              # Adam beta2
    ema_decay: float = 0.99                 # EMA of G_t; the EMA is what is saved
    layers: Optional[Union[int, str]] = None  # adaptive freezing: k layers, "all" = off, None = registry default
    layer_batch: int = 8                    # latents used to pick the layers each step
    layer_lr: float = 0.01                  # SGD lr of the W+ probe step
    # Re-pick the layers every N steps. NADA re-picks every step (1), but its probe (8 latents through G_t
    # with grad) then costs more than the training step itself; every 4 steps keeps it a minor share.
    layer_every: int = 4
    # Paired random crops/flips of source and adapted images fed to CLIP (0: none, as NADA and IPL).
    # DESIGN section 9: a defence against a weak CLIP being satisfied by washed-out images.
    augment_views: int = 0
    # Length term (0: off, as NADA and IPL): the directional loss fixes only the direction of each image's
    # CLIP change; with weight > 0 its projection on the text change must also reach length_ratio x the
    # text change's length (ipl.method.losses.length_loss). The ratio is a property of the CLIP model.
    length_weight: float = 0.0
    length_ratio: Optional[float] = None    # None: the registry's (toy: measured on the toy CLIP)
    # Keep StyleGAN2's per-layer noise strengths frozen in stage 2 (NADA and IPL train them). A small CLIP's
    # gradient rewards per-pixel speckle, which one noise-strength scalar per layer draws at once (toy world).
    freeze_noise: bool = False
    truncation: Optional[float] = None      # None: registry default (1.0 for training)
    diffusion: dict = field(default_factory=dict)  # diffusion sources only: DiffusionConfig overrides
                                            # (t0, inversion_steps, generation_steps, lean, source_images, ...)

    # --- run plumbing ---
    out: Optional[str] = None               # run folder; None: runs/<source>-<target-slug>
    device: str = "auto"                    # auto | cuda | cpu
    precision: str = "fp32"                 # fp32 | bf16 | fp16 (autocast)
    seed: int = 0                           # one seed drives every random draw
    sample_every: int = 50                  # sample grid every N stage-2 iterations (0: start and end only)
    sample_n: int = 8                       # images per sample row (fixed seeds)
    checkpoint_every: int = 25              # resumable checkpoint every N stage-2 iterations

    def validate(self) -> "AdaptConfig":
        """Refuse settings that cannot make a run, with a message saying what to change."""
        if not isinstance(self.target_text, str) or not self.target_text.strip():
            raise IPLError("the target text is empty: pass --target \"TEXT\", e.g. --target \"Pixar character\"")
        if self.source_text is not None and not self.source_text.strip():
            raise IPLError("the source text is empty: pass --source-text \"TEXT\" or leave it to the registry default")
        if self.source_text is not None and _norm(self.source_text) == _norm(self.target_text):
            raise IPLError(f"source text and target text are the same ({self.target_text!r}): "
                           "there is no direction to adapt along; choose a different --target")
        if self.method not in METHODS:
            raise IPLError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.precision not in PRECISIONS:
            raise IPLError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES and not str(self.device).startswith("cuda:"):
            raise IPLError(f"unknown device {self.device!r}; choose auto, cuda, cuda:N or cpu")
        for name in ("iters", "batch", "layer_batch", "layer_every", "checkpoint_every", "sample_n"):
            if int(getattr(self, name)) <= 0:
                raise IPLError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.method == "ipl":
            for name in ("iters_prompt", "batch_prompt", "n_ctx"):
                if int(getattr(self, name)) <= 0:
                    raise IPLError(f"--{name.replace('_', '-')} must be a positive integer, "
                                   f"got {getattr(self, name)}")
            if self.batch_prompt < 2:
                raise IPLError("--batch-prompt must be at least 2 (the contrastive loss needs negatives)")
        if self.augment_views < 0:
            raise IPLError(f"--augment must be >= 0, got {self.augment_views}")
        if self.length_weight < 0:
            raise IPLError(f"--length-weight must be >= 0, got {self.length_weight}")
        if self.length_weight > 0 and not (self.length_ratio or 0) > 0:
            raise IPLError(f"--length-weight {self.length_weight} needs a positive --length-ratio (the CLIP "
                           f"model's image/text change-length ratio), got {self.length_ratio}")
        if self.sample_every < 0:
            raise IPLError(f"--sample-every must be >= 0, got {self.sample_every}")
        if not (0.0 <= self.ema_decay < 1.0):
            raise IPLError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr <= 0 or self.lr_prompt <= 0:
            raise IPLError("learning rates must be positive")
        if self.layers is not None and parse_layers(self.layers) is not None and parse_layers(self.layers) <= 0:
            raise IPLError(f"--layers must be a positive integer or 'all', got {self.layers}")
        if not self.clip:
            raise IPLError("at least one --clip model is needed")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AdaptConfig":
        """Build from a dict, ignoring keys that are not settings (versions, hashes...)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_json(self, path: Union[str, Path]) -> None:
        """Write atomically as JSON."""
        from ipl.core.atomic import write_json

        write_json(path, self.to_dict())

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "AdaptConfig":
        """Read a config written by `to_json` (or a run's config.json)."""
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
        return cls.from_dict(d.get("settings", d))


def parse_layers(value: Union[int, str, None]) -> Optional[int]:
    """`--layers` value -> k, or None for 'all' (freezing off)."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() == "all":
            return None
        try:
            return int(value)
        except ValueError:
            raise IPLError(f"--layers must be a positive integer or 'all', got {value!r}") from None
    return int(value)


def default_layers(resolution: int) -> int:
    """IPL's default number of unfrozen layers: floor(2/3 * num_ws), num_ws = 2*log2(res) - 2."""
    num_ws = 2 * (int(resolution).bit_length() - 1) - 2
    return max(1, (2 * num_ws) // 3)


def slugify(text: str, max_len: int = 40) -> str:
    """Folder-safe slug of a text: 'Pixar character' -> 'pixar-character'."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "target"


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .")
