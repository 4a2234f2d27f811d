"""Adaptation speed: seconds per stage-1 and stage-2 iteration and peak memory, per precision, side by side.

`python scripts/benchmark.py adapt [--full] [--device auto|cpu|cuda] [--precisions fp32,bf16] [--iters N]`

--full (default on CUDA): StyleGAN2 config-f at 1024 px (random weights), ViT-B-32 (random weights), the paper's
batches (stage 1: 32, stage 2: 2), adaptive freezing k=12 of 18 with an 8-latent probe.
--quick (default on CPU): the same code at --resolution 64 with narrow channels (128) and stage-1 batch 4, so
two CPU cores finish in minutes; the JSON says so under "mode". Candidates run in one process on the same
device; `ratios` compare each precision's iterations/s with the first candidate's (fp32, reference ops).
Weights are random: speed and memory only, never image quality.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from bench_common import peak_mb, reset_peak, sync  # noqa: E402


def _generator(args, device: torch.device):
    from ipl.generators.stylegan2.adapter import StyleGAN2Adapter
    from ipl.generators.stylegan2.network import Generator

    torch.manual_seed(0)
    if args.full:
        G = Generator(img_resolution=args.resolution, channel_multiplier=2)  # config-f
    else:
        G = Generator(img_resolution=args.resolution, channel_max=args.channels, channel_base=args.channels * 32)
    return StyleGAN2Adapter(G.to(device).eval())


def run_candidate(name: str, precision: str, impl: str, G, clips, args, device) -> dict:
    """Time stage 1 and stage 2 for one (precision, ops implementation)."""
    from ipl.method.stage1 import train_prompts
    from ipl.method.stage2 import Stage2Settings, Stage2Trainer, autocast_factory

    if hasattr(G.G, "set_impl"):
        G.G.set_impl(impl)
    autocast = autocast_factory(device, precision)
    out: dict = {"precision": precision, "impl": impl}

    # Stage 1: per-iteration seconds from a run of warmup + iters iterations.
    reset_peak(device)
    n1 = args.warmup + args.iters
    with autocast():
        res = train_prompts(G, clips, "photo", "sketch", iters=n1, batch=args.batch_prompt, progress=False,
                            seed=0)
    sync(device)
    secs = [r["seconds"] for r in res.history[args.warmup:]]
    out["stage1_s_per_it"] = round(statistics.median(secs), 4)
    out["stage1_peak_mb"] = peak_mb(device)

    # Stage 2 with the learners just trained.
    reset_peak(device)
    settings = Stage2Settings(method="ipl", layers=args.layers, precision=precision, seed=0)
    trainer = Stage2Trainer(G, clips, "photo", "sketch", res.learners, settings)
    secs, probe = [], []
    for i in range(n1):
        sync(device)
        t0 = time.perf_counter()
        rec = trainer.step()
        sync(device)
        if i >= args.warmup:
            secs.append(time.perf_counter() - t0)
            probe.append(rec["probe_s"])
    out["stage2_s_per_it"] = round(statistics.median(secs), 4)
    out["stage2_probe_s_per_it"] = round(statistics.median(probe), 4)
    out["stage2_probe_share"] = round(statistics.median(probe) / statistics.median(secs), 3)
    out["stage2_peak_mb"] = peak_mb(device)
    out["est_300_plus_300_s"] = round(300 * (out["stage1_s_per_it"] + out["stage2_s_per_it"]), 1)
    del trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="benchmark.py adapt", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", default=None, help="1024 px config-f (default on CUDA)")
    mode.add_argument("--quick", action="store_true", default=None, help="small config (default on CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--impls", default=None, help="ops implementation per precision, e.g. ref,auto "
                   "[default: ref for fp32, auto for the others]")
    p.add_argument("--clip", default="ViT-B-32:none", help="CLIP spec (random weights by default)")
    p.add_argument("--resolution", type=int, default=None, help="[full: 1024, quick: 64]")
    p.add_argument("--channels", type=int, default=128, help="quick mode: channel width cap")
    p.add_argument("--batch-prompt", type=int, default=None, help="[full: 32, quick: 4]")
    p.add_argument("--layers", type=int, default=None, help="k unfrozen layers [default: floor(2/3 num_ws)]")
    p.add_argument("--iters", type=int, default=None, help="timed iterations [full: 10, quick: 2]")
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    args.full = bool(args.full) or (args.quick is None and device.type == "cuda")
    args.resolution = args.resolution or (1024 if args.full else 64)
    args.batch_prompt = args.batch_prompt or (32 if args.full else 4)
    args.iters = args.iters or (10 if args.full else 2)
    if args.layers is None:
        from ipl.core.config import default_layers

        args.layers = default_layers(args.resolution)
    precisions = args.precisions.split(",")
    impls = args.impls.split(",") if args.impls else ["ref" if pr == "fp32" else "auto" for pr in precisions]
    assert len(impls) == len(precisions), "--impls needs one entry per precision"

    from ipl.method.clip import load_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning: this is timing only
        clips = [load_clip(args.clip, device=str(device))]
    G = _generator(args, device)
    results = {}
    for pr, impl in zip(precisions, impls):
        results[f"{pr}_{impl}"] = run_candidate(f"{pr}_{impl}", pr, impl, G, clips, args, device)
    names = list(results)
    base = results[names[0]]
    ratios = {}
    for n in names[1:]:
        r = results[n]
        ratios[f"{n}_vs_{names[0]}"] = {
            "stage1_speedup": round(base["stage1_s_per_it"] / r["stage1_s_per_it"], 3),
            "stage2_speedup": round(base["stage2_s_per_it"] / r["stage2_s_per_it"], 3),
            "total_speedup": round((base["stage1_s_per_it"] + base["stage2_s_per_it"])
                                   / (r["stage1_s_per_it"] + r["stage2_s_per_it"]), 3),
        }
    return {
        "suite": "adapt",
        "mode": "full (config-f)" if args.full else
                f"quick (NOT the 1024px config-f target: {args.resolution}px, channels<={args.channels}, "
                f"stage-1 batch {args.batch_prompt})",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor()}, "
                  f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "resolution": args.resolution, "clip": args.clip, "weights": "random (speed only)",
        "stage1_batch": args.batch_prompt, "stage2_batch": 2, "layers": args.layers,
        "timed_iters": args.iters, "warmup": args.warmup,
        "results": results, "ratios": ratios,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main(sys.argv[1:]), indent=2))
