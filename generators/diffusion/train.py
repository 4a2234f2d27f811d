"""Memory-lean stage 2 for diffusion models (DiffusionCLIP's "efficient" mode) on top of ipl.method.stage2.

One iteration draws a batch of pool latents and walks the DDIM generation from x_t0 step by step with the
adapted UNet. After each step the loss (IPL directional loss + weighted L1 to the source image) is taken on
that step's *predicted x0*, the optimiser steps, and the walk continues from the detached x_{t-1}. Only one
UNet call is ever held for backward, so memory does not grow with `generation_steps`.

Everything else (text features, EMA, checkpoint/resume state, logging) is ipl.method.stage2.Stage2Trainer's.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from ipl.generators.diffusion import ddim
from ipl.method.stage2 import Stage2Trainer, memory_mb


class LeanStage2Trainer(Stage2Trainer):
    """Stage2Trainer whose step optimises per DDIM step on the predicted x0 (no layer freezing)."""

    def step(self) -> dict[str, Any]:
        """One iteration = `generation_steps` optimiser steps on one batch; logs the last step's terms."""
        s = self.settings
        t0 = time.perf_counter()
        for p in self.params:
            p.requires_grad_(True)
        latents = self.G_t.sample_latents(s.batch, generator=self.rng, truncation=s.truncation)
        with torch.no_grad(), self.autocast():
            images_s = self.G_s.render(latents)
            src_feats = [c.encode_images(images_s).float() for c in self.clips]
            texts = [tuple(f.float() for f in self._text_features(k, latents)) for k in range(len(self.clips))]
        G = self.G_t
        sums: dict[str, float] = {}
        last: dict[str, torch.Tensor] = {}

        def on_step(k: int, x_next: torch.Tensor, x0_pred: torch.Tensor) -> torch.Tensor:
            terms: dict[str, torch.Tensor] = {}
            with self.autocast():
                total = 0.0
                for i, clip in enumerate(self.clips):
                    total = total + self.clip_loss(i, src_feats[i], clip.encode_images(x0_pred), *texts[i], terms)
                for name, value in G.extra_losses(latents, x0_pred).items():
                    terms[name] = value
                    total = total + value
            terms["total"] = total
            self._check_finite(terms)
            self.opt.zero_grad(set_to_none=True)
            self._optimizer_step(total)
            for name, v in terms.items():
                sums[name] = sums.get(name, 0.0) + float(v.detach())
            last.clear()
            last.update({name: v.detach() for name, v in terms.items()})
            return x_next.detach()

        x_t0 = latents[:, :3]
        with self.autocast():
            ddim.generate(G.eps, x_t0, G.alphas_cumprod, G.generation_path(), on_step=on_step)
        self.ema.update()
        for p in self.params:
            p.requires_grad_(False)
        self.iteration += 1
        n = len(G.generation_path())
        record: dict[str, Any] = {"stage": 2, "it": self.iteration}
        record.update({name: float(v) for name, v in last.items()})
        record.update({f"{name}_mean": value / n for name, value in sums.items()})
        record["layers"] = "all"
        record["opt_steps"] = n
        record["probe_s"] = 0.0
        record["seconds"] = round(time.perf_counter() - t0, 6)
        record["mem_mb"] = memory_mb(self.device)
        return record
