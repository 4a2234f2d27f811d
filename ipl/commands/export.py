"""`ipl export RUN --format rosinality`: write the adapted generator in another tool's format (rosinality `.pt`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from ipl.core.errors import IPLError


@click.command(context_settings={"show_default": True})
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["rosinality"]), default="rosinality",
              help="Output format: rosinality/stylegan2-pytorch .pt (keys g_ema, latent_avg).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output file [default: RUN/generator_rosinality.pt].")
@click.option("--source", "which", flag_value="source", default=False,
              help="Export the run's source generator instead of the adapted one.")
def command(run: str, fmt: str, out: Optional[str], which) -> None:
    """Export the adapted generator of RUN to another tool's checkpoint format."""
    from ipl.core.atomic import check_writable
    from ipl.run import CONFIG, GENERATOR, export_run_generator, read_run_config, require_safetensors

    run_dir = Path(run)
    if not (run_dir / CONFIG).is_file():
        raise IPLError(f"{run_dir} is not an ipl run folder (no {CONFIG})")
    config = read_run_config(run_dir)  # a corrupt config.json: one message naming it
    target = Path(out) if out else run_dir / (f"source_{fmt}.pt" if which == "source" else f"generator_{fmt}.pt")
    check_writable(target, "--out")  # before the generator is loaded
    src = Path(config["resolved"]["source_path"]) if which == "source" else run_dir / GENERATOR
    if not src.is_file():
        raise IPLError(f"{src} does not exist; the run has not finished (status {config.get('status')!r})")
    if which != "source":
        require_safetensors(src)  # the run's own generator: never read as a pickle or torch.save file
    export_run_generator(config, src, target, fmt)
    click.echo(str(target))
