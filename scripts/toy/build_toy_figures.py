"""Write the README figure of the toy world: the same 8 scenes in every domain, then degraded examples.

python scripts/toy/build_toy_figures.py [--out assets/toy/renders.png]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ipl.core.images import save_grid
from ipl.generators.toy.render import DEGRADATIONS, STYLE_DOMAINS, degrade, render, sample_params

RECORDS = Path(__file__).resolve().parents[2] / "assets" / "toy"   # images of the docs (not installed)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(RECORDS / "renders.png"))
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    p = sample_params(8, g)
    rows = [render(p, d) for d in STYLE_DOMAINS]
    kinds = torch.arange(8) % len(DEGRADATIONS)
    rows.append(degrade(rows[0], kinds, g))
    save_grid(rows, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
