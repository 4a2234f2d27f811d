"""Stage 2: adapt a copy of the generator with the directional CLIP loss (IPL or NADA's fixed direction).

The trainer talks to the generator only through `ipl.core.interface.AdaptableGenerator`. A generator
family may add loss terms of its own through `AdaptableGenerator.extra_losses(latents, images_t)`
(e.g. diffusion: an L1 term to the source image); each returned scalar, already weighted, is added to
the total and logged under its key.
"""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn

from ipl.core.config import AdaptConfig
from ipl.method.ema import EMA
from ipl.core.errors import IPLError
from ipl.method.freezing import parameters_of_layers, rank_layers, row_scores, select_layers
from ipl.method.noise import training_noise
from ipl.core import distributed as dist
from ipl.core.interface import AdaptableGenerator

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(IPLError):
    """A loss term became NaN or inf; the run stops and keeps its last good checkpoint."""


_D = AdaptConfig()  # the one place the defaults live


@dataclass
class Stage2Settings:
    """The stage-2 hyperparameters; defaults and meanings are AdaptConfig's (ipl.core.config)."""

    method: str = _D.method
    iters: int = _D.iters
    batch: int = _D.batch
    lr: float = _D.lr
    beta1: float = _D.beta1
    beta2: float = _D.beta2
    ema_decay: float = _D.ema_decay
    layers: Optional[int] = None       # k unfrozen per step, resolved from AdaptConfig.layers; None: all
    layer_batch: int = _D.layer_batch
    layer_lr: float = _D.layer_lr
    layer_every: int = _D.layer_every
    layer_map: str = _D.layer_map      # what unfreezing a layer group trains (AdaptableGenerator.layer_parameters)
    probe: str = _D.probe              # how layers are picked: "reference" (W+ probe pass) or "grad" (_pick_layers)
    compile: bool = _D.compile         # torch.compile the renders and CLIP image encoders (ipl.method.compile)
    data_parallel: bool = _D.data_parallel  # share each step over the torchrun processes (_local_share)
    augment_views: int = _D.augment_views
    length_weight: float = _D.length_weight
    length_ratio: float = 0.0          # resolved from AdaptConfig.length_ratio (needed when length_weight > 0)
    freeze_noise: bool = _D.freeze_noise
    noise: str = _D.noise              # "random": fresh noise per render from self.noise_rng; "fixed": stored set
    truncation: float = 1.0            # resolved from AdaptConfig.truncation (the registry's when None)
    precision: str = _D.precision
    seed: int = _D.seed

    @classmethod
    def from_config(cls, cfg: AdaptConfig, layers: Optional[int], truncation: float) -> "Stage2Settings":
        """The stage-2 part of a run's config, with the values the run resolved from the registry."""
        names = {f.name for f in dataclasses.fields(cls)} - {"layers", "truncation", "length_ratio"}
        return cls(layers=layers, truncation=truncation, length_ratio=cfg.length_ratio or 0.0,
                   **{name: getattr(cfg, name) for name in names})


def autocast_factory(device: torch.device, precision: str):
    """A zero-argument callable returning the autocast context for this precision."""
    if precision == "fp32":
        return nullcontext
    dtype = _DTYPES[precision]
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no grad on any weight (frozen networks are never differentiated w.r.t. weights)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class Stage2Trainer:
    """G_t = copy of G_s trained for `settings.iters` steps; an EMA of it is the result.

    source:      the frozen source generator G_s (left untouched)
    clips:       FrozenClip models; each contributes weight * directional loss
    source_text: class text of the source domain ("photo")
    target_text: class text of the target domain ("Pixar character")
    learners:    IPL: one frozen PromptLearner per CLIP model (from stage 1); NADA: None
    settings:    hyperparameters
    """

    def __init__(self, source: AdaptableGenerator, clips: Sequence, source_text: str, target_text: str,
                 learners: Optional[Sequence[nn.Module]], settings: Stage2Settings):
        from ipl.method.templates import template_features

        self.settings = s = settings
        if s.length_weight > 0 and not s.length_ratio > 0:
            raise IPLError(f"the length term (weight {s.length_weight}) needs a positive length ratio, got "
                           f"{s.length_ratio}: pass --length-ratio (0.69 for the shipped toy CLIP)")
        self.clips = list(clips)
        self.source_text, self.target_text = source_text, target_text
        self.device = next(source.parameters()).device
        self.G_s = freeze(source)
        self.G_t = source.copy()
        self.G_t.eval()  # no dropout/batch-norm semantics wanted; gradients still flow
        self.G_ema = freeze(source.copy())
        for p in self.G_t.parameters():
            p.requires_grad_(False)
        self.params = list(self.G_t.trainable_parameters())
        if self.G_t.num_layers() > 0:
            # Only what some layer group of the map trains, also with no layer frozen (StyleGAN2 'reference': NADA's
            # and IPL's conv1, to_rgb1 and convs, whatever k is).
            self.params = parameters_of_layers(self.G_t, range(self.G_t.num_layers()), self.params, s.layer_map)
        if s.freeze_noise:
            noise = self.G_t.noise_parameters()
            if not noise:
                raise IPLError("--freeze-noise: this generator has no noise inputs (StyleGAN2 sources only)")
            frozen = {id(p) for p in noise}
            self.params = [p for p in self.params if id(p) not in frozen]
        assert self.params, "the generator exposes no trainable parameters"
        self.ema = EMA(self.G_t, self.G_ema, s.ema_decay)
        self.opt = torch.optim.Adam(self.params, lr=s.lr, betas=(s.beta1, s.beta2))
        self.autocast = autocast_factory(self.device, s.precision)
        use_scaler = s.precision == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        # Latents are drawn from a CPU generator (same stream on every device; AdaptableGenerator moves them).
        self.rng = torch.Generator(device="cpu")
        self.rng.manual_seed(int(s.seed) + 1)  # stage 1 uses `seed`; keep stage 2's stream separate
        # Noise of every render in a step (noise "random"): a stream of its own (latents are the same either way).
        self.noise_rng = torch.Generator(device="cpu")
        self.noise_rng.manual_seed(int(s.seed) + 4)  # seed + 2: the grids' latents; seed + 3: stage 1's noise
        self.iteration = 0
        self.current_layers: Optional[list[int]] = None  # the layers picked by the last probe
        # Data-parallel (torchrun): each rank trains on its slice of every batch; gradients, logged terms and the
        # layer pick are shared, so every rank holds the same G_t, EMA and RNG streams.
        self.parallel = bool(s.data_parallel) and dist.active()
        # Probe "grad": per W+ row, the summed mean |dL/dW+| of the training passes since the last pick.
        self.probe_scores: Optional[torch.Tensor] = None

        if s.method == "ipl":
            if learners is None or len(learners) != len(self.clips):
                raise IPLError("method 'ipl' needs one prompt learner per CLIP model (run stage 1 first)")
            self.learners = [freeze(m) for m in learners]
        elif s.method == "nada":
            self.learners = None
        else:
            raise IPLError(f"unknown method {s.method!r}; choose ipl or nada")

        # Fixed text features, computed once. Drop features cached by earlier stages first: a batched
        # text encode differs from a single one in the last ulp, and a resumed run (which skips stage 1)
        # must see bit-identical features to an uninterrupted one.
        for c in self.clips:
            c.clear_text_cache()
        with torch.no_grad():
            # The 79-template means: NADA's one shared direction per CLIP model, and for both methods the
            # length term's goal (IPL's per-image text changes are longer or shorter than the fixed texts
            # the ratio was measured on).
            if s.method == "nada" or s.length_weight > 0:
                self.template_src = [template_features(c, source_text).reshape(1, -1) for c in self.clips]
                self.template_tgt = [template_features(c, target_text).reshape(1, -1) for c in self.clips]
            # Layer probe: raise similarity to the plain target text.
            self.probe_feats = [c.encode_texts([target_text]).reshape(1, -1) for c in self.clips]

        # The passes a step makes; --compile routes them through torch.compile (falling back to eager with one
        # warning). G_s and the CLIP models may be shared with other runs, so they are wrapped here, not patched.
        self._render_s = self.G_s.render
        self._encode = [c.encode_images for c in self.clips]
        if s.compile:
            from ipl.method.compile import compiled

            self._render_s = compiled(self.G_s.render, "G_s.render")
            self._encode = [compiled(c.encode_images, f"clip[{k}].encode_images") for k, c in enumerate(self.clips)]
            self.G_t.render = compiled(self.G_t.render, "G_t.render")  # G_t is this trainer's own copy
            self.G_t.render_layers = compiled(self.G_t.render_layers, "G_t.render_layers")

    # ------------------------------------------------------------------ one step
    def _text_features(self, k: int, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source and target text features for CLIP model k: per image (IPL) or shared [1, D] (NADA)."""
        if self.learners is None:
            return self.template_src[k], self.template_tgt[k]
        from ipl.method.prompts import prompt_features

        codes = self.G_s.codes(latents)
        clip, learner = self.clips[k], self.learners[k]
        return (prompt_features(clip, learner, codes, self.source_text),
                prompt_features(clip, learner, codes, self.target_text))

    def step(self) -> dict[str, Any]:
        """One stage-2 iteration; returns its log record (loss terms, layers, seconds, memory).

        With noise "random" every render in it (G_s, G_t, the layer probe) draws its own fresh noise from
        `noise_rng` (ipl.method.noise.training_noise); outside a step G_s and G_t render the stored noise set.
        """
        with training_noise((self.G_s, self.G_t), self.settings.noise, self.noise_rng):
            return self._step()

    def _step(self) -> dict[str, Any]:
        from ipl.method.augment import paired_views

        s = self.settings
        t0 = time.perf_counter()
        for p in self.params:
            p.requires_grad_(False)
        self.opt.zero_grad(set_to_none=True)

        # 1. Pick the layers to train this step (nothing else trainable).
        layers = self._pick_layers()
        if layers is not None:
            active = parameters_of_layers(self.G_t, layers, self.params, s.layer_map)
        else:
            active = self.params
        for p in active:
            p.requires_grad_(True)
        t_probe = time.perf_counter() - t0

        # 2. Directional loss on a fresh batch.
        latents = self.G_t.sample_latents(s.batch, generator=self.rng, truncation=s.truncation)
        if self.parallel:
            latents = self._local_share(latents)
        terms: dict[str, torch.Tensor] = {}
        with torch.no_grad(), self.autocast():
            images_s = self._render_s(latents)
            texts = [self._text_features(k, latents) for k in range(len(self.clips))]
        with self.autocast():
            images_t, w_plus = self._render_trained(latents, layers is not None)
            assert images_t.shape == images_s.shape, f"{tuple(images_t.shape)} vs {tuple(images_s.shape)}"
            views_s, views_t, n_views = images_s, images_t, 1
            if s.augment_views > 0:
                n_views = s.augment_views
                views_s, views_t = paired_views(images_s, images_t, n_views, generator=self.rng)
            with torch.no_grad():
                src_feats = [self._encode[k](views_s) for k in range(len(self.clips))]
            total = 0.0
            for k, clip in enumerate(self.clips):
                tgt_feats = self._encode[k](views_t)
                # Per-image text directions line up with the view-major image views.
                src_txt, tgt_txt = (t.repeat(n_views, 1) if t.shape[0] > 1 else t for t in texts[k])
                total = total + self.clip_loss(k, src_feats[k], tgt_feats, src_txt, tgt_txt, terms)
            for name, value in self.G_t.extra_losses(latents, images_t).items():
                terms[name] = value
                total = total + value
        terms["total"] = total
        logged = self._mean_over_ranks(terms) if self.parallel else terms  # every rank: the whole batch's values
        self._check_finite(logged)

        self._optimizer_step(total)
        self._note_row_scores(w_plus)
        self.ema.update()
        for p in active:
            p.requires_grad_(False)
        self.iteration += 1
        record: dict[str, Any] = {"stage": 2, "it": self.iteration}
        record.update({name: float(v.detach()) for name, v in logged.items()})
        record["layers"] = layers if layers is not None else "all"
        record["probe_s"] = round(t_probe, 6)
        record["seconds"] = round(time.perf_counter() - t0, 6)
        record["mem_mb"] = memory_mb(self.device)
        return record

    def _pick_layers(self) -> Optional[list[int]]:
        """The W+ rows (layer groups) to train this step, None for all: the one place the layer probe runs.

        settings.probe "reference": NADA's probe, one SGD step on the W+ of `layer_batch` fresh latents toward the
        target text (a forward and backward through G_t and CLIP). "grad": the rows whose W+ gradient in the
        training passes since the last pick was largest (`probe_scores`, free: the backward computes it anyway);
        the first pick, with no training pass yet, is the reference probe's. Re-picked every `layer_every` steps.
        """
        s = self.settings
        if s.layers is None or not 0 < s.layers < self.G_t.num_layers():
            return None
        if self.current_layers is None or self.iteration % max(1, s.layer_every) == 0:
            if self.parallel and not dist.is_main():
                pass  # data-parallel: rank 0 alone picks; its pick (and RNG states) arrive in _share_pick
            elif s.probe == "grad" and self.probe_scores is not None:
                self.current_layers = rank_layers(self.G_t, self.probe_scores, s.layers, allowed=self.params,
                                                  layer_map=s.layer_map)
            else:
                probe = self.G_t.sample_latents(s.layer_batch, generator=self.rng, truncation=s.truncation)
                self.current_layers = select_layers(self.G_t, self.clips, self.probe_feats, s.layers, probe,
                                                    lr=s.layer_lr, autocast=self.autocast, allowed=self.params,
                                                    layer_map=s.layer_map)
            if self.parallel:
                self._share_pick()
            self.probe_scores = None
        return list(self.current_layers)

    def _share_pick(self) -> None:
        """Data-parallel: rank 0's layer pick and its RNG streams (the probe drew from them) on every rank."""
        self.current_layers, rng, noise_rng = dist.broadcast_object(
            [self.current_layers, self.rng.get_state(), self.noise_rng.get_state()])
        self.rng.set_state(rng)
        self.noise_rng.set_state(noise_rng)

    def _local_share(self, latents: torch.Tensor) -> torch.Tensor:
        """Data-parallel: this rank's slice of the batch every rank drew from the shared latent stream.

        Latents, augmentation crops and the layer probe come from streams every rank holds alike, so the ranks
        together see the one-process batch. Per-pixel noise (noise "random") cannot be sliced out of a whole-batch
        draw: each rank renders its slice with noise from a stream of its own for this step, seeded from the shared
        noise stream (reproducible and resumable, but not the one-process noise; noise "fixed" is identical).
        """
        n, r = dist.world_size(), dist.rank()
        if latents.shape[0] % n:
            raise IPLError(f"data-parallel: a batch of {latents.shape[0]} cannot be split evenly over {n} processes; "
                           f"use a multiple of {n}")
        size = latents.shape[0] // n
        if self.settings.noise == "random":
            seeds = torch.randint(0, 2**62, (n,), generator=self.noise_rng)
            local = torch.Generator(device="cpu").manual_seed(int(seeds[r]))
            for g in (self.G_s, self.G_t):
                g.set_noise_mode("random", local)
        return latents[r * size:(r + 1) * size]

    @staticmethod
    def _mean_over_ranks(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Data-parallel: each loss term averaged over the ranks (the whole batch's mean: the slices are equal)."""
        names = list(terms)
        return dict(zip(names, dist.mean_values([terms[k] if torch.is_tensor(terms[k]) else torch.tensor(
            float(terms[k])) for k in names])))

    def _render_trained(self, latents: torch.Tensor, frozen: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """G_t's images of `latents`, and (probe "grad" with freezing on) the W+ leaf they were rendered from."""
        if self.settings.probe != "grad" or not frozen:
            return self.G_t.render(latents), None
        # render(w) is render_layers(lift(w)); rendering from a leaf W+ makes the backward fill its gradient.
        w_plus = self.G_t.lift(latents).detach().requires_grad_(True)
        return self.G_t.render_layers(w_plus), w_plus

    def _note_row_scores(self, w_plus: Optional[torch.Tensor]) -> None:
        """Probe "grad": add this step's per-row W+ gradient size to `probe_scores` (after the backward)."""
        if w_plus is None or w_plus.grad is None:
            return
        grad = w_plus.grad
        if self.scaler is not None:  # fp16: undo the loss scale, so steps with different scales add up fairly
            grad = grad / self.scaler.get_scale()
        scores = row_scores(grad).cpu()
        if not bool(torch.isfinite(scores).all()):  # an fp16 step the scaler skipped
            return
        self.probe_scores = scores if self.probe_scores is None else self.probe_scores + scores

    def clip_loss(self, k: int, src_feats: torch.Tensor, tgt_feats: torch.Tensor, src_txt: torch.Tensor,
                  tgt_txt: torch.Tensor, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """CLIP model k's weighted loss: directional (+ length term when on); logs the terms into `terms`."""
        from ipl.method.losses import directional_loss, length_loss

        s = self.settings
        args = (src_feats.float(), tgt_feats.float(), src_txt.float(), tgt_txt.float())
        terms[f"dir_{k}"] = loss = directional_loss(*args)
        if s.length_weight > 0:
            terms[f"len_{k}"] = length = length_loss(*args, ratio=s.length_ratio,
                                                     reference=(self.template_src[k], self.template_tgt[k]))
            loss = loss + s.length_weight * length
        return self.clips[k].weight * loss

    def _optimizer_step(self, total: torch.Tensor) -> None:
        """Backward and one optimiser step (through the fp16 grad scaler when there is one)."""
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            if self.parallel:
                dist.all_reduce_grads(self.params)
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            total.backward()
            if self.parallel:
                dist.all_reduce_grads(self.params)
            self.opt.step()

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> None:
        bad = [name for name, v in terms.items() if not math.isfinite(float(v.detach()))]
        if bad:
            raise NonFiniteLossError(
                f"stage 2 iteration {self.iteration + 1}: loss term(s) {', '.join(bad)} became NaN/inf "
                f"({', '.join(f'{n}={float(v.detach())}' for n, v in terms.items())}). Try --precision fp32, "
                "a lower --lr, or fewer --iters.")

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: weights, EMA, optimiser, RNG, iteration."""
        return {
            "iteration": self.iteration,
            "current_layers": self.current_layers,
            "probe_scores": self.probe_scores,
            "G_t": self.G_t.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "rng": self.rng.get_state(),
            "noise_rng": self.noise_rng.get_state(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict` (same settings and source)."""
        self.iteration = int(state["iteration"])
        self.current_layers = state.get("current_layers")
        self.probe_scores = state.get("probe_scores")
        self.G_t.load_state_dict(state["G_t"])
        for p in self.G_t.parameters():
            p.requires_grad_(False)
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.rng.set_state(state["rng"].cpu())
        if "noise_rng" in state:
            self.noise_rng.set_state(state["noise_rng"].cpu())
        elif self.settings.noise == "random":  # a checkpoint from before --noise existed rendered with fixed noise
            raise KeyError("noise_rng (the checkpoint has no noise stream: it was written with --noise fixed)")
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])


def memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on GPU, process max RSS on CPU (MiB)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    except Exception:  # pragma: no cover - non-POSIX
        return float("nan")
