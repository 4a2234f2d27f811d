"""Train the toy judge (domain incl. degraded, shape, colour) on augmented renders.

python scripts/toy/build_toy_judge.py [--steps 300] [--bank 6144] [--seed 1] [--threads 1] [--out ipl/assets/toy]
Writes judge_config.json (model config, settings, measured held-out accuracies) and judge.safetensors into --out
(default: the shipped package data, ipl/assets/toy/; the loader reads the model config from judge_config.json).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from augment import augment, cheap_augment
from ipl.core.atomic import atomic_path, write_json
from ipl.generators.toy.judge import Judge
from ipl.generators.toy.render import DEGRADATIONS, DOMAINS, render_dataset

SHIPPED = Path(__file__).resolve().parents[2] / "ipl" / "assets" / "toy"   # package data

BLANK = DEGRADATIONS.index("blank")
SHIFT = DEGRADATIONS.index("colour_shifted")


def losses(judge: Judge, images: torch.Tensor, labels: dict) -> torch.Tensor:
    """Cross-entropy of the three heads; shape/colour only where the image still shows them."""
    out = judge(images)
    deg = labels["degradation"]
    has_shape = deg != BLANK
    has_colour = has_shape & (deg != SHIFT)
    loss = F.cross_entropy(out["domain"], labels["domain"])
    loss = loss + F.cross_entropy(out["shape"][has_shape], labels["shape"][has_shape])
    loss = loss + F.cross_entropy(out["colour"][has_colour], labels["colour"][has_colour])
    return loss


@torch.no_grad()
def evaluate(judge: Judge, images: torch.Tensor, labels: dict) -> dict:
    """Held-out accuracies per head (shape/colour on non-degraded images)."""
    pred = judge.classify(images)
    clean = labels["degradation"] < 0
    dom = (pred["domain"] == labels["domain"]).float()
    return {
        "domain_acc": round(dom.mean().item(), 4),
        "domain_acc_per_domain": {d: round(dom[labels["domain"] == i].mean().item(), 4)
                                  for i, d in enumerate(DOMAINS)},
        "shape_acc": round((pred["shape"] == labels["shape"])[clean].float().mean().item(), 4),
        "colour_acc": round((pred["colour"] == labels["colour"])[clean].float().mean().item(), 4),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--bank", type=int, default=6144, help="renders drawn once and augmented per batch")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(SHIPPED),
                    help="folder for judge.safetensors + judge_config.json (default: the shipped ipl/assets/toy/)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    judge = Judge(width=args.width)
    opt = torch.optim.AdamW(judge.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    eval_images, eval_labels = render_dataset(1400, torch.Generator().manual_seed(20_000 + args.seed))
    t0 = time.time()
    # A bank of renders drawn once, half of it given the full affine augmentation; per batch only the cheap
    # augmentation runs (rendering every batch costs more than the judge step on a busy CPU).
    chunks = [render_dataset(1024, g) for _ in range(args.bank // 1024)]
    bank = torch.cat([c[0] for c in chunks])
    bank_labels = {k: torch.cat([c[1][k] for c in chunks]) for k in chunks[0][1]}
    half = len(bank) // 2
    bank[:half] = augment(bank[:half], g)
    print(f"bank of {len(bank)} renders in {time.time() - t0:.0f}s", flush=True)
    judge.train()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(bank), (args.batch,), generator=g)
        images = cheap_augment(bank[idx], g, max_shift=4)
        labels = {k: v[idx] for k, v in bank_labels.items()}
        loss = losses(judge, images, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            print(f"step {step} t={time.time() - t0:.0f}s loss={loss.item():.4f}", flush=True)
    ev = evaluate(judge, eval_images, eval_labels)
    print(json.dumps(ev), flush=True)
    from safetensors.torch import save_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "judge.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(tmp))
    write_json(out / "judge_config.json", {"model": judge.config, "seed": args.seed, "steps": args.steps,
                                           "batch": args.batch, "bank": args.bank, "lr": args.lr,
                                           "seconds": round(time.time() - t0), "held_out": ev})
    return ev


if __name__ == "__main__":
    main()
