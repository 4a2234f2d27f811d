"""`ipl edit`: real images through adapted generators (StyleGAN2: inversion into the run's source; diffusion: the
DDIM-inversion edit), as a grid input | reconstruction | one column per run."""
from __future__ import annotations

from pathlib import Path

import click

from ipl.core.errors import IPLError


def split_args(args: tuple[Path, ...]) -> tuple[list[Path], list[Path]]:
    """Leading run folders (holding config.json), then the images (files or folders)."""
    from ipl.inversion import is_run

    runs = []
    for i, p in enumerate(args):
        if not is_run(p):
            return runs, list(args[i:])
        runs.append(p)
    return runs, []


@click.command("edit")
@click.argument("args", nargs=-1, type=click.Path(path_type=Path), metavar="RUN [RUN2 ...] [IMAGES...]")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder (grid.png, inputs/, "
              "reconstructions/, adapted/<run>/, latents.pt, edit.json).")
@click.option("--latents", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
              help="latents.pt from `ipl invert` to reuse (no new inversion); without IMAGES, all its images.")
@click.option("--space", type=click.Choice(["w", "w+"]), default="w+", show_default=True, help="As `ipl invert`.")
@click.option("--steps", type=int, default=None, help="Inversion steps [default: the source's].")
@click.option("--loss", type=click.Choice(["lpips", "mse"]), default=None, help="Inversion distance [default: "
              "the source's].")
@click.option("--lpips-weights", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Local copy of the LPIPS backbone's torchvision weights.")
@click.option("--batch", "batch_size", type=int, default=None, help="Images inverted at once.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Write into an --out that already holds an edit.")
@click.option("--device", type=str, default="cpu", show_default=True, help="cpu, cuda[:i] or auto.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(args, out, latents, space, steps, loss, lpips_weights, batch_size, seed, force, device, quiet) -> None:
    """Put real IMAGES through one or more adapted generators (RUN: folders of `ipl adapt`)."""
    from ipl.inversion import edit_to_folder

    runs, images = split_args(args)
    if not runs:
        raise IPLError(f"{args[0] if args else 'RUN'}: the first argument must be a run folder of `ipl adapt` "
                       "(with config.json): `ipl edit RUN [RUN2 ...] IMAGES... --out DIR`")
    if not images and latents is None:
        raise IPLError("no images given: `ipl edit RUN IMAGES... --out DIR` (or --latents FILE from `ipl invert`)")
    summary = edit_to_folder(runs, images, out, latents=latents, force=force, progress=not quiet, steps=steps,
                             loss=loss, device=device, space=space, seed=seed, batch_size=batch_size,
                             lpips_weights=str(lpips_weights) if lpips_weights else None)
    click.echo(f"edited {len(summary['images'])} image(s) with {len(runs)} run(s) into {out / 'grid.png'}")
