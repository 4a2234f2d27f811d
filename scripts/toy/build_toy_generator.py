"""Train the toy source generator: our StyleGAN2 at 64 px, c_dim = 3 (shape), regressed onto solid renders.

python scripts/toy/build_toy_generator.py [--minutes 40] [--seed 0] [--threads 1] [--out ipl/assets/toy]
                                          [--record assets/toy]
Each step draws z and a shape label, renders the intended scene (ipl.generators.toy.source.scene_from_latent,
a smooth map) in the `solid` domain and fits G(z, c) to it with an L1 loss weighted toward the shape, plus an L1 loss on the images' finite
differences (--edge-weight) that keeps edges sharp where plain regression settles for a blur.
Writes generator.safetensors (our format, via ipl.generators.save; the EMA weights) into --out, and
generator_build.json (settings, timings and, if the judge exists, the judged shape/colour rates) and a sample
grid PNG (generator_samples.png) into --record. By default --out is the shipped package data (ipl/assets/toy/)
and the record goes to assets/toy/; with another --out, the record goes next to the weights.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ipl import generators
from ipl.core.atomic import write_json
from ipl.generators.stylegan2 import Generator
from ipl.generators.toy.render import render, shape_sdf
from ipl.generators.toy.source import C_DIM, Z_DIM, generator_kwargs, scene_from_latent

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "ipl" / "assets" / "toy"   # generator.safetensors: package data
RECORDS = ROOT / "assets" / "toy"           # generator_build.json + generator_samples.png (not installed)


def record_dir(out: Path, record=None) -> Path:
    """Where the build record goes: --record if given; assets/toy/ for the shipped weights; else next to them."""
    if record is not None:
        return Path(record)
    return RECORDS if Path(out).resolve() == SHIPPED.resolve() else Path(out)


def sample(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """z [n, Z_DIM] ~ N(0, I) and uniform one-hot shape labels [n, 3]."""
    z = torch.randn(n, Z_DIM, generator=g)
    c = F.one_hot(torch.randint(0, C_DIM, (n,), generator=g), C_DIM).float()
    return z, c


def edge_l1(fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between the horizontal and vertical finite differences of two image batches."""
    assert fake.shape == target.shape, (fake.shape, target.shape)
    dx = (fake.diff(dim=3) - target.diff(dim=3)).abs().mean()
    dy = (fake.diff(dim=2) - target.diff(dim=2)).abs().mean()
    return dx + dy


def target_and_weight(z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The solid render for (z, c) and a per-pixel loss weight that is higher on and near the shape."""
    p = scene_from_latent(z, c)
    target = render(p, "solid")
    near = (1.5 - shape_sdf(p) / 2).clamp(0, 1)[:, None]   # 1 inside and within ~1 px of the edge
    return target, 1 + 4 * near


@torch.no_grad()
def judged_rates(G: Generator, n: int = 600, seed: int = 123) -> dict:
    """Share of samples in which the judge finds the intended shape, colour and the `solid` domain."""
    from ipl.generators.toy.judge import load_judge
    from ipl.generators.toy.render import DOMAINS

    judge = load_judge()
    g = torch.Generator().manual_seed(seed)
    z, c = sample(n, g)
    images = torch.cat([G(z[i:i + 100], c[i:i + 100], noise_mode="const") for i in range(0, n, 100)])
    p = scene_from_latent(z, c)
    pred = judge.classify(images)
    shape_ok = pred["shape"] == p.shape
    colour_ok = pred["colour"] == p.colour
    return {"n": n, "shape_rate": shape_ok.float().mean().item(), "colour_rate": colour_ok.float().mean().item(),
            "shape_and_colour_rate": (shape_ok & colour_ok).float().mean().item(),
            "solid_rate": (pred["domain"] == DOMAINS.index("solid")).float().mean().item()}


def save_grid(G: Generator, path: Path, seed: int = 7) -> None:
    """Rows: generator samples over the renders they aim at (8 per row, 2 row pairs)."""
    from ipl.core.images import save_grid as _save_grid

    g = torch.Generator().manual_seed(seed)
    z, c = sample(16, g)
    with torch.no_grad():
        fake = G(z, c, noise_mode="const").clamp(-1, 1)
    real = render(scene_from_latent(z, c), "solid")
    _save_grid([fake[:8], real[:8], fake[8:], real[8:]], str(path))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=40.0, help="wall-clock training budget")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--ema", type=float, default=0.995, help="EMA decay of the saved weights")
    ap.add_argument("--edge-weight", type=float, default=2.0, help="weight of the finite-difference L1 loss")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", default=None, help="continue from this generator (our format); EMA restarts from it")
    ap.add_argument("--out", default=str(SHIPPED),
                    help="folder for generator.safetensors (default: the shipped ipl/assets/toy/)")
    ap.add_argument("--record", default=None,
                    help="folder for generator_build.json and generator_samples.png "
                         "(default: assets/toy/ with the default --out, else --out)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)
    record = record_dir(out, args.record)
    G = Generator(**generator_kwargs(), impl="ref").set_fused_modconv(False)
    if args.init:
        G.load_state_dict(generators.load(args.init).state_dict())
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    params = [p for n, p in G.named_parameters()]
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.9, 0.99))
    budget = args.minutes * 60
    t0 = time.time()
    last_save = t0
    info = {"init": args.init, "seed": args.seed, "batch": args.batch, "lr": args.lr, "ema": args.ema,
            "edge_weight": args.edge_weight, "threads": args.threads, "config": G.config,
            "history": []}
    previous = record_dir(Path(args.init).parent) / "generator_build.json" if args.init else None
    if previous is not None and previous.exists():
        info["previous"] = json.loads(previous.read_text())
    step = 0

    def checkpoint(final: bool = False) -> None:
        G_ema.estimate_w_avg(n=2048)
        meta = {"toy": True, "domain": "solid", "trained_by": "scripts/toy/build_toy_generator.py", "steps": step}
        out.mkdir(parents=True, exist_ok=True)
        record.mkdir(parents=True, exist_ok=True)
        generators.save(G_ema, out / "generator.safetensors", metadata=meta)
        save_grid(G_ema, record / "generator_samples.png")
        info.update(steps=step, seconds=round(time.time() - t0))
        write_json(record / "generator_build.json", info)

    while True:
        frac = (time.time() - t0) / budget
        if frac >= 1.0:
            break
        lr = args.lr * min(1.0, (step + 1) / (20 if args.init else 100)) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        z, c = sample(args.batch, g)
        target, weight = target_and_weight(z, c)
        fake = G(z, c, noise_mode="const")
        loss = (weight * (fake - target).abs()).mean() + args.edge_weight * edge_l1(fake, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        decay = args.ema if args.init else min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(G_ema.parameters(), G.parameters()):
                pe.lerp_(p, 1 - decay)
        if step % 20 == 0:
            rec = {"step": step, "seconds": round(time.time() - t0), "lr": lr, "loss": round(loss.item(), 5)}
            info["history"].append(rec)
            print(json.dumps(rec), flush=True)
        if time.time() - last_save > 240:
            checkpoint()
            last_save = time.time()
    checkpoint(final=True)
    try:
        info["judged"] = judged_rates(G_ema)
    except Exception as e:  # the judge may not be built yet; the numbers are then measured by the tests
        info["judged"] = f"not measured: {e}"
    write_json(record / "generator_build.json", info)
    print(json.dumps(info["judged"]), flush=True)
    return info


if __name__ == "__main__":
    main()
