"""Stage-1 (prompt learning) step time, side by side: `python scripts/bench_stage1.py [--clip ViT-B-32:none]`.

Candidates, measured in one run on the same inputs:
- ipl:        ipl.method.stage1 as shipped (fixed texts cached, text path cropped after the last pooled token);
- no_crop:    the spliced text path over the full context (77 tokens for ViT-B-32);
- no_cache:   fixed texts (2 residual prompts + 79 templates) re-encoded every step, as the reference code does.
The generator is a fake (a random linear map to 16 px, upsampled to --resolution): it costs next to nothing, so
the numbers are CLIP + prompt learner time. With ':none' the CLIP has random weights: timing only.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from ipl.core.interface import AdaptableGenerator  # noqa: E402


class FakeGenerator(AdaptableGenerator):
    """W code [N, 512] -> random linear map to 3x16x16 -> bicubic upsample to `resolution`."""

    def __init__(self, code_dim: int = 512, resolution: int = 224):
        super().__init__()
        self.code_dim, self.resolution = code_dim, resolution
        self.net = nn.Linear(code_dim, 3 * 16 * 16)

    def sample_latents(self, n: int, generator: Optional[torch.Generator] = None, truncation: float = 1.0):
        return (torch.randn(n, self.code_dim, generator=generator) * truncation).to(self.net.weight.device)

    def codes(self, latents):
        return latents

    def render(self, latents):
        x = self.net(latents).view(-1, 3, 16, 16)
        return torch.tanh(F.interpolate(x, size=self.resolution, mode="bicubic", align_corners=False))

    def trainable_parameters(self):
        return list(self.parameters())

    def save(self, path, metadata=None):
        raise NotImplementedError


def _time_candidate(name: str, G, clips, args) -> dict:
    import ipl.method.prompts as prompts
    from ipl.method.stage1 import train_prompts

    real_len = prompts._pooled_length
    callback = None
    if name == "no_crop":
        prompts._pooled_length = lambda tokens, tower: tokens.shape[1]
    if name == "no_cache":
        def callback(it, rec):  # the next step finds no cached fixed text
            for c in clips:
                c._text_cache.clear()
        for c in clips:
            c._text_cache.clear()
    try:
        if G.net.weight.is_cuda:
            torch.cuda.synchronize()
        res = train_prompts(G, clips, args.source, args.target, iters=args.iters, batch=args.batch, lr=0.05,
                            seed=0, progress=False, callback=callback)
    finally:
        prompts._pooled_length = real_len
    secs = [h["seconds"] for h in res.history[args.warmup:]]
    return {"step_s_median": statistics.median(secs), "step_s_mean": statistics.fmean(secs),
            "it_per_s": 1.0 / statistics.median(secs), "loss_first": res.history[0]["loss"],
            "loss_last": res.history[-1]["loss"]}


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", action="append", default=None, help="CLIP spec(s) (default ViT-B-32:none)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=6, help="steps per candidate (the first --warmup are dropped)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--resolution", type=int, default=224, help="fake generator output size")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--candidates", default="ipl,no_crop,no_cache")
    ap.add_argument("--source", default="photo")
    ap.add_argument("--target", default="Pixar character")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ipl.method.clip import load_clips

    specs = args.clip or ["ViT-B-32:none"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clips = load_clips(specs, device=args.device)
    torch.manual_seed(0)
    G = FakeGenerator(resolution=args.resolution).to(args.device)
    out: dict = {
        "suite": "stage1", "device": str(args.device),
        "device_name": torch.cuda.get_device_name() if str(args.device).startswith("cuda") else "cpu",
        "torch_threads": torch.get_num_threads(), "clip": specs, "batch": args.batch, "iters": args.iters,
        "resolution": args.resolution,
        "random_weights": [c.random_weights for c in clips],
        "note": ("CLIP with RANDOM weights: timing only" if any(c.random_weights for c in clips) else None),
        "warnings": sorted({str(w.message)[:120] for w in caught}),
        "candidates": {},
    }
    for name in args.candidates.split(","):
        out["candidates"][name] = _time_candidate(name, G, clips, args)
    base = out["candidates"].get("ipl")
    if base:
        out["speedup_vs"] = {name: c["step_s_median"] / base["step_s_median"]
                             for name, c in out["candidates"].items() if name != "ipl"}
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(main(sys.argv[1:]), indent=2))
