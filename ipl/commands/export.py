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
    import json

    from ipl import generators
    from ipl.run import CONFIG, GENERATOR, require_safetensors

    from ipl.core.atomic import check_writable
    from ipl.run import read_run_config

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
    generator = generators.load_adaptable(str(src), device="cpu")
    if fmt not in generator.export_formats:
        raise IPLError(f"{src}: this generator cannot be written as {fmt!r} (formats it can write: "
                       f"{', '.join(generator.export_formats) or 'none'})")
    meta = {"source": config["settings"]["source"], "target_text": config["settings"]["target_text"],
            "method": config["settings"]["method"], "exported_from": str(src)}
    generator.export(str(target), fmt, meta)
    click.echo(str(target))
