"""Train the toy DDPM: a small diffusers UNet2DModel on `solid` renders of the toy world, saved to ipl/assets/toy/ddpm/.

    python scripts/toy/build_toy_ddpm.py [--minutes 25] [--steps N] [--res 32] [--batch 32] [--threads 1]
                                         [--out DIR] [--record DIR]

Every batch is freshly rendered by ipl.generators.toy.render (an endless dataset), the loss is the usual
epsilon-prediction MSE under the google/ddpm-* linear schedule (1000 steps), and an EMA of the weights is
what is saved, as a diffusers folder (config.json, diffusion_pytorch_model.safetensors,
scheduler_config.json) in --out, plus ddpm_build.json recording how it was made in --record. By default --out
is the shipped package data (ipl/assets/toy/ddpm/) and the record goes to assets/toy/; with another --out, the
record goes into it.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ipl.generators.diffusion.checkpoint import DDPM_SCHEDULER_CONFIG, make_scheduler

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "ipl" / "assets" / "toy" / "ddpm"   # the diffusers folder: package data
RECORDS = ROOT / "assets" / "toy"                    # ddpm_build.json (not installed)

# Small enough for < 10 MB and CPU training; big enough to draw clean shapes at 32 px.
TOY_UNET_CONFIG = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8, "attention_head_dim": 32, "act_fn": "silu",
    "flip_sin_to_cos": True, "freq_shift": 0,
}


def render_batch(n: int, res: int, generator: torch.Generator) -> torch.Tensor:
    """n fresh `solid` scenes [n,3,res,res] in [-1,1], randomly mirrored."""
    from ipl.generators.toy.render import render, sample_params

    return render(sample_params(n, generator=generator), "solid", res=res)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=25.0, help="wall-clock training budget (default 25)")
    ap.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: budget only)")
    ap.add_argument("--res", type=int, default=32, help="image resolution (default 32)")
    ap.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    ap.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate (default 5e-4, cosine decay)")
    ap.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights (default 0.999)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(SHIPPED),
                    help="diffusers folder to write (default: the shipped ipl/assets/toy/ddpm/)")
    ap.add_argument("--record", default=None,
                    help="folder for ddpm_build.json (default: assets/toy/ with the default --out, else --out)")
    args = ap.parse_args(argv)

    from diffusers import UNet2DModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    cfg = dict(TOY_UNET_CONFIG, sample_size=args.res)
    unet = UNet2DModel.from_config(cfg)
    ema = UNet2DModel.from_config(cfg)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    sched = make_scheduler(DDPM_SCHEDULER_CONFIG)
    ac = sched.alphas_cumprod.float()
    opt = torch.optim.Adam(unet.parameters(), lr=args.lr)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"toy DDPM: {n_params / 1e6:.2f} M parameters, {args.res}px, budget {args.minutes} min", flush=True)

    budget = args.minutes * 60
    start = time.perf_counter()
    step, avg = 0, None
    while True:
        elapsed = time.perf_counter() - start
        if (args.steps and step >= args.steps) or (not args.steps and elapsed >= budget):
            break
        # Cosine decay on the fraction of the budget used (steps or time).
        frac = step / args.steps if args.steps else elapsed / budget
        for g in opt.param_groups:
            g["lr"] = args.lr * (min(1.0, (step + 1) / 200)) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        x0 = render_batch(args.batch, args.res, gen)
        t = torch.randint(0, len(ac), (args.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = ac[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        value = float(loss.detach())
        avg = value if avg is None else 0.98 * avg + 0.02 * value
        step += 1
        if step % 200 == 0:
            print(f"step {step} loss {avg:.4f} {elapsed / 60:.1f} min", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ema.save_pretrained(str(out), safe_serialization=True)
    sched_cfg = dict(DDPM_SCHEDULER_CONFIG, _class_name="DDPMScheduler")
    (out / "scheduler_config.json").write_text(json.dumps(sched_cfg, indent=2) + "\n")
    info = {"steps": step, "minutes": round((time.perf_counter() - start) / 60, 2), "final_loss_ema": avg,
            "params": n_params, "batch": args.batch, "lr": args.lr, "ema": args.ema, "res": args.res,
            "threads": args.threads, "seed": args.seed, "data": "ipl.generators.toy.render(domain='solid')",
            "torch": torch.__version__}
    if args.record is not None:
        record = Path(args.record)
    else:
        record = RECORDS if out.resolve() == SHIPPED.resolve() else out
    record.mkdir(parents=True, exist_ok=True)
    (record / "ddpm_build.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info), flush=True)
    return info


if __name__ == "__main__":
    main()
