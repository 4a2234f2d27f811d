"""Scaling over processes: seconds per data-parallel stage-2 step and sharded-eval images/s for 1..N processes.

`python scripts/benchmark.py scale [--nproc N] [--device auto|cpu|cuda] [--full] [--batch B] [--iters N]
                                   [--eval-n N] [--clip SPEC]`

Each process count P runs under torchrun (`python -m torch.distributed.run --standalone --nproc_per_node P`), the
way `torchrun -m ipl adapt --data-parallel` / `-m ipl eval` run: NCCL on GPUs (one per process), gloo on CPUs. The
global stage-2 batch B is fixed (strong scaling: each process takes B / P, so P must divide B; others are skipped),
and so is the number of eval samples. Efficiency = (time with 1 process) / (P x time with P): 1.0 is perfect.
--full (default on CUDA): StyleGAN2 config-f at 1024 px and ViT-B-32, B = 2 per process at the largest P, NADA's
stage 2 with k=12 of 18 layers re-picked every 4 steps. On a CPU (the default there): 64 px, narrow channels, the
toy CLIP, one thread per process (P processes use P cores); the processes share one machine's cores and memory
bandwidth, so the CPU numbers check the machinery, not the speed-up a GPU cluster gets (the JSON's "note").
Weights are random: speed only, never image quality.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark.py scale")
    p.add_argument("--nproc", type=int, default=None, help="largest process count [GPUs visible, or 2 on a CPU]")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--full", action="store_true", default=None, help="1024 px config-f + ViT-B-32 [CUDA default]")
    p.add_argument("--quick", dest="full", action="store_false", help="64 px, narrow, toy CLIP [CPU default]")
    p.add_argument("--batch", type=int, default=None, help="global stage-2 batch [2 x nproc]")
    p.add_argument("--iters", type=int, default=4, help="timed stage-2 steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--eval-n", type=int, default=None, help="eval samples [256 on CUDA, 32 on a CPU]")
    p.add_argument("--eval-batch", type=int, default=None, help="eval images per pass [32 on CUDA, 8 on a CPU]")
    p.add_argument("--clip", default=None, help="CLIP spec [ViT-B-32:none (random weights); toy on a CPU]")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: this process is one rank
    return p


def main(argv: list[str]) -> dict:
    """Launch one torchrun job per process count and report the per-count numbers and their efficiency."""
    import torch

    args = _parser().parse_args(argv)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.full is None:
        args.full = cuda
    if args.nproc is None:
        args.nproc = torch.cuda.device_count() if cuda else 2
    if cuda and args.nproc > torch.cuda.device_count():
        raise SystemExit(f"--nproc {args.nproc}: only {torch.cuda.device_count()} GPU(s) visible (one per process)")
    batch = args.batch or 2 * args.nproc
    counts = [p for p in range(1, args.nproc + 1) if batch % p == 0]
    out: dict = {"suite": "scale", "backend": "nccl" if cuda else "gloo", "device": "cuda" if cuda else "cpu",
                 "mode": "full" if args.full else "quick", "global_batch": batch, "process_counts": counts,
                 "skipped_counts": [p for p in range(1, args.nproc + 1) if p not in counts], "runs": []}
    if not cuda:
        out["note"] = ("CPU run with the gloo backend: all processes share this machine's cores, so these numbers "
                       "test the distributed path, not the speed-up of one GPU per process")
    for p in counts:
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "result.json"
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            if not cuda:  # one thread per process: threads that outnumber free cores stall each other (spin waits)
                env["OMP_NUM_THREADS"] = "1"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(p),
                   str(Path(__file__).resolve()), "--worker", str(result), "--device", "cuda" if cuda else "cpu",
                   "--batch", str(batch), "--iters", str(args.iters), "--warmup", str(args.warmup),
                   "--full" if args.full else "--quick"]
            for flag, value in (("--eval-n", args.eval_n), ("--eval-batch", args.eval_batch), ("--clip", args.clip)):
                if value is not None:
                    cmd += [flag, str(value)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not result.is_file():
                raise SystemExit(f"torchrun with {p} process(es) failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
            out["runs"].append(json.loads(result.read_text()))
    base = out["runs"][0]
    for run in out["runs"]:
        p = run["processes"]
        run["stage2_efficiency"] = round(base["stage2_step_s"] / (p * run["stage2_step_s"]), 3)
        run["eval_efficiency"] = round(run["eval_images_per_s"] / (p * base["eval_images_per_s"]), 3)
    return out


def _worker(args) -> None:
    """One rank: time data-parallel stage-2 steps and a sharded eval pass; rank 0 writes the numbers."""
    import torch

    from ipl import distributed
    from ipl.core import distributed as cdist
    from ipl.generators.stylegan2.adapter import StyleGAN2Adapter
    from ipl.generators.stylegan2.network import Generator
    from ipl.method.clip import load_clips
    from ipl.method.stage2 import Stage2Settings, Stage2Trainer
    from ipl.metrics.clip_score import ClipScore
    from ipl.metrics.sources import EvalInput, indexed_batches

    launch = distributed.init_from_env(args.device)
    device = torch.device(distributed.local_device(args.device))
    if device.type == "cpu":
        torch.set_num_threads(1)  # one core per process (see main)
    torch.manual_seed(0)
    if args.full:
        G = Generator(img_resolution=1024, channel_multiplier=2)
    else:
        G = Generator(img_resolution=64, channel_max=128, channel_base=128 * 32)
    source = StyleGAN2Adapter(G.to(device).eval())
    spec = args.clip or ("ViT-B-32:none" if args.full else "toy")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random CLIP weights: timing only
        clips = load_clips([spec], device=str(device))
    num_ws = source.num_layers()
    settings = Stage2Settings(method="nada", iters=10**6, batch=args.batch, layers=max(1, 2 * num_ws // 3),
                              layer_every=4, seed=0, truncation=1.0, data_parallel=True)
    trainer = Stage2Trainer(source, clips, "photo", "sketch", None, settings)
    steps = []
    for i in range(args.warmup + args.iters):
        cdist.barrier()
        _sync(device)
        t0 = time.perf_counter()
        trainer.step()
        _sync(device)
        if i >= args.warmup:
            steps.append(time.perf_counter() - t0)

    n = args.eval_n or (256 if args.full else 32)
    batch = args.eval_batch or (32 if args.full else 8)
    inp = EvalInput(label="bench", path="bench", kind="generator", generator=trainer.G_ema)
    scorer = ClipScore(clips[0], "sketch")
    for warm in (True, False):  # the first pass warms up kernels and caches; the second is timed
        cdist.barrier()
        _sync(device)
        t0 = time.perf_counter()
        ks = []
        for k, _, imgs, _ in indexed_batches(inp, min(n, batch) if warm else n, batch, seed=0,
                                             rank=cdist.rank(), world=cdist.world_size()):
            scorer.update(imgs.to(device))
            ks.append(k)
        cdist.all_gather_objects((ks, scorer._scores))  # what a sharded `ipl eval` gathers
        _sync(device)
        eval_s = time.perf_counter() - t0
    if cdist.is_main():
        Path(args.worker).write_text(json.dumps({
            "processes": cdist.world_size(), "backend": launch.backend if launch else "none",
            "batch_per_process": args.batch // cdist.world_size(), "stage2_step_s": round(statistics.median(steps), 4),
            "stage2_steps_s": [round(s, 4) for s in steps], "eval_samples": n,
            "eval_images_per_s": round(n / eval_s, 2), "threads_per_process": torch.get_num_threads()}))
    cdist.barrier()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    parsed = _parser().parse_args(sys.argv[1:])
    if parsed.worker is None:
        print(json.dumps(main(sys.argv[1:]), indent=2))
    else:
        _worker(parsed)
