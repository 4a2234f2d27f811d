"""One prepared check for the day a GPU is lent: `python scripts/gpu_check.py [--out FILE] [--budget-s 450]`.

In under 8 minutes on one H100/H200 it
1. builds the CUDA ops (or loads the cached build) and checks them against the reference (ipl.cuda_ops.verify),
2. runs the GPU tests (`pytest -m gpu tests/test_cuda_ops_gpu.py`),
3. benchmarks the ops (`scripts/benchmark.py ops`: CUDA kernels vs reference vs torch.compile, 1024 px generator),
4. benchmarks `adapt` at 1024 px config-f with ViT-B-32 (random weights): fp32 + reference ops, bf16 + CUDA ops,
   bf16 + CUDA ops with `--probe grad`, and bf16 + CUDA ops `--compile`, side by side,
and writes one JSON (to --out, default $OUT/gpu_check.json, else ./gpu_check.json) that answers the targets:
stage 1 + stage 2 (300 + 300 iterations) under 60 s, peak GPU memory under 10 GB, bf16 + CUDA ops at least 2x
the iterations/s of fp32 + reference ops. Every step runs in its own process with a share of the time budget; a
step that fails or runs out of time is recorded as such and the next one still runs. The JSON is rewritten after
every step, so a kill leaves the steps done so far.

`--dry-run` runs the same steps at toy sizes on whatever device there is (CPU included), so a test can check that
the script works: its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GB = 1024.0  # MiB per GiB

# adapt candidates: PRECISION:IMPL:PROBE[:compiled] (scripts/bench_adapt.py --candidates)
ADAPT_CANDIDATES = "fp32:ref:reference,bf16:auto:reference,bf16:auto:grad,bf16:auto:reference:compiled"


def _write(path: Path, report: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)


def _run(cmd: list[str], timeout: float) -> dict:
    """Run a command; rc, seconds, the parsed JSON of its stdout (when it is JSON), the tail of its output."""
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(1.0, timeout), env=env)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = "timeout"
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    out: dict = {"command": " ".join(cmd[1:]) if cmd[0] == sys.executable else " ".join(cmd), "rc": rc,
                 "seconds": round(time.perf_counter() - t0, 1)}
    try:
        out["result"] = json.loads(stdout)
    except ValueError:
        out["stdout_tail"] = stdout[-2000:]
    if rc != 0:
        out["stderr_tail"] = stderr[-3000:]
    return out


def _targets(adapt: dict) -> dict:
    """The section-8 targets, answered from the adapt benchmark's numbers (None where a number is missing)."""
    results = (adapt.get("result") or {}).get("results") or {}
    base, fast = results.get("fp32_ref"), results.get("bf16_auto")
    out: dict = {}
    done = {k: v for k, v in results.items() if "est_300_plus_300_s" in v}
    if done:
        best = min(done, key=lambda k: done[k]["est_300_plus_300_s"])
        peak = max(done[best].get("stage1_peak_mb", 0), done[best].get("stage2_peak_mb", 0))
        out["fastest_candidate"] = best
        out["both_stages_s"] = done[best]["est_300_plus_300_s"]
        out["both_stages_under_60s"] = done[best]["est_300_plus_300_s"] < 60
        out["peak_gb"] = round(peak / GB, 2)
        out["peak_under_10gb"] = peak / GB < 10
    if base and fast:
        speedup = (base["stage1_s_per_it"] + base["stage2_s_per_it"]) / (fast["stage1_s_per_it"] + fast["stage2_s_per_it"])
        out["bf16_cuda_vs_fp32_ref_speedup"] = round(speedup, 3)
        out["bf16_cuda_at_least_2x"] = speedup >= 2
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="JSON file [default: $OUT/gpu_check.json, else ./gpu_check.json]")
    p.add_argument("--budget-s", type=float, default=450.0, help="time for all steps together (default 7.5 min)")
    p.add_argument("--dry-run", action="store_true", help="toy sizes on any device (CPU too): checks the script")
    p.add_argument("--skip", default="", help="steps to leave out: build,tests,ops,adapt")
    p.add_argument("--candidates", default=ADAPT_CANDIDATES, help="adapt candidates (bench_adapt --candidates)")
    p.add_argument("--adapt-iters", type=int, default=None, help="timed iterations per adapt candidate [5; dry: 1]")
    p.add_argument("--clip", default=None, help="adapt's CLIP spec [ViT-B-32:none (random); dry: toy]")
    args = p.parse_args(argv)
    out_path = Path(args.out) if args.out else Path(os.environ.get("OUT") or ".") / "gpu_check.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    py = sys.executable
    start = time.perf_counter()

    import torch

    gpu = torch.cuda.is_available()
    report: dict = {
        "script": "scripts/gpu_check.py " + " ".join(argv), "dry_run": args.dry_run, "budget_s": args.budget_s,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if gpu else "cpu (no GPU: nothing here answers a GPU target)",
        "steps": {},
    }
    if gpu:
        props = torch.cuda.get_device_properties(0)
        report["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
    _write(out_path, report)

    # Shares of the budget, in order; each step may also use what the earlier ones left.
    shares = {"build": 0.3, "tests": 0.1, "ops": 0.15, "adapt": 0.45}
    steps: dict[str, list[str]] = {
        "build": [py, "-m", "ipl.cuda_ops", "--build"],
        "tests": [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_cuda_ops_gpu.py"],
        "ops": [py, "scripts/benchmark.py", "ops"] + (
            ["--resolution", "16", "--batch", "1", "--iters", "1", "--warmup", "1", "--op-scale", "16",
             "--candidates", "cuda,ref"] if args.dry_run else []),
        "adapt": [py, "scripts/benchmark.py", "adapt", "--candidates", args.candidates] + (
            ["--quick", "--resolution", "16", "--channels", "16", "--clip", args.clip or "toy", "--batch-prompt", "2",
             "--iters", str(args.adapt_iters or 1), "--warmup", "0", "--device", "cuda" if gpu else "cpu"]
            if args.dry_run else ["--full", "--iters", str(args.adapt_iters or 5), "--warmup", "1",
                                  "--clip", args.clip or "ViT-B-32:none"]),
    }
    used = 0.0
    for name, cmd in steps.items():
        if name in skip:
            report["steps"][name] = {"skipped": "--skip"}
            continue
        left = args.budget_s - (time.perf_counter() - start)
        names = list(shares)
        cumulative = sum(shares[s] for s in names[:names.index(name) + 1]) * args.budget_s
        allowed = min(left, cumulative - used)  # its share plus what earlier steps left unused
        if allowed < 5:
            report["steps"][name] = {"skipped": f"out of time ({left:.0f} s left of {args.budget_s:.0f})"}
            _write(out_path, report)
            continue
        res = _run(cmd, allowed)
        res["timeout_s"] = round(allowed, 1)
        used += res["seconds"]
        report["steps"][name] = res
        if name == "adapt":
            report["targets"] = _targets(res)
            if args.dry_run or not gpu:
                report["targets"]["note"] = "not a GPU run at the target size: these answers mean nothing"
        _write(out_path, report)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["ok"] = all(s.get("rc") == 0 for s in report["steps"].values() if "rc" in s)
    _write(out_path, report)
    print(json.dumps({"out": str(out_path), "seconds": report["seconds"], "ok": report["ok"],
                      "steps": {k: v.get("rc", v.get("skipped")) for k, v in report["steps"].items()},
                      "targets": report.get("targets")}, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
