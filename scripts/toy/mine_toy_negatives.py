"""Images that adapted toy generators actually draw, captioned by what they are, for the toy CLIP's training.

python scripts/toy/mine_toy_negatives.py RUN [RUN ...] [--n 512] [--seed 0] [--append] --out negatives.pt

A small CLIP trained only on renders is fooled by what a partly adapted generator draws (a mauve background,
blurred or swollen shapes), and stage 2 follows the CLIP's gradient straight to those images. This script
samples each run's adapted generator and captions every image as the scene it was meant to be (shape from the
class input, colour from the latent, as `ipl.generators.toy.source.scene_from_latent` defines them) in the domain
its background lightness (the mean over pixels 2 px or more away from the intended shape) puts it in: `dark` with probability rising linearly from 0 at the light domain's
range (0.86) to 1 at the dark one's (0.15), as `build_toy_clip.py --soft-grey` captions grey backgrounds.
Nothing here reads the judge. `build_toy_clip.py --extra-bank FILE` mixes the result into every batch
(adversarial training against the generator's reach rather than against pixel noise).

Writes a torch file {"images": uint8 [N, 3, 64, 64], "captions": [N strings], "runs": [...]}; with --append
the images are added to an existing file.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from ipl.core.atomic import atomic_path
from ipl.generators.toy.captions import caption
from ipl.generators.toy.render import DOMAINS, SceneParams, shape_sdf
from ipl.generators.toy.source import scene_from_latent

LIGHT, DARK = 0.86, 0.15   # edges of the solid and dark domains' background lightness ranges
MARGIN = 2                 # pixels around the intended shape left out of the background


def background_mask(scene: SceneParams) -> torch.Tensor:
    """[N, H, W] bool: pixels at least MARGIN pixels away from each scene's intended shape."""
    # shape_sdf is in pixels; the renderer's antialiasing ramp reaches 0.5 px outside the shape.
    return shape_sdf(scene) > 0.5 + MARGIN


def background_lightness(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N] mean lightness in [0, 1] of [-1, 1] images [N, 3, H, W] over the pixels of mask [N, H, W]."""
    assert images.shape[0] == mask.shape[0] and images.shape[2:] == mask.shape[1:], (images.shape, mask.shape)
    x = (images + 1) / 2 * mask[:, None]
    return x.sum((1, 2, 3)) / (3 * mask.sum((1, 2)).clamp(min=1))


def lightness_domain(level: float, rng: random.Random) -> str:
    """`dark` with probability rising linearly over the gap between the two domains' ranges, else `solid`."""
    return "dark" if rng.random() < (LIGHT - level) / (LIGHT - DARK) else "solid"


@torch.no_grad()
def mine(run_dir: str, n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """n adapted samples of one run folder (uint8) and their captions."""
    from ipl.run import load_run

    info = load_run(run_dir)
    G = info.source.G
    g = torch.Generator().manual_seed(seed)
    z = torch.randn([n, G.z_dim], generator=g)
    c = G.sample_labels(n, g)
    assert c is not None, f"{run_dir}: the toy source is conditional (the shape is its class input)"
    scene = scene_from_latent(z, c)
    rng = random.Random(seed)
    images, captions, domains = [], [], []
    for i in range(0, n, 64):
        w = G.mapping(z[i:i + 64], c[i:i + 64])[:, 0]
        x = info.adapted.render(w).clamp(-1, 1)
        part = scene.index(torch.arange(i, min(i + 64, n)))
        for level, s, col in zip(background_lightness(x, background_mask(part)).tolist(), scene.shape[i:i + 64].tolist(),
                                 scene.colour[i:i + 64].tolist()):
            domains.append(lightness_domain(level, rng))
            captions.append(caption(DOMAINS.index(domains[-1]), s, col, -1, rng))
        images.append(((x + 1) * 127.5).round().to(torch.uint8))
    print(f"{run_dir}: {n} images, {domains.count('dark')} captioned dark", flush=True)
    return torch.cat(images), captions


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="toy run folders (ipl adapt --source toy ... --out RUN)")
    ap.add_argument("--n", type=int, default=512, help="samples per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--append", action="store_true", help="add to --out if it exists")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n must be >= 1, got {args.n}")
    missing = [r for r in args.runs if not (Path(r) / "config.json").is_file()]
    if missing:
        ap.error(f"not ipl run folders (no config.json): {', '.join(missing)}; pass folders written by "
                 f"`ipl adapt --source toy ... --out RUN`")
    out = Path(args.out)
    bank = {"images": torch.empty(0, 3, 64, 64, dtype=torch.uint8), "captions": [], "runs": []}
    if args.append and out.exists():
        try:
            bank = torch.load(out)
            assert {"images", "captions", "runs"} <= set(bank)
        except Exception as e:  # torch.load raises many kinds on a file it cannot read
            ap.error(f"--append: {out} is not an earlier output of this script ({e!r}); pass another --out")
    for k, run in enumerate(args.runs):
        images, captions = mine(run, args.n, args.seed + k)
        bank["images"] = torch.cat([bank["images"], images])
        bank["captions"] += captions
        bank["runs"].append(str(run))
    with atomic_path(out) as tmp:
        torch.save(bank, tmp)
    return bank


if __name__ == "__main__":
    main()
