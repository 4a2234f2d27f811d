"""Stage 1 of IPL: learn one prompt learner per CLIP model with the generator frozen."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ipl.core import distributed as dist
from ipl.core.config import AdaptConfig
from ipl.core.errors import IPLError
from ipl.core.interface import AdaptableGenerator
from ipl.method.losses import contrastive_loss, domain_regularizer
from ipl.method.noise import training_noise
from ipl.method.prompts import FIXED_TEMPLATE, PromptLearner
from ipl.method.templates import template_features

_D = AdaptConfig()  # the defaults live in the run config


@dataclass
class Stage1Result:
    """The trained prompt learners (one per CLIP model, same order) and one history record per iteration."""

    learners: list[PromptLearner]
    history: list[dict] = field(default_factory=list)


def stage1_losses(clip, learner: PromptLearner, images: torch.Tensor, codes: torch.Tensor, source_text: str,
                  target_text: str, lambda_l: float = 1.0, lambda_src: float = 0.0,
                  image_feats: Optional[torch.Tensor] = None, gather: bool = False) -> dict[str, torch.Tensor]:
    """The stage-1 loss terms of one CLIP model: contrastive, domain (target), domain (source), total.

    gather (data-parallel): `images`/`codes` are this rank's slice; the terms are those of the whole batch, every
    rank's features gathered (only this rank's own rows carry its gradient: sum the gradients over the ranks).
    """
    if image_feats is None:
        with torch.no_grad():
            image_feats = clip.encode_images(images)
    image_feats = F.normalize(image_feats.float(), dim=-1)
    B = codes.shape[0]
    # Source and target prompts in one text-encoder pass.
    ctx = learner(codes)
    fixed = clip.encode_texts([FIXED_TEMPLATE.format(source_text), FIXED_TEMPLATE.format(target_text)]).float()
    spliced = clip.encode_prompts(torch.cat([ctx, ctx]), [source_text] * B + [target_text] * B).float()
    t_src = F.normalize(spliced[:B] + fixed[0:1], dim=-1)
    t_tgt = F.normalize(spliced[B:] + fixed[1:2], dim=-1)
    if gather:  # the contrastive loss couples the whole batch: every rank's rows, in rank order
        image_feats, t_src, t_tgt = (dist.gather_with_grad(x) for x in (image_feats, t_src, t_tgt))
    l_c = contrastive_loss(image_feats, t_src, clip.logit_scale)
    l_d = domain_regularizer(t_tgt, template_features(clip, target_text))
    terms = {"contrastive": l_c, "domain": l_d}
    total = l_c + lambda_l * l_d
    if lambda_src:
        l_s = domain_regularizer(t_src, template_features(clip, source_text))
        terms["domain_src"] = l_s
        total = total + lambda_l * lambda_src * l_s
    terms["loss"] = total
    return terms


def _local_share(latents: torch.Tensor, generator: AdaptableGenerator, noise: str,
                 noise_rng: torch.Generator) -> torch.Tensor:
    """Data-parallel: this rank's slice of the whole batch; noise "random" from this step's per-rank stream."""
    n, r = dist.world_size(), dist.rank()
    if latents.shape[0] % n:
        raise IPLError(f"data-parallel: a batch of {latents.shape[0]} cannot be split evenly over {n} processes; "
                       f"use a multiple of {n}")
    size = latents.shape[0] // n
    if noise == "random":
        seeds = torch.randint(0, 2**62, (n,), generator=noise_rng)
        generator.set_noise_mode("random", torch.Generator(device="cpu").manual_seed(int(seeds[r])))
    return latents[r * size:(r + 1) * size]


def train_prompts(generator: AdaptableGenerator, clips: Sequence, source_text: str, target_text: str,
                  iters: int = _D.iters_prompt, batch: int = _D.batch_prompt, lr: float = _D.lr_prompt,
                  n_ctx: int = _D.n_ctx, lambda_l: float = _D.lambda_l, lambda_src: float = _D.lambda_src,
                  truncation: float = 1.0, seed: int = _D.seed, progress: bool = True,
                  callback: Optional[Callable[[int, dict], None]] = None, noise: str = _D.noise,
                  data_parallel: bool = False) -> Stage1Result:
    """Train one PromptLearner per CLIP model (Adam on the learners only; generator and CLIPs frozen).

    noise: "random" renders every batch with fresh per-layer noise from a generator seeded with seed + 3 (as the
    IPL reference); "fixed" with the generator's stored noise set.
    data_parallel (under torchrun): `batch` is split evenly over the processes; each renders and encodes its slice
    of the batch every rank draws alike, the losses are the whole batch's (features gathered), gradients summed.
    Per-pixel noise ("random") comes from a per-rank stream seeded from the shared one for each step.
    """
    if not clips:
        raise ValueError("train_prompts needs at least one CLIP model")
    device = clips[0].device
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise_rng = torch.Generator(device="cpu").manual_seed(int(seed) + 3)
    with torch.random.fork_rng(devices=[]):  # seeded learner initialisation, global RNG left alone
        torch.manual_seed(int(seed))
        learners = [PromptLearner(generator.code_dim, n_ctx=n_ctx, ctx_dim=c.ctx_dim) for c in clips]
    learners = [m.to(device) for m in learners]
    params = [p for m in learners for p in m.parameters()]
    parallel = data_parallel and dist.active()
    opt = torch.optim.Adam(params, lr=lr)
    # Fixed texts (two residual prompts, 79 templates per domain) are encoded once here and cached by each clip.
    for c in clips:
        template_features(c, target_text)
        if lambda_src:
            template_features(c, source_text)

    history: list[dict] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=iters, desc="stage 1 (prompts)", leave=False)
    for it in range(iters):
        t0 = time.perf_counter()
        with torch.no_grad(), training_noise([generator], noise, noise_rng):
            latents = generator.sample_latents(batch, generator=gen, truncation=truncation)
            if parallel:
                latents = _local_share(latents, generator, noise, noise_rng)
            images = generator.render(latents)
            codes = generator.codes(latents).detach().float().to(device)
        total = 0.0
        record: dict = {"iter": it}
        for k, (clip, learner) in enumerate(zip(clips, learners)):
            terms = stage1_losses(clip, learner, images.to(device), codes, source_text, target_text,
                                  lambda_l=lambda_l, lambda_src=lambda_src, gather=parallel)
            total = total + clip.weight * terms["loss"]
            suffix = "" if len(clips) == 1 else f"/{k}"
            record.update({f"{name}{suffix}": float(v.detach()) for name, v in terms.items() if name != "loss"})
        opt.zero_grad(set_to_none=True)
        total.backward()
        if parallel:
            dist.all_reduce_grads(params, op="sum")
        opt.step()
        record["loss"] = float(total.detach())
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        if callback is not None:
            callback(it, record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
    if bar is not None:
        bar.close()
    for m in learners:
        m.eval().requires_grad_(False)
    return Stage1Result(learners=learners, history=history)
