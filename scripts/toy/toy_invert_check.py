"""Held-out check of `ipl invert` / `ipl edit` in the toy world (a referee, not a tuning target).

200 fresh renders of the toy renderer (solid domain; scenes drawn as the toy generator's training map draws them:
generators/toy/source.py scene_from_latent of a fresh z and a uniform shape class; never rendered by the generator)
are inverted into the shipped toy generator with `ipl.invert`'s defaults for the toy source. The judge labels shape
and colour of input and reconstruction; then `ipl.edit` renders the same latents with a `dark` run's adapted
generator and the judge reports target rate and content kept (against its labels of the inputs).

    python scripts/toy/toy_invert_check.py --dark-run RUN [--n 200] [--batch 50] [--threads 1] [--space w|w+]

RUN: a toy run adapted to "on a dark background" (`ipl adapt --source toy --target "on a dark background"`).
Writes scripts/toy/results/invert_toy.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 22_2026  # fresh scenes: no other toy script draws from this seed


def fresh_renders(n: int, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [n, 3, 64, 64] in [-1, 1], shape classes [n]) from the renderer, solid domain."""
    from ipl.generators.toy.render import render
    from ipl.generators.toy.source import C_DIM, Z_DIM, scene_from_latent

    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, Z_DIM, generator=gen)
    shape = torch.randint(0, C_DIM, (n,), generator=gen)
    return render(scene_from_latent(z, torch.nn.functional.one_hot(shape, C_DIM).float()), "solid"), shape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dark-run", required=True, type=Path)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--space", choices=["w", "w+"], default=None, help="default: ipl.invert's (w+)")
    ap.add_argument("--out", type=Path, default=RESULTS / "invert_toy.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import ipl
    from ipl.core.atomic import torch_save, write_json
    from ipl.generators.toy.judge import judge_report, load_judge
    from ipl.inversion import LATENTS_FORMAT, psnr

    x, _ = fresh_renders(args.n)
    t0 = time.perf_counter()
    space = {} if args.space is None else {"space": args.space}
    inv = ipl.invert("toy", x, batch_size=args.batch, progress=False, **space)
    seconds = time.perf_counter() - t0
    judge = load_judge()
    a, b = judge.classify(x), judge.classify(inv.reconstructions)
    same = (a["shape"] == b["shape"]) & (a["colour"] == b["colour"])
    p = psnr(inv.reconstructions, x)

    latents = args.out.with_suffix(".latents.pt")
    torch_save({"format": LATENTS_FORMAT, "source_sha256": _run_source_sha(args.dark_run),
                "entries": {f"image{i:04d}": {"latent": inv.latents[i]} for i in range(len(x))}}, latents)
    t1 = time.perf_counter()
    ed = ipl.edit([args.dark_run], x, latents=latents, progress=False)
    edit_seconds = time.perf_counter() - t1
    latents.unlink()
    report = judge_report(x, ed.adapted[str(args.dark_run)], "dark", judge=judge)
    result = {
        "n": args.n, "seed": SEED, "settings": {k: v for k, v in vars(inv.config).items()},
        "threads": args.threads, "batch": args.batch,
        "invert": {"judge_agreement": float(same.float().mean()),
                   "shape_agreement": float((a["shape"] == b["shape"]).float().mean()),
                   "colour_agreement": float((a["colour"] == b["colour"]).float().mean()),
                   "psnr_mean": float(p.mean()), "psnr_median": float(p.median()), "psnr_min": float(p.min()),
                   "seconds": seconds, "seconds_per_image": seconds / args.n},
        "edit": {"run": str(args.dark_run), "target_rate": report["target_rate"],
                 "adapted_domains": report["adapted_domains"],
                 "content_kept": report["content_kept"], "shape_kept": report["shape_kept"],
                 "colour_kept": report["colour_kept"], "seconds": edit_seconds},
        "thresholds": {"judge_agreement": 0.85, "target_rate": 0.80, "content_kept": 0.80},
    }
    result["passed"] = (result["invert"]["judge_agreement"] >= 0.85 and result["edit"]["target_rate"] >= 0.80
                        and result["edit"]["content_kept"] >= 0.80)
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("invert", "edit", "passed")}, indent=1))


def _run_source_sha(run: Path) -> str:
    return json.loads((run / "config.json").read_text())["resolved"]["source_sha256"]


if __name__ == "__main__":
    main()
