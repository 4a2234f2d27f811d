"""Sampling and editing with diffusion runs: new images from noise, or real images moved into the target domain.

    python -m generators.diffusion.sampling RUN [--n 16 | --seeds 0-15] [--steps 50] [--source-too] [--out grid.png]
    python -m generators.diffusion.sampling RUN --edit DIR [--out edits.png] [--outdir DIR]

`ipl sample` delegates here for diffusion runs and models (the `command` below is a click command whose
options mirror `ipl sample`'s, plus --edit and --steps).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click
import torch

from generators.diffusion.adapter import DiffusionAdapter, read_image_folder
from ipl.errors import IPLError


def seed_noise(seeds: list[int], resolution: int) -> torch.Tensor:
    """One noise image [1,3,R,R] per seed, each drawn from its own seed (same image whatever the batch)."""
    return torch.cat([torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(s))
                      for s in seeds])


@torch.no_grad()
def sample_from_noise(model: DiffusionAdapter, noise: torch.Tensor, steps: Optional[int] = None,
                      batch: int = 8) -> torch.Tensor:
    """DDIM samples (eta 0) of `model` from the given noise, on CPU at the end."""
    from generators.diffusion import ddim

    ts = model.sampling_timesteps(steps)
    clip = bool(model.scheduler_config.get("clip_sample", True))
    out = [ddim.sample(model.eps, x.to(model.device), model.alphas_cumprod, ts, clip_x0=clip).cpu()
           for x in noise.split(batch)]
    return torch.cat(out)


@torch.no_grad()
def edit_images(source: DiffusionAdapter, adapted: DiffusionAdapter, images: torch.Tensor,
                batch: int = 8) -> torch.Tensor:
    """Invert images with the source model to t0, regenerate them with the adapted one (DiffusionCLIP edit)."""
    out = []
    for x in images.split(batch):
        x_t0 = source.invert(x.to(source.device))
        out.append(adapted.generate(x_t0.to(adapted.device)).cpu())
    return torch.cat(out)


def load_models(target: Path, device: str) -> tuple[Optional[DiffusionAdapter], DiffusionAdapter]:
    """(source or None, model to sample) for a diffusion run folder, an adapted file, or a source."""
    from generators import diffusion

    if target.is_dir() and (target / "config.json").is_file() and (target / "generator.safetensors").is_file() \
            and not diffusion.checkpoint.is_diffusers_folder(target):
        from ipl.run import load_run

        info = load_run(target, device=device)
        return info.source, info.adapted
    return None, diffusion.load(target, device=device)


@click.command("sample-diffusion", context_settings={"show_default": True})
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@click.option("--n", "n", type=int, default=None, help="Number of images (seeds 0..n-1 unless --seeds). [16]")
@click.option("--seeds", type=str, default=None, help="Seeds of the noise, e.g. 0-15 or 1,5,9.")
@click.option("--steps", type=int, default=None, help="DDIM steps from noise [default: the model's sample_steps].")
@click.option("--edit", "edit_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder of real images: invert each with the source model, regenerate with the adapted one; "
              "grid rows are input over result.")
@click.option("--source-too", is_flag=True, help="Also sample the source model from the same noise (rows: "
              "source over adapted).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Grid PNG [default: grid.png].")
@click.option("--outdir", type=click.Path(path_type=Path), default=None, help="Folder for one PNG per image.")
@click.option("--nrow", type=int, default=None, help="Images per grid line.")
@click.option("--batch", type=int, default=8, help="Images per UNet call.")
@click.option("--device", type=str, default="cpu", help="cpu or cuda[:i].")
def command(path, n, seeds, steps, edit_dir, source_too, out, outdir, nrow, batch, device) -> None:
    """Sample a diffusion model or run from noise, or edit real images into the target domain (--edit)."""
    from ipl.images import save_grid, save_images

    if batch <= 0:
        raise IPLError(f"--batch must be positive, got {batch}")
    if steps is not None and steps <= 0:
        raise IPLError(f"--steps must be positive, got {steps}")
    if out is None and outdir is None:
        out = Path("grid.png")
    source, model = load_models(Path(path), device)
    if edit_dir is not None:
        if source is None:
            raise IPLError(f"--edit needs a diffusion run folder (source + adapted model); {path} is one model")
        images = read_image_folder(edit_dir, model.resolution)
        names = [f"edit{i:04d}" for i in range(len(images))]
        rows = [images, edit_images(source, model, images, batch=batch)]
        row_names = ["input", "edited"]
    else:
        if seeds is not None:
            from ipl.commands.sample import parse_seeds

            seed_list = parse_seeds(seeds)
        else:
            if n is not None and n <= 0:
                raise IPLError(f"--n must be positive, got {n}")
            seed_list = list(range(16 if n is None else n))
        noise = seed_noise(seed_list, model.resolution)
        names = [f"seed{s:04d}" for s in seed_list]
        rows, row_names = [sample_from_noise(model, noise, steps, batch)], ["generator"]
        if source_too:
            if source is None:
                raise IPLError(f"--source-too needs a diffusion run folder; {path} is one model")
            rows, row_names = [sample_from_noise(source, noise, steps, batch)] + rows, ["source", "adapted"]
    if out is not None:
        save_grid(rows, out, nrow=nrow)
        click.echo(f"wrote {out} ({len(names)} images x {len(rows)} row(s))")
    if outdir is not None:
        for name, imgs in zip(row_names, rows):
            save_images(imgs, Path(outdir) / name if len(rows) > 1 else Path(outdir), names)
        click.echo(f"wrote {len(names) * len(rows)} PNGs to {outdir}")


if __name__ == "__main__":
    try:
        command.main(standalone_mode=False)
    except click.ClickException as e:
        e.show()
        raise SystemExit(e.exit_code)
    except IPLError as e:  # same contract as `ipl`: one clear message, exit 2
        click.echo(f"Error: {e}", err=True)
        raise SystemExit(2)
