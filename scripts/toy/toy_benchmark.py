"""IPL vs the NADA baseline in the toy world, at equal iterations, judged on every target domain.

python scripts/toy/toy_benchmark.py [--targets dark,pastel,outlined,striped,dotted] [--methods ipl,nada]
                                    [--n 1000] [--seed 0] [--jobs 1] [--out runs/toy_benchmark] [-- EXTRA ipl adapt ARGS]
For each (target, method): `ipl adapt --source toy --target TEXT --method M` with the registry's toy defaults
(plus any extra arguments, applied to both methods alike), then `ipl eval RUN --metrics judge` on n fixed
samples. Writes OUT/benchmark.json (every judge number, timings, commands), OUT/benchmark.md (a table) and
OUT/grids.png (each run's samples/final.png, source row over adapted row, in table order). The benchmark files
of the toy world's research rounds are kept in scripts/toy/results/ (docs/toy_world.md, docs/toy_findings.md).
--jobs N runs N (target, method) pairs at once, each with cores/N torch threads.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ipl.core.atomic import write_json, write_text
from ipl.generators.toy.captions import TARGET_TEXTS

COLUMNS = ("target_rate", "content_kept", "diversity_kept", "clip_judge_agreement", "degraded_rate",
           "clip_target_rate")


def ipl_exe() -> list[str]:
    """The `ipl` console script next to this Python, else `python -m`-style invocation of the CLI."""
    exe = Path(sys.executable).with_name("ipl")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from ipl.commands.cli import main; main()"]


def run(cmd: list[str], log: Path, threads: int = 0) -> float:
    """Run a command, tee its output to a log; returns seconds; raises with the log tail on failure."""
    t0 = time.time()
    env = {**os.environ, "IPL_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8").splitlines()[-20:]
        raise RuntimeError(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n" + "\n".join(tail))
    return time.time() - t0


def markdown(rows: list[dict]) -> str:
    """The README table: one row per (target, method)."""
    head = ("| target | method | target rate | content kept | diversity kept | CLIP-judge agreement | "
            "degraded | CLIP says target | adapt s |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        j = r["judge"]
        f = lambda k: "n/a" if j.get(k) is None else f"{j[k]:.3f}"  # noqa: E731
        lines.append(f"| {r['target']} | {r['method']} | {f('target_rate')} | {f('content_kept')} | "
                     f"{f('diversity_kept')} | {f('clip_judge_agreement')} | {f('degraded_rate')} | "
                     f"{f('clip_target_rate')} | {r['adapt_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def stack_grids(rows: list[dict], path: Path) -> None:
    """One picture: every run's final sample grid (source row over adapted row, same latents), top to bottom."""
    from PIL import Image

    grids = [Image.open(Path(r["run"]) / "samples" / "final.png").convert("RGB") for r in rows]
    width = max(g.width for g in grids)
    canvas = Image.new("RGB", (width, sum(g.height + 6 for g in grids)), "black")
    y = 0
    for g in grids:
        canvas.paste(g, (0, y))
        y += g.height + 6
    canvas.save(path)


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    full_argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default=",".join(TARGET_TEXTS))
    ap.add_argument("--methods", default="ipl,nada")
    ap.add_argument("--n", type=int, default=1000, help="judged samples per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="(target, method) pairs run at once")
    ap.add_argument("--out", default="runs/toy_benchmark")
    args = ap.parse_args(argv)
    unknown = [d for d in args.targets.split(",") if d not in TARGET_TEXTS]
    if unknown:
        ap.error(f"unknown target domain(s) {unknown}; choose from {','.join(TARGET_TEXTS)}")
    if any(m not in ("ipl", "nada") for m in args.methods.split(",")):
        ap.error(f"--methods {args.methods!r}: choose from ipl,nada")
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else 0
    result = {"command": shlex.join([sys.executable, sys.argv[0], *full_argv]),
              "settings": {**vars(args), "extra_adapt_args": extra}, "rows": rows,
              "machine": {"cpus": os.cpu_count(), "threads_per_job": threads or None}}

    def one(domain: str, method: str) -> dict:
        text = TARGET_TEXTS[domain]
        run_dir = out / f"{domain}-{method}"
        run_log = out / f"{domain}-{method}.log"
        adapt = [*ipl_exe(), "adapt", "--source", "toy", "--target", text, "--method", method,
                 "--out", str(run_dir), "--seed", str(args.seed), "--device", "cpu", "--quiet", "--force",
                 *extra]
        t_adapt = run(adapt, run_log, threads)
        eval_json = run_dir / "eval_judge.json"
        ev = [*ipl_exe(), "eval", str(run_dir), "--metrics", "judge", "--n", str(args.n), "--seed",
              str(args.seed), "--device", "cpu", "--offline", "--quiet", "--out", str(eval_json)]
        t_eval = run(ev, run_log, threads)
        col = json.loads(eval_json.read_text())["columns"][0]
        judge = col["details"]["judge"]
        row = {"target": domain, "text": text, "method": method, "run": str(run_dir),
               "adapt_seconds": round(t_adapt, 1), "eval_seconds": round(t_eval, 1),
               "adapt_command": shlex.join(adapt), "judge": judge}
        print(json.dumps({k: row[k] for k in ("target", "method", "adapt_seconds")} |
                         {k: judge.get(k) for k in COLUMNS}), flush=True)
        return row

    pairs = [(d, m) for d in args.targets.split(",") for m in args.methods.split(",")]
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(lambda dm: one(*dm), pairs):  # map keeps the table in (target, method) order
            rows.append(row)
            write_json(out / "benchmark.json", result)
            write_text(out / "benchmark.md", markdown(rows))
    stack_grids(rows, out / "grids.png")
    print(markdown(rows))
    return result


if __name__ == "__main__":
    main()
