"""Diffusion stage-2 speed: seconds per training step and peak memory, three modes side by side.

    python scripts/benchmark.py diffusion [--full | --quick] [--steps 3] [--batch 1] [--gen-steps 6]
                                          [--clip ViT-B-32:none] [--device auto]

Modes, each a stage-2 step of the NADA directional loss + L1 on the same random batch:
  chain      backprop through all `gen-steps` DDIM steps from x_t0 (no checkpointing)
  chain_ckpt the same with each UNet call recomputed in backward (default training mode)
  lean       DiffusionCLIP's efficient mode: loss on each step's predicted x0, optimiser step per DDIM step

--full (default on a GPU): a random UNet of the google/ddpm-ema-celebahq-256 configuration at 256 px and a
random ViT-B-32 CLIP. --quick (default on CPU): the same layout with a quarter of the channels at 64 px and
a tiny CLIP, because the full model takes minutes per step on a shared CPU; the output says which ran.
Random weights: timings only, never quality numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY_CLIP = {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


def unet_config(quick: bool) -> dict:
    from ipl.generators.diffusion.checkpoint import CELEBAHQ_UNET_CONFIG

    cfg = dict(CELEBAHQ_UNET_CONFIG)
    if quick:
        cfg.update(sample_size=64, block_out_channels=[c // 4 for c in cfg["block_out_channels"]], norm_num_groups=8)
    return cfg


def load_clip_for(spec: str, quick: bool, device: torch.device):
    import warnings

    from ipl.method.clip import RandomWeightsWarning, load_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # timing only: random weights are expected
        if spec != "tiny":
            return load_clip(spec, device=device)
        folder = Path(tempfile.mkdtemp(prefix="bench_clip_"))
        (folder / "tiny.json").write_text(json.dumps(TINY_CLIP))
        return load_clip(f"{folder / 'tiny.json'}:none", device=device)


def run_mode(mode: str, source, clips, args, device: torch.device) -> dict:
    from ipl.generators.diffusion.train import LeanStage2Trainer
    from ipl.method.stage2 import Stage2Settings, Stage2Trainer

    source.config.lean = mode == "lean"
    source.config.checkpointing = mode == "chain_ckpt"
    settings = Stage2Settings(method="nada", iters=args.steps + 1, batch=args.batch, lr=4e-6, beta1=0.9,
                              beta2=0.999, seed=0)
    cls = LeanStage2Trainer if mode == "lean" else Stage2Trainer
    trainer = cls(source, clips, "photo", "pencil sketch", None, settings)
    trainer.step()  # warm-up (allocator, kernels, cached texts)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        rec = trainer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out = {"s_per_step": round((time.perf_counter() - t0) / args.steps, 4), "loss": round(rec["total"], 5),
           "opt_steps_per_step": rec.get("opt_steps", 1)}
    if device.type == "cuda":
        out["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    del trainer
    return out


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="benchmark.py diffusion", description=__doc__.splitlines()[0])
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="CelebA-HQ UNet at 256 px (default on GPU)")
    size.add_argument("--quick", action="store_true", help="quarter-width UNet at 64 px (default on CPU)")
    ap.add_argument("--steps", type=int, default=3, help="timed stage-2 steps per mode (after 1 warm-up)")
    ap.add_argument("--batch", type=int, default=1, help="images per step")
    ap.add_argument("--gen-steps", type=int, default=6, help="DDIM generation steps from t0")
    ap.add_argument("--clip", default=None, help="CLIP spec [ViT-B-32:none full, tiny quick]")
    ap.add_argument("--modes", default="chain,chain_ckpt,lean")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: several threads on a busy 2-core machine are far slower)")
    args = ap.parse_args(argv)

    from ipl.generators.diffusion.adapter import DiffusionAdapter, DiffusionConfig, SourcePool
    from ipl.generators.diffusion.checkpoint import DDPM_SCHEDULER_CONFIG, make_unet

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    quick = args.quick or (not args.full and device.type != "cuda")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    cfg = unet_config(quick)
    torch.manual_seed(0)
    unet = make_unet(cfg).to(device)
    clip_spec = args.clip or ("tiny" if quick else "ViT-B-32:none")
    clips = [load_clip_for(clip_spec, quick, device)]
    res = cfg["sample_size"]
    source = DiffusionAdapter(unet, DDPM_SCHEDULER_CONFIG,
                              DiffusionConfig(t0=500, generation_steps=args.gen_steps, l1_weight=0.3),
                              code_encoder=clips[0])
    g = torch.Generator().manual_seed(0)
    n = max(2, args.batch)
    source.set_pool(SourcePool(images=(torch.rand(n, 3, res, res, generator=g) * 2 - 1).to(device),
                               inverted=torch.randn(n, 3, res, res, generator=g).to(device), origin="random"))
    result = {
        "suite": "diffusion", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "quick": quick,
        "note": ("quick: quarter-width UNet at 64 px and a tiny CLIP (CPU); run --full on a GPU for the real size"
                 if quick else "full: random UNet of the google/ddpm-ema-celebahq-256 configuration, 256 px"),
        "resolution": res, "unet_params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 2),
        "threads": args.threads if device.type == "cpu" else None, "clip": clip_spec, "batch": args.batch, "generation_steps": args.gen_steps, "torch": torch.__version__,
        "random_weights": True, "modes": {},
    }
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            result["modes"][mode] = run_mode(mode, source, clips, args, device)
        except torch.cuda.OutOfMemoryError:
            result["modes"][mode] = {"error": "out of memory"}
    modes = result["modes"]
    if "chain" in modes and "s_per_step" in modes["chain"]:
        for m in ("chain_ckpt", "lean"):
            if m in modes and "s_per_step" in modes[m]:
                modes[m]["time_vs_chain"] = round(modes[m]["s_per_step"] / modes["chain"]["s_per_step"], 3)
                if "peak_mem_mb" in modes[m] and "peak_mem_mb" in modes["chain"]:
                    modes[m]["mem_vs_chain"] = round(modes[m]["peak_mem_mb"] / modes["chain"]["peak_mem_mb"], 3)
    if device.type != "cuda":
        from ipl.method.stage2 import memory_mb

        result["process_peak_rss_mb"] = memory_mb(device)
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
