"""`ipl invert`: real images into a source generator's latents (latents.pt, reconstructions, a grid)."""
from __future__ import annotations

from pathlib import Path

import click

from ipl.core.errors import IPLError


@click.command("invert")
@click.argument("source", type=str)
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder (latents.pt, inputs/, "
              "reconstructions/, grid.png, invert.json).")
@click.option("--space", type=click.Choice(["w", "w+"]), default="w+", show_default=True,
              help="w: NVIDIA's projector (one w per image); w+: its W result refined per layer (half the steps "
              "each).")
@click.option("--steps", type=int, default=None, help="Optimisation steps [default: the source's; StyleGAN2 1000 "
              "(NVIDIA), toy 200].")
@click.option("--loss", type=click.Choice(["lpips", "mse"]), default=None, help="Distance to the image "
              "[default: the source's; StyleGAN2 lpips (needs the VGG16 ImageNet weights), toy mse].")
@click.option("--lpips-weights", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Local copy of the LPIPS backbone's torchvision weights (vgg16-397923af.pth).")
@click.option("--pti-steps", type=int, default=0, show_default=True, help="Pivotal tuning steps after the search "
              "(PTI: 350); the tuned generator of each batch is saved in pti/.")
@click.option("--batch", "batch_size", type=int, default=None, help="Images optimised at once [default: 16 up to "
              "128 px, else 4].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Skip images already in --out's latents.pt (same source and settings).")
@click.option("--force", is_flag=True, help="Write into an --out that already holds results, redoing every image.")
@click.option("--device", type=str, default="cpu", show_default=True, help="cpu, cuda[:i] or auto.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(source, images, out, space, steps, loss, lpips_weights, pti_steps, batch_size, seed, resume, force,
            device, quiet) -> None:
    """Invert IMAGES (files or folders) into the SOURCE generator (registry name or checkpoint). Images are
    centre-cropped to a square and resized to the generator's resolution; faces are not aligned."""
    from ipl.inversion import InvertConfig, invert_to_folder

    if not images:
        raise IPLError("no images given: `ipl invert SOURCE IMAGE_OR_FOLDER... --out DIR`")
    ctx = click.get_current_context()
    given = [name for name in ("space", "steps", "loss", "pti_steps", "batch_size", "seed")
             if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    cfg = InvertConfig(source=source, space=space, steps=steps, loss=loss, pti_steps=pti_steps, batch_size=batch_size,
                       seed=seed, device=device, lpips_weights=str(lpips_weights) if lpips_weights else None,
                       filled_by={k: "flag" for k in given})
    summary = invert_to_folder(cfg, list(images), out, resume=resume, force=force, progress=not quiet)
    click.echo(f"inverted {summary['inverted_now']} image(s) ({summary['skipped']} skipped) into {out}: "
               f"{out / 'latents.pt'}, {out / 'grid.png'}")
