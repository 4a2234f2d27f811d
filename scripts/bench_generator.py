"""Generator speed: images/s and peak memory, forward and forward+backward, side by side in one run.

Candidates (same random config-f weights, same W+ batch):
  fused      our default: one grouped conv per layer with per-sample modulated weights
  nonfused   activations scaled by the styles around one shared conv, then demodulated
  per_sample the plain formulation: one sample at a time (batch 1 each), concatenated
  outofplace fused, with the noise map and the ToRGB skip added out of place (the formulation before the in-place
             adds; network.INPLACE_ADDS = False): not a default candidate, ask for it with --candidates
Ratios are fused / other, measured in the same process on the same device.

Usage: python scripts/benchmark.py generator [--resolutions 256,1024 (CPU default: 256)] [--batch N] [--iters N] [--warmup N]
       [--device cpu|cuda] [--impl auto|ref|cuda] [--no-backward] [--candidates fused,nonfused,per_sample]
Weights are random: this measures speed only, never image quality.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from bench_common import peak_mb, reset_peak, sync  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipl.generators.stylegan2.network import Generator  # noqa: E402


def _time(fn: Callable[[], None], device: torch.device, warmup: int, iters: int) -> tuple[float, float]:
    """Seconds per call and peak memory (MiB) over `iters` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    reset_peak(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters, peak_mb(device)


def run_resolution(res: int, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    G = Generator(z_dim=512, w_dim=512, img_resolution=res, mapping_layers=8, channel_base=32768,
                  channel_max=512, impl=args.impl).to(device)
    ws = G.mapping(torch.randn(args.batch, 512, device=device)).detach()

    def synth(mode: str) -> torch.Tensor:
        from ipl.generators.stylegan2 import network

        G.set_fused_modconv(mode != "nonfused")
        if mode == "per_sample":
            return torch.cat([G.synthesis(ws[i: i + 1]) for i in range(ws.shape[0])])
        network.INPLACE_ADDS = mode != "outofplace"
        try:
            return G.synthesis(ws)
        finally:
            network.INPLACE_ADDS = True

    out: dict = {"num_params_synthesis": sum(p.numel() for p in G.synthesis.parameters())}
    # --rounds N: the candidates take turns N times (A B A B ...) and each reports its median, so a machine whose
    # load drifts during the run does not favour whichever candidate ran first.
    times: dict = {mode: {"fwd": [], "fwd_bwd": []} for mode in args.candidates}
    for _ in range(args.rounds):
        for mode in args.candidates:
            def fwd() -> None:
                with torch.no_grad():
                    synth(mode)

            def fwd_bwd() -> None:
                G.zero_grad(set_to_none=True)
                synth(mode).square().mean().backward()

            t, mem = _time(fwd, device, args.warmup, args.iters)
            times[mode]["fwd"].append(t)
            entry = out.setdefault(mode, {})
            entry["forward_img_per_s"] = args.batch / statistics.median(times[mode]["fwd"])
            entry["forward_peak_mb"] = max(entry.get("forward_peak_mb", 0), mem)
            if not args.no_backward:
                t, mem = _time(fwd_bwd, device, args.warmup, args.iters)
                times[mode]["fwd_bwd"].append(t)
                entry["fwd_bwd_img_per_s"] = args.batch / statistics.median(times[mode]["fwd_bwd"])
                entry["fwd_bwd_peak_mb"] = max(entry.get("fwd_bwd_peak_mb", 0), mem)
    G.set_fused_modconv(True)
    if "fused" in args.candidates:
        ratios = {}
        for mode in args.candidates:
            if mode == "fused":
                continue
            for key in ("forward_img_per_s", "fwd_bwd_img_per_s"):
                if key in out[mode]:
                    ratios[f"fused_vs_{mode}_{key.split('_img')[0]}"] = out["fused"][key] / out[mode][key]
        out["speed_ratios"] = ratios
    return out


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="benchmark.py generator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolutions", default=None, help="comma list (default: 256,1024 on GPU; 256 on CPU, "
                        "where one 1024-px config-f pass takes minutes)")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on GPU, 2 on CPU")
    parser.add_argument("--iters", type=int, default=None, help="timed calls (default: 10 on GPU, 1 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: 3 GPU, 1 CPU)")
    parser.add_argument("--impl", default="auto", choices=["auto", "ref", "cuda"])
    parser.add_argument("--no-backward", action="store_true", help="forward only")
    parser.add_argument("--candidates", default="fused,nonfused,per_sample")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--rounds", type=int, default=1, help="candidates take turns this many times (medians)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.batch = args.batch or (8 if gpu else 2)
    args.iters = args.iters or (10 if gpu else 1)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    resolutions = [int(r) for r in (args.resolutions or ("256,1024" if gpu else "256")).split(",")]
    result = {
        "suite": "generator",
        "device": torch.cuda.get_device_name(device) if gpu else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "impl": args.impl,
        "batch": args.batch, "iters": args.iters, "warmup": args.warmup,
        "config": "StyleGAN2 config-f (channel_base 32768, channel_max 512, 8-layer mapping), random weights",
        "memory_note": "peak_mb is torch.cuda.max_memory_allocated on GPU, process peak RSS (VmHWM) on CPU",
        "results": {},
    }
    for res in resolutions:
        result["results"][str(res)] = run_resolution(res, args, device)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(main(sys.argv[1:]), indent=2))
