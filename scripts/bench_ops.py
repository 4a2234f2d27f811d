"""Benchmark of the custom ops, `python scripts/benchmark.py ops [options]`.

Each op alone (forward, and forward+backward) at the sizes a 1024 px StyleGAN2 meets, and the config-f
generator's synthesis forward+backward, for three candidates measured side by side in one run:
`cuda` (our kernels), `ref` (the reference PyTorch path) and `compile` (torch.compile of the reference).
Ratios are ref/cuda and compile/cuda time (above 1 means the CUDA kernels are faster). On a machine without
a GPU or without a working build, the `cuda` candidate is reported as absent with the reason, and the
remaining candidates run at reduced sizes. Generator weights are random: these are speed numbers only.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from bench_common import sync  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipl import cuda_ops  # noqa: E402
from ipl.cuda_ops import _build  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def time_ms(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> tuple[float, float]:
    """(median ms per call, seconds spent in warm-up, which includes any compilation)."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    warm_s = time.perf_counter() - start
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), warm_s


def _op_cases(device: torch.device, dtype: torch.dtype, batch: int, scale: int) -> dict[str, Callable]:
    """name -> make(impl) -> (forward-only fn, forward+backward fn). Sizes are those of a 1024 px
    generator divided by `scale` in each spatial dimension."""
    f = cuda_ops.setup_filter([1, 3, 3, 1], device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape):
        return torch.randn(shape, generator=gen, device=device, dtype=dtype)

    def case(make_inputs, op):
        def make(impl):
            xs = make_inputs()

            def fwd():
                with torch.no_grad():
                    return op(impl, *xs)

            def fwd_bwd():
                ins = [t.detach().requires_grad_(True) for t in xs]
                op(impl, *ins).float().square().mean().backward()

            return fwd, fwd_bwd
        return make

    r = 1024 // scale
    return {
        # bias + lrelu + gain + clamp after a 3x3 conv at 512 px (64 channels in config-f)
        f"bias_act_lrelu_clamp[{batch},64,{r // 2},{r // 2}]": case(
            lambda: (rand(batch, 64, r // 2, r // 2), rand(64)),
            lambda impl, x, b: cuda_ops.bias_act(x, b, act="lrelu", clamp=256.0, impl=impl)),
        # the FIR after the stride-2 transposed conv: 4x4 filter on [N, 64, 2*256+1, 2*256+1]
        f"upfirdn2d_fir4x4[{batch},64,{r // 2 + 1},{r // 2 + 1}]": case(
            lambda: (rand(batch, 64, r // 2 + 1, r // 2 + 1),),
            lambda impl, x: cuda_ops.upfirdn2d(x, f, padding=[1, 1, 1, 1], gain=4, impl=impl)),
        # skip-architecture image upsampling, 512 -> 1024
        f"upsample2d[{batch},3,{r // 2},{r // 2}]": case(
            lambda: (rand(batch, 3, r // 2, r // 2),),
            lambda impl, x: cuda_ops.upsample2d(x, f, impl=impl)),
        # anti-aliased 2x downsampling (discriminator-style), 64 channels at 512 px
        f"downsample2d[{batch},64,{r // 2},{r // 2}]": case(
            lambda: (rand(batch, 64, r // 2, r // 2),),
            lambda impl, x: cuda_ops.downsample2d(x, f, impl=impl)),
    }


def _candidates(requested: list[str], cuda_ok: bool) -> list[str]:
    return [c for c in requested if c != "cuda" or cuda_ok]


def _ratios(row: dict, base: str = "cuda") -> dict:
    out = {}
    if f"{base}_ms" in row:
        for other in ("ref", "compile"):
            if f"{other}_ms" in row:
                out[f"{other}_over_{base}"] = round(row[f"{other}_ms"] / row[f"{base}_ms"], 3)
    if "ref_ms" in row and "compile_ms" in row:
        out["ref_over_compile"] = round(row["ref_ms"] / row["compile_ms"], 3)
    return out


def bench_ops(device, dtype, batch, scale, candidates, iters, warmup) -> dict:
    results = {}
    for name, make in _op_cases(device, dtype, batch, scale).items():
        row: dict = {}
        for cand in candidates:
            fwd, fwd_bwd = make("ref" if cand == "compile" else cand)
            if cand == "compile":
                fwd, fwd_bwd = torch.compile(fwd), torch.compile(fwd_bwd)
            for label, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
                ms, warm_s = time_ms(fn, device, iters, warmup)
                row.setdefault(label, {})[f"{cand}_ms"] = round(ms, 4)
                if cand == "compile":
                    row[label]["compile_warmup_s"] = round(warm_s, 1)
        for label in ("fwd", "fwd_bwd"):
            row[label].update(_ratios(row[label]))
        results[name] = row
    return results


def bench_generator(device, dtype, batch, resolution, candidates, iters, warmup) -> dict:
    """Synthesis forward + backward (to the weights) of a config-f generator with random weights."""
    try:
        from ipl.generators.stylegan2 import Generator
    except Exception as exc:  # the network lives in another part of the project
        return {"skipped": f"ipl.generators.stylegan2 unavailable: {exc}"}
    torch.manual_seed(0)
    G = Generator(img_resolution=resolution).to(device)
    G.requires_grad_(True)
    with torch.no_grad():
        ws = G.mapping(torch.randn([batch, G.z_dim], device=device))
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else None
    row: dict = {"resolution": resolution, "batch": batch, "num_ws": G.num_ws,
                 "params_M": round(sum(p.numel() for p in G.synthesis.parameters()) / 1e6, 2)}
    for cand in candidates:
        G.set_impl("ref" if cand == "compile" else cand)
        synth = torch.compile(G.synthesis) if cand == "compile" else G.synthesis

        def step():
            G.zero_grad(set_to_none=True)
            if autocast is not None:
                with autocast:
                    img = synth(ws)
            else:
                img = synth(ws)
            img.float().square().mean().backward()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ms, warm_s = time_ms(step, device, iters, warmup)
        row[f"{cand}_ms"] = round(ms, 3)
        if cand == "compile":
            row["compile_warmup_s"] = round(warm_s, 1)
        if device.type == "cuda":
            row[f"{cand}_peak_GB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    row.update(_ratios(row))
    G.set_impl("auto")
    return row


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="benchmark.py ops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="op inputs' dtype; the generator runs under autocast for float16/bfloat16")
    parser.add_argument("--batch", type=int, default=None, help="default 4 on GPU, 1 on CPU")
    parser.add_argument("--resolution", type=int, default=None, help="generator size; default 1024 on GPU, 64 on CPU")
    parser.add_argument("--op-scale", type=int, default=None,
                        help="divide the ops' 1024 px sizes by this; default 1 on GPU, 8 on CPU")
    parser.add_argument("--iters", type=int, default=None, help="timed calls per candidate; default 20 GPU, 3 CPU")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--candidates", default="cuda,ref,compile", help="comma list of cuda, ref, compile")
    parser.add_argument("--no-generator", action="store_true", help="skip the generator step")
    parser.add_argument("--no-ops", action="store_true", help="skip the single-op timings")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch or (4 if gpu else 1)
    resolution = args.resolution or (1024 if gpu else 64)
    scale = args.op_scale or (1 if gpu else 8)
    iters = args.iters or (20 if gpu else 3)
    dtype = DTYPES[args.dtype]
    requested = [c.strip() for c in args.candidates.split(",") if c.strip()]
    for c in requested:
        if c not in ("cuda", "ref", "compile"):
            parser.error(f"unknown candidate {c!r}")

    notes = []
    status = _build.build_status(build_now=gpu, device=device if gpu else None)
    cuda_ok = gpu and bool(status.get("available")) and status.get("forced_impl") != "ref"
    if "cuda" in requested and not cuda_ok:
        why = ("no GPU on this machine" if not gpu else
               "IPL_CUDA_OPS=ref forces the reference" if status.get("forced_impl") == "ref" else status["reason"])
        notes.append(f"cuda candidate absent: {why}")
    candidates = _candidates(requested, cuda_ok)
    if not gpu:
        notes.append(f"CPU run: reduced sizes (ops at 1/{scale} of 1024 px, generator at {resolution} px)")

    out: dict = {
        "suite": "ops",
        "device": torch.cuda.get_device_name(device) if gpu else "cpu",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "candidates": candidates,
        "cuda_ops": {k: status.get(k) for k in ("available", "reason", "arch", "cache_dir", "forced_impl")},
        "timing": f"median of {iters} calls after {args.warmup} warm-up calls; ms",
        "notes": notes,
    }
    if not candidates:
        return out
    if not args.no_ops:
        out["ops"] = bench_ops(device, dtype, batch, scale, candidates, iters, args.warmup)
    if not args.no_generator:
        out["generator_fwd_bwd"] = bench_generator(device, dtype, batch, resolution, candidates, iters,
                                                   args.warmup)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(main(sys.argv[1:]), indent=2))
