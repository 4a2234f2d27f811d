"""Adaptation speed: seconds per stage-1 and stage-2 iteration and peak memory, per precision, side by side.

`python scripts/benchmark.py adapt [--full] [--device auto|cpu|cuda] [--precisions fp32,bf16] [--iters N]
                                   [--compile] [--probes reference,grad] [--channels-last]`

--full (default on CUDA): StyleGAN2 config-f at 1024 px (random weights), ViT-B-32 (random weights), the paper's
batches (stage 1: 32, stage 2: 2), adaptive freezing k=12 of 18 with an 8-latent probe.
--quick (default on CPU): the same code at --resolution 64 with narrow channels (128) and stage-1 batch 4, so
two CPU cores finish in minutes; the JSON says so under "mode". Candidates run in one process on the same
device; `ratios` compare each precision's iterations/s with the first candidate's (fp32, reference ops).
--compile adds, for each precision, the same candidate with `--compile` (torch.compile of the stage-2 renders and
the CLIP image encoder); --probes adds one candidate per layer probe (`--probe`); --channels-last adds candidates
with the generator and CLIP in channels_last memory format. Candidates that differ only there share stage 1
(it does not depend on them: measured once, with the first). The first stage-2 step of each candidate
(compilation, first CUDA-ops build) is reported as `stage2_first_step_s`, not timed.
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


_STAGE1: dict = {}  # (precision, impl, channels_last) -> (stage-1 result, its numbers): shared by candidates


def _memory_format(G, clips, channels_last: bool) -> None:
    """Generator and CLIP weights in channels_last (True) or contiguous memory format."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for module in [G] + list(clips):
        for p in module.parameters():
            if p.ndim == 4:
                p.data = p.data.contiguous(memory_format=fmt)


def run_candidate(name: str, precision: str, impl: str, G, clips, args, device, probe: str = "reference",
                  compile: bool = False, channels_last: bool = False) -> dict:
    """Time stage 1 and stage 2 for one (precision, ops implementation, probe, compile, memory format)."""
    from ipl.method.stage1 import train_prompts
    from ipl.method.stage2 import Stage2Settings, Stage2Trainer, autocast_factory

    if hasattr(G.G, "set_impl"):
        G.G.set_impl(impl)
    _memory_format(G, clips, channels_last)
    autocast = autocast_factory(device, precision)
    out: dict = {"precision": precision, "impl": impl, "probe": probe, "compile": compile,
                 "channels_last": channels_last}

    # Stage 1: per-iteration seconds from a run of warmup + iters iterations (once per precision/ops/format).
    n1 = args.warmup + args.iters
    key = (precision, impl, channels_last)
    if key not in _STAGE1:
        reset_peak(device)
        with autocast():
            res = train_prompts(G, clips, "photo", "sketch", iters=n1, batch=args.batch_prompt, progress=False,
                                seed=0)
        sync(device)
        secs = [r["seconds"] for r in res.history[args.warmup:]]
        _STAGE1[key] = (res, {"stage1_s_per_it": round(statistics.median(secs), 4),
                              "stage1_peak_mb": peak_mb(device)})
    res, stage1 = _STAGE1[key]
    out.update(stage1)

    # Stage 2 with the learners just trained.
    reset_peak(device)
    settings = Stage2Settings(method="ipl", layers=args.layers, precision=precision, seed=0, probe=probe,
                              compile=compile)
    trainer = Stage2Trainer(G, clips, "photo", "sketch", res.learners, settings)
    secs, probe_s = [], []
    # Compiled candidates compile once per input shape: the probe's batch, stage 2's batch (first step), and
    # with the grad probe, the render from W+ (second step): at least two untimed steps for them.
    warmup = max(args.warmup, 2 if compile else args.warmup)
    for i in range(warmup + args.iters):
        sync(device)
        t0 = time.perf_counter()
        rec = trainer.step()
        sync(device)
        if i == 0:
            out["stage2_first_step_s"] = round(time.perf_counter() - t0, 3)
        if i >= warmup:
            secs.append(time.perf_counter() - t0)
            probe_s.append(rec["probe_s"])
    out["stage2_s_per_it"] = round(statistics.median(secs), 4)
    # Mean, not median: with a probe every --layer-every steps most steps have none.
    out["stage2_probe_s_per_it"] = round(statistics.mean(probe_s), 4)
    out["stage2_probe_share"] = round(statistics.mean(probe_s) / statistics.mean(secs), 3)
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
    p.add_argument("--compile", action="store_true", help="also each precision with --compile (side by side)")
    p.add_argument("--probes", default="reference", help="layer probes to compare, e.g. reference,grad")
    p.add_argument("--channels-last", action="store_true", help="also each candidate in channels_last format")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--candidates", default=None, help="explicit list instead of the product of the options above: "
                   "PRECISION:IMPL:PROBE[:compiled][:channels_last],... e.g. fp32:ref:reference,bf16:auto:grad:compiled")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

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
    _STAGE1.clear()
    if args.candidates:
        plan = []
        for spec in args.candidates.split(","):
            parts = spec.strip().split(":")
            assert len(parts) >= 3 and set(parts[3:]) <= {"compiled", "channels_last"}, f"bad candidate {spec!r}"
            plan.append((parts[0], parts[1], parts[2], "compiled" in parts[3:], "channels_last" in parts[3:]))
    else:
        plan = [(pr, impl, probe, comp, cl) for pr, impl in zip(precisions, impls) for probe in args.probes.split(",")
                for comp in ([False, True] if args.compile else [False])
                for cl in ([False, True] if args.channels_last else [False])]
    for pr, impl, probe, comp, cl in plan:
        name = f"{pr}_{impl}" + (f"_{probe}" if probe != "reference" else "") + ("_compiled" if comp else "") \
            + ("_channels_last" if cl else "")
        results[name] = run_candidate(name, pr, impl, G, clips, args, device, probe=probe, compile=comp,
                                      channels_last=cl)
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
        "timed_iters": args.iters, "warmup": args.warmup, "command": "scripts/benchmark.py adapt " + " ".join(argv),
        "results": results, "ratios": ratios,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main(sys.argv[1:]), indent=2))
