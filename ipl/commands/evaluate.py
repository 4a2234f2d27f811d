"""`ipl eval`: FID / KID / IS, intra-cluster LPIPS, CLIP score (and the toy judge) for runs, checkpoints, folders."""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Optional

import click

from ipl.core.atomic import write_json
from ipl.metrics.runner import METRICS, EvalResult, EvalSettings, evaluate, parse_metrics

RANDOM_MARK = "*"


def _uses_random(key: str, result: EvalResult) -> bool:
    """Whether the number under `key` came from a network with random weights."""
    nets = result.random_weights
    if key in ("fid", "kid", "is"):
        return "inception" in nets
    if key == "intra-lpips":
        return "lpips-backbone" in nets
    if key in ("clip-score", "judge:clip_judge_agreement"):
        return any(n.startswith("clip") for n in nets)
    return False


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        text = f"{v:.2f}" if abs(v) >= 100 else f"{v:.4f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text   # no "-0.0000"
    return str(v)


def format_table(result: EvalResult) -> str:
    """Metrics as rows, inputs as columns; random-weight numbers marked."""
    cols = result.columns
    keys: list[str] = []
    for c in cols:
        for k in c["values"]:
            if k not in keys:
                keys.append(k)
        for k in c["skipped"]:
            if k not in keys and not any(x.startswith(k + ":") for x in keys):
                keys.append(k)
    header = ["metric"] + [c["label"] for c in cols]
    rows = [["n"] + [str(c["n"]) for c in cols]]
    for k in keys:
        row = [k]
        for c in cols:
            if k in c["values"]:
                cell = _fmt(c["values"][k]) + (RANDOM_MARK if _uses_random(k, result) else "")
            else:
                cell = "n/a"
            row.append(cell)
        rows.append(row)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    notes = []
    if "clip" in result.weights:
        clip_cols = [c for c in cols if "clip-score" in c["details"]]
        if clip_cols:
            d = clip_cols[0]["details"]["clip-score"]
            notes.append(f"clip-score: 100 x cos(image, text) with CLIP {d['clip_model']}, text {d['clip_text']!r}")
    if any("intra-lpips" in c["details"] for c in cols):
        d = next(c["details"]["intra-lpips"] for c in cols if "intra-lpips" in c["details"])
        notes.append(f"intra-lpips: LPIPS-{d['net']} v0.1 at {d['size']} px, centres: {d['centres']}")
    if any("judge-fid" in c["details"] for c in cols):
        d = next(c["details"]["judge-fid"] for c in cols if "judge-fid" in c["details"])
        notes.append(f"judge-fid: FID with toy-judge features against {d['reference']} (not Inception FID)")
    for c in cols:
        if c.get("notes", {}).get("warning"):
            notes.append(f"WARNING ({c['label']}): {c['notes']['warning']}")
    if result.random_weights:
        notes.append(f"{RANDOM_MARK} RANDOM WEIGHTS ({', '.join(result.random_weights)}; --allow-random-weights): "
                     "these numbers are NOT results.")
    return "\n".join(out + [""] + notes)


def default_out(inputs: list[str]) -> Path:
    """RUN/eval.json for a run folder; ./eval.json otherwise."""
    first = Path(inputs[0])
    if first.is_dir() and (first / "config.json").is_file():
        return first / "eval.json"
    return Path("eval.json")


@click.command(name="eval")
@click.argument("target_input", metavar="RUN|CKPT|DIR")
@click.option("--vs", "vs", multiple=True, metavar="RUN|CKPT|DIR",
              help="Another run / checkpoint / image folder to compare (one more column; repeatable).")
@click.option("--metrics", default=None, show_default="auto",
              help=f"Comma list of {', '.join(METRICS)}. Auto: judge,judge-fid,clip-score for toy runs; "
                   "clip-score,intra-lpips (+fid,kid with --ref) otherwise.")
@click.option("--ref", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of reference images for FID/KID.")
@click.option("--n", "n", type=int, default=None, show_default="5000; 500 for toy runs",
              help="Samples per input (folders: at most all).")
@click.option("--batch", type=int, default=32, show_default=True, help="Images per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sample i is fixed by (seed, i).")
@click.option("--truncation", type=float, default=1.0, show_default=True, help="Truncation psi of the samples.")
@click.option("--target", "target_text", default=None, help="Text for the CLIP score (default: the run's target).")
@click.option("--clip", "clip_spec", default=None,
              help="CLIP for clip-score, NAME[:PRETRAINED] (default: the run's first CLIP, else ViT-B-32:openai).")
@click.option("--centres", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of cluster-centre images for intra-LPIPS (default: the first 10 samples).")
@click.option("--lpips-net", type=click.Choice(["alex", "vgg", "squeeze"]), default="alex", show_default=True)
@click.option("--lpips-n", type=int, default=1000, show_default=True, help="Samples used for intra-LPIPS.")
@click.option("--lpips-size", type=int, default=256, show_default=True, help="Max image side for LPIPS.")
@click.option("--lpips-weights", type=click.Path(dir_okay=False), default=None,
              help="Local torchvision weights of the LPIPS backbone (e.g. alexnet-owt-7be5be79.pth).")
@click.option("--inception-weights", type=click.Path(dir_okay=False), default=None,
              help="Local torch-fidelity Inception weights (weights-inception-2015-12-05-6726825d.pth).")
@click.option("--kid-subset-size", type=int, default=1000, show_default=True)
@click.option("--with-source", is_flag=True, help="Add a column for each run's source generator.")
@click.option("--offline", is_flag=True, help="Never download metric weights (same as IPL_OFFLINE=1).")
@click.option("--allow-random-weights", is_flag=True,
              help="Use random weights where metric weights are missing; the output is labelled NOT a result.")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Results JSON (default: RUN/eval.json, or ./eval.json).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(target_input: str, vs: tuple[str, ...], metrics: Optional[str], ref: Optional[str], n: Optional[int],
            batch: int, device: str, seed: int, truncation: float, target_text: Optional[str], clip_spec: Optional[str],
            centres: Optional[str], lpips_net: str, lpips_n: int, lpips_size: int, lpips_weights: Optional[str],
            inception_weights: Optional[str], kid_subset_size: int, with_source: bool, offline: bool,
            allow_random_weights: bool, out: Optional[str], quiet: bool) -> None:
    """Evaluate adapted generators: sample N images with fixed seeds (or read a folder), print a table, write JSON."""
    inputs = [target_input, *vs]
    from ipl import distributed as dist
    from ipl.core.atomic import check_writable

    # Under torchrun (docs/distributed.md): the samples are sharded over the processes, rank 0 reports.
    launch = dist.init_from_env(device)
    if dist.is_main():
        check_writable(Path(out) if out else default_out(inputs), "--out")  # before anything is sampled
    before = os.environ.get("IPL_OFFLINE")
    if offline:
        os.environ["IPL_OFFLINE"] = "1"  # also keeps the CLIP loader from downloading (restored below)
    try:
        settings = EvalSettings(inputs=inputs, metrics=parse_metrics(metrics), ref=ref, n=n, batch=batch,
                                device=device, seed=seed, truncation=truncation, target=target_text, clip=clip_spec,
                                centres=centres, lpips_net=lpips_net, lpips_n=lpips_n, lpips_size=lpips_size,
                                lpips_weights=lpips_weights, inception_weights=inception_weights,
                                kid_subset_size=kid_subset_size, allow_random_weights=allow_random_weights,
                                download=not offline, with_source=with_source, progress=not quiet)
        dist.check_same({**dataclasses.asdict(settings), "out": out}, "eval settings")
        if launch is not None:
            settings = dataclasses.replace(settings, device=dist.local_device(device))
        result = evaluate(settings)
    finally:  # the process may go on (the Python API, tests): leave the environment as it was
        if before is None:
            os.environ.pop("IPL_OFFLINE", None)
        else:
            os.environ["IPL_OFFLINE"] = before
    if not dist.is_main():
        return
    path = Path(out) if out else default_out(inputs)
    if launch is not None:
        result.settings["processes"] = launch.world_size  # the numbers do not depend on it (docs/distributed.md)
    write_json(path, result.to_dict())
    click.echo(format_table(result))
    click.echo(f"\nwrote {path}")
