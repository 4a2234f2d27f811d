"""Every setting of one adaptation run, with IPL's settings as defaults (differences: docs/fidelity.md); JSON in and out."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from ipl.core.errors import IPLError

METHODS = ("ipl", "nada")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cuda", "cpu")
NOISE_MODES = ("random", "fixed")
LAYER_MAPS = ("reference", "semantic")
PROBES = ("reference", "grad")


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
    # Which parameters unfreezing W+ row i trains (docs/adapt.md, "Adaptive layer freezing"): "reference" is the NADA
    # and IPL trainers' map (row 0 -> conv1, row 1 -> to_rgb1, row i >= 2 -> convs[i-2], rosinality names), "semantic"
    # the convolutions row i modulates (never a ToRGB; rows that modulate only a ToRGB are never picked).
    layer_map: str = "reference"
    # How the layers are picked (docs/adapt.md, "The layer probe"): "reference" is NADA's W+ probe (layer_batch fresh
    # latents, one forward + backward through G_t and CLIP); "grad" ranks the W+ rows by the gradient the training
    # backward computes anyway (no extra pass; the first pick is the reference probe's).
    probe: str = "reference"
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
    # StyleGAN2's per-pixel noise in training renders (stage 1, and G_s, G_t and the layer probe in stage 2):
    # "random" draws fresh noise for every render, as the NADA and IPL references do (randomize_noise=True), from
    # a seeded generator the run owns (saved in checkpoint.pt, so --resume stays bit-exact); "fixed" renders every
    # pass with the one stored noise set, which lets the noise strengths learn a fixed speckle pattern. Sample
    # grids and `ipl sample` always use the stored set. Generators without noise inputs ignore it.
    noise: str = "random"
    truncation: Optional[float] = None      # None: registry default (1.0 for training)
    # torch.compile the stage-2 renders (G_s, G_t) and the CLIP image encoders (dynamic shapes off); where compiling
    # fails, one warning and the eager path. Same maths, last-ulp differences: --resume may change it.
    compile: bool = False
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
    # One run on all torchrun processes (`ipl adapt --data-parallel`, docs/distributed.md): the stage-1 and stage-2
    # batches (global sizes, as NVIDIA's trainers) are split evenly over the processes and gradients averaged;
    # config.json's "resolved" records the per-process batch. The same result as one process (to float rounding),
    # so --resume may change it.
    data_parallel: bool = False
    # Where each setting set above these defaults came from: "flag", "source:NAME" (the source's run_defaults
    # and registry texts) or "recipe:METHOD" (METHOD_RECIPES); filled by `ipl adapt` (layered_defaults). A record
    # for config.json, not a hyperparameter: --resume does not compare it.
    filled_by: dict = field(default_factory=dict)

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
        if self.noise not in NOISE_MODES:
            raise IPLError(f"--noise {self.noise!r}: choose one of {', '.join(NOISE_MODES)}")
        if self.layer_map not in LAYER_MAPS:
            raise IPLError(f"--layer-map {self.layer_map!r}: choose one of {', '.join(LAYER_MAPS)}")
        if self.probe not in PROBES:
            raise IPLError(f"--probe {self.probe!r}: choose one of {', '.join(PROBES)}")
        if not isinstance(self.compile, bool):
            raise IPLError(f"compile must be true or false, got {self.compile!r}")
        # Every number: finite and in range (LIMITS, FLOAT_RANGES; docs/adapt.md "Safety"), before anything is
        # written. Stage-1 settings only matter (and are only checked) for IPL.
        stage1 = ("iters_prompt", "batch_prompt", "n_ctx", "lr_prompt", "lambda_l", "lambda_src")
        for name, (lo, hi) in LIMITS.items():
            if self.method == "ipl" or name not in stage1:
                _check_int(name, getattr(self, name), lo, hi)
        for name, (lo, lo_open, hi, hi_open) in FLOAT_RANGES.items():
            if self.method == "ipl" or name not in stage1:
                _check_float(name, getattr(self, name), lo, lo_open, hi, hi_open)
        if self.length_ratio is not None:
            _check_float("length_ratio", self.length_ratio, 0.0, True, math.inf, False)
        if self.truncation is not None:
            _check_float("truncation", self.truncation, -TRUNCATION_MAX, False, TRUNCATION_MAX, False)
        if self.length_weight > 0 and not (self.length_ratio or 0) > 0:
            raise IPLError(f"--length-weight {self.length_weight} needs a positive --length-ratio (the CLIP "
                           f"model's image/text change-length ratio), got {self.length_ratio}")
        if self.layers is not None and parse_layers(self.layers) is not None and parse_layers(self.layers) <= 0:
            raise IPLError(f"--layers must be a positive integer or 'all', got {self.layers}")
        if not self.clip:
            raise IPLError("at least one --clip model is needed")
        weights = [_clip_weight(spec) for spec in self.clip]
        if not any(w > 0 for w in weights):
            raise IPLError(f"--clip {' '.join(map(str, self.clip))}: every CLIP weight is 0, so there is no loss "
                           "to train with; give at least one model a weight > 0 (NAME@1)")
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


# A method's own recipe: the settings its reference implementation's README runs with. `ipl adapt --method M`
# starts from them; a source's run_defaults and any flag given win (layered_defaults). NADA's FFHQ recipe:
# --auto_layer_k 18 --auto_layer_iters 1 --lr 0.002 --batch 2 --iter 301, saving the trainable generator: k is
# every layer ("all": the probe would pick them all, so stage 2 skips it) and no EMA (decay 0: the saved generator
# is G_t itself). IPL's recipe is AdaptConfig's defaults.
METHOD_RECIPES: dict[str, dict[str, Any]] = {
    "ipl": {},
    # NADA's README command for FFHQ (--auto_layer_k 18 --lr 0.002 --batch 2 --iter 301): its train.py runs Adam at
    # lr x 4/5 (our --lr is the Adam lr, as for IPL) for range(301) steps, and saves the trained generator (no EMA).
    "nada": {"layers": "all", "layer_every": 1, "lr": 0.002 * 0.8, "batch": 2, "iters": 301, "ema_decay": 0.0},
}


def layered_defaults(method: str, source_defaults: Mapping[str, Any], given: Iterable[str],
                     source_label: str = "source") -> tuple[dict[str, Any], dict[str, str]]:
    """The settings to put over AdaptConfig's defaults, and which layer filled each one.

    Highest first: a flag given on the command line (`given`: AdaptConfig field names the caller set from flags;
    left to the caller, recorded "flag"), the source's defaults (its registry run_defaults, source text and CLIP;
    recorded `source_label`, e.g. "source:toy"), the method's recipe (METHOD_RECIPES, "recipe:METHOD"),
    AdaptConfig's defaults (not recorded). Returns (values for dataclasses.replace, provenance map).
    """
    given = set(given)
    values: dict[str, Any] = {}
    filled = {name: "flag" for name in given}
    for layer, label in ((METHOD_RECIPES.get(method, {}), f"recipe:{method}"), (source_defaults, source_label)):
        for name, value in layer.items():  # the source's layer comes second and overwrites the recipe's
            if name not in given:
                values[name] = value
                filled[name] = label
    return values, dict(sorted(filled.items()))


# Integer settings: (min, max). The maxima are far above anything the method uses (paper: batch 2, stage-1
# batch 32, 4 context vectors) and low enough that a typo (--batch 100000) is refused at once instead of failing
# on allocation or running for hours; docs/adapt.md, "Safety". The run also refuses batches whose images alone
# cannot fit in the device's memory (ipl.run.check_memory), and an --n-ctx the CLIP's text context cannot hold.
LIMITS: dict[str, tuple[int, int]] = {
    "iters_prompt": (1, 1_000_000), "batch_prompt": (2, 1024), "n_ctx": (1, 64),
    "iters": (1, 1_000_000), "batch": (1, 256), "layer_batch": (1, 256), "layer_every": (1, 1_000_000),
    "augment_views": (0, 64), "seed": (0, 2**63 - 1), "sample_every": (0, 1_000_000), "sample_n": (1, 64),
    "checkpoint_every": (1, 1_000_000),
}
# Float settings: (low, low excluded?, high, high excluded?); every one must also be finite (no nan, no inf).
FLOAT_RANGES: dict[str, tuple[float, bool, float, bool]] = {
    "lr_prompt": (0.0, True, 1.0, False), "lambda_l": (0.0, False, math.inf, False),
    "lambda_src": (0.0, False, math.inf, False), "lr": (0.0, True, 1.0, False), "beta1": (0.0, False, 1.0, True),
    "beta2": (0.0, False, 1.0, True), "ema_decay": (0.0, False, 1.0, True), "layer_lr": (0.0, True, math.inf, False),
    "length_weight": (0.0, False, math.inf, False),
}
# Truncation psi: 1 is none, 0 the mean latent, negative values mirror through it; beyond +-2 a latent lies far
# outside anything the generator was trained on.
TRUNCATION_MAX = 2.0
FLAGS = {"augment_views": "--augment", "beta1": "beta1 (Adam)", "beta2": "beta2 (Adam)", "layer_lr": "layer_lr"}


def flag(name: str) -> str:
    """The command-line flag of a setting: lr_prompt -> --lr-prompt."""
    return FLAGS.get(name) or "--" + name.replace("_", "-")


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    ok = not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float) and value.is_integer()))
    if not ok or not lo <= value <= hi:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(lo, f"an integer >= {lo}")
        why = " (the contrastive loss needs negatives)" if name == "batch_prompt" and ok and value < lo else ""
        raise IPLError(f"{flag(name)} must be {kind} (at most {hi}){why}, got {value!r}")


def _check_float(name: str, value: Any, lo: float, lo_open: bool, hi: float, hi_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        low = f"> {lo:g}" if lo_open else f">= {lo:g}"
        high = "" if hi == math.inf else (f" and < {hi:g}" if hi_open else f" and <= {hi:g}")
        raise IPLError(f"{flag(name)} must be {low}{high} (a finite number), got {value!r}")


def _clip_weight(spec: Any) -> float:
    """The loss weight of a CLIP spec NAME[:PRETRAINED][@WEIGHT] (1 without '@'); refuses nan, inf, < 0."""
    if not isinstance(spec, str) or not spec.strip():
        raise IPLError(f"--clip {spec!r}: expected NAME[:PRETRAINED][@WEIGHT], e.g. ViT-B-32:openai@1.0")
    if "@" not in spec:
        return 1.0
    try:
        weight = float(spec.rsplit("@", 1)[1])
    except ValueError:
        return 1.0  # an '@' inside a path, not a weight (as ipl.method.clip.parse_clip_spec reads it)
    if not math.isfinite(weight) or weight < 0:
        raise IPLError(f"--clip {spec}: the weight after '@' must be a finite number >= 0, got {weight}")
    return weight


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
