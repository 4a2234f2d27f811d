"""Intra-LPIPS pair distances, side by side: `python scripts/bench_eval.py [--n 40] [--size 128] [--device cpu]`.

Candidates, measured in one run on the same images:
- package: `lpips.LPIPS.forward` on every pair (two backbone passes per pair), batched;
- gram:    ipl.metrics.lpips_diversity (one backbone pass per image, all pairs as a Gram matrix).
The LPIPS backbone has random weights unless its torchvision file is in the torch hub cache: timing only,
the distances are compared for agreement, never reported.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from bench_common import sync  # noqa: E402

from ipl.metrics.lpips_diversity import load_lpips, lpips_features, lpips_matrix  # noqa: E402


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="images (pairs = n(n-1)/2)")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--net", default="alex", choices=["alex", "vgg", "squeeze"])
    ap.add_argument("--batch", type=int, default=64, help="pairs per forward for the package candidate")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    model, path = load_lpips(args.net, allow_random=True, download=False, device=device)
    x = (torch.rand(args.n, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    pairs = list(itertools.combinations(range(args.n), 2))
    ii = torch.tensor([i for i, _ in pairs], device=device)
    jj = torch.tensor([j for _, j in pairs], device=device)

    with torch.no_grad():
        model(x[:2], x[2:4])  # warm-up
        sync(device)
        t0 = time.perf_counter()
        ref = torch.cat([model(x[ii[k:k + args.batch]], x[jj[k:k + args.batch]]).flatten()
                         for k in range(0, len(pairs), args.batch)])
        sync(device)
        t_package = time.perf_counter() - t0
        t0 = time.perf_counter()
        feats = lpips_features(model, x)
        d = lpips_matrix(model, feats, feats)[ii, jj]
        sync(device)
        t_gram = time.perf_counter() - t0
    return {
        "device": str(device), "net": args.net, "random_backbone": path is None, "images": args.n,
        "pairs": len(pairs), "size": args.size,
        "package_s": round(t_package, 4), "gram_s": round(t_gram, 4),
        "speedup_gram_vs_package": round(t_package / t_gram, 2),
        "max_abs_diff": float((d.float() - ref.float()).abs().max()),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main(sys.argv[1:]), indent=2))
