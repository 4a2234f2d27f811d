"""`ipl sample`: render seeds from a checkpoint (any StyleGAN2 format) or a run folder into a grid or PNGs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import click
import torch

from ipl import generators
from ipl.core.errors import IPLError
from ipl.core.images import read_image_folder, save_grid, save_images
from ipl.core.seeds import parse_seeds
from ipl.core.interface import AdaptableGenerator
from ipl.registry import get_source, is_registry_name
from ipl.run import load_run, resolve_source

PathLike = Union[str, os.PathLike]


@dataclass
class NamedGenerator:
    """One row of the output: an AdaptableGenerator and the name its images are filed under."""
    name: str
    generator: AdaptableGenerator


def resolve_generators(path: PathLike, device: Union[str, torch.device] = "cpu",
                       source_too: bool = False) -> list[NamedGenerator]:
    """The generators `ipl sample PATH` renders, as rows: a checkpoint gives one; a run folder its adapted
    generator (and, with source_too, the source generator first)."""
    if not Path(path).exists() and is_registry_name(str(path)):  # a registry name: its (shipped or cached) file
        path = resolve_source(str(path))[0]
    path = Path(path)
    if not path.exists():
        raise IPLError(f"{path}: no such checkpoint file, run folder or registry name (see `ipl models list`)")
    if path.is_dir() and (path / "config.json").is_file():
        info = load_run(path, device=str(device))  # a run folder written by `ipl adapt`
        rows = [NamedGenerator("adapted", info.adapted_generator)]
        if source_too:
            rows.insert(0, NamedGenerator("source", info.source_generator))
        return rows
    if source_too:
        raise IPLError(f"{path}: --source-too needs a run folder (from `ipl adapt`), not a single checkpoint")
    return [NamedGenerator("generator", generators.load_adaptable(path, device=device))]


def seed_latents(generator: AdaptableGenerator, seeds: list[int], truncation: float = 1.0,
                 class_idx: Optional[int] = None) -> torch.Tensor:
    """One latent per seed, each drawn from its own torch.Generator (so batches never change images)."""
    return generator.seed_latents(seeds, truncation, class_idx)


@torch.no_grad()
def render_rows(rows: list[AdaptableGenerator], seeds: list[int], truncation: float = 1.0,
                class_idx: Optional[int] = None, batch: int = 8, progress: bool = True,
                steps: Optional[int] = None) -> list[torch.Tensor]:
    """For each row, images [len(seeds), 3, H, W] (raw, [-1, 1] nominal), the same seeds in every row."""
    from tqdm import tqdm

    out: list[list[torch.Tensor]] = [[] for _ in rows]
    with tqdm(total=len(seeds), desc="sampling", unit="img", disable=not progress or len(seeds) <= batch) as bar:
        for i in range(0, len(seeds), batch):
            chunk = seeds[i: i + batch]
            for r, generator in enumerate(rows):
                out[r].append(generator.sample_seeds(chunk, truncation, class_idx, steps).float().cpu())
            bar.update(len(chunk))
    return [torch.cat(images) for images in out]


def render_seeds(G: torch.nn.Module, seeds: list[int], truncation: float = 1.0, noise_mode: str = "const",
                 class_idx: Optional[int] = None, batch: int = 8, progress: bool = True) -> torch.Tensor:
    """Images [len(seeds), 3, H, W] from a StyleGAN2 Generator (or any AdaptableGenerator), one seed each."""
    from ipl.generators.stylegan2.adapter import StyleGAN2Adapter

    generator = G if isinstance(G, AdaptableGenerator) else StyleGAN2Adapter(G, noise_mode=noise_mode)
    return render_rows([generator], seeds, truncation, class_idx, batch, progress)[0]


@click.command("sample")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--ckpt", type=click.Path(path_type=Path), help="Generator checkpoint (.pt/.pkl/.safetensors), "
              "run folder or registry name (e.g. toy); same as the positional PATH.")
@click.option("--n", "n", type=int, default=None, help="Number of images (seeds 0..n-1 unless --seeds). [default: 16]")
@click.option("--seeds", type=str, default=None, help="Seeds, e.g. 0-15 or 1,5,9 (one image per seed).")
@click.option("--truncation", type=float, default=None, help="Truncation psi toward w_avg [default: the "
              "registry's sample truncation for a registry name (ffhq 0.7), else 1.0].")
@click.option("--noise-mode", type=click.Choice(["const", "random", "none"]), default="const", show_default=True)
@click.option("--class", "class_idx", type=int, default=None, help="Class index for conditional generators "
              "(default: a random class per seed).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Grid PNG to write. "
              "[default: grid.png when --outdir is not given]")
@click.option("--outdir", type=click.Path(path_type=Path), default=None, help="Folder for one PNG per seed.")
@click.option("--nrow", type=int, default=None, help="Images per grid line (default: square-ish for one "
              "generator, one line per generator otherwise).")
@click.option("--source-too", is_flag=True, help="For a run folder: also render the source generator "
              "(grid rows: source over adapted).")
@click.option("--steps", type=int, default=None, help="Diffusion only: DDIM steps from noise [default: the "
              "model's sample_steps].")
@click.option("--edit", "edit_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Diffusion runs only: folder of real images to move into the target domain (rows: input over "
              "edited).")
@click.option("--batch", type=int, default=8, show_default=True, help="Images per forward pass.")
@click.option("--device", type=str, default="cpu", show_default=True, help="cpu or cuda[:i].")
def command(path, ckpt, n, seeds, truncation, noise_mode, class_idx, out, outdir, nrow, source_too, steps, edit_dir,
            batch, device) -> None:
    """Render images from a StyleGAN2 checkpoint (rosinality .pt, NVIDIA .pkl, ipl .safetensors), a diffusion
    model, or a run."""
    if truncation is None:
        named = path if path is not None else ckpt
        truncation = (get_source(str(named)).sample_truncation if named is not None and not Path(named).exists()
                      and is_registry_name(str(named)) else 1.0)
    if path is not None and ckpt is not None and Path(path) != Path(ckpt):
        raise IPLError("give the generator either as PATH or as --ckpt, not both")
    target = ckpt if ckpt is not None else path
    if target is None:
        raise IPLError("no generator given: use `ipl sample --ckpt FILE` or `ipl sample RUN_FOLDER`")
    if batch <= 0:
        raise IPLError(f"--batch must be positive, got {batch}")
    if out is None and outdir is None:
        out = Path("grid.png")
    from ipl.core.atomic import check_writable

    if out is not None:
        check_writable(out, "--out")  # before any model is loaded
    if outdir is not None:
        check_writable(outdir, "--outdir", folder=True)
    if edit_dir is not None:  # real images moved into the target domain: rows are input over edited
        if not (Path(target) / "config.json").is_file():
            raise IPLError(f"--edit needs a run folder (source + adapted generator); {target} is one generator")
        rows = resolve_generators(target, device=device, source_too=True)
        images = read_image_folder(edit_dir, rows[1].generator.resolution)
        edited = torch.cat([rows[1].generator.edit_images(rows[0].generator, x) for x in images.split(batch)])
        _write([images, edited], ["input", "edited"], [f"edit{i:04d}" for i in range(len(images))],
               out, outdir, nrow)
        return
    if seeds is not None:
        seed_list = parse_seeds(seeds)
        if n is not None and n != len(seed_list):
            raise IPLError(f"--n {n} disagrees with --seeds {seeds} ({len(seed_list)} seeds); give one or make "
                           f"them match")
    else:
        if n is not None and n <= 0:
            raise IPLError(f"--n must be positive, got {n}")
        seed_list = list(range(16 if n is None else n))
    rows = resolve_generators(target, device=device, source_too=source_too)
    for row in rows:
        row.generator.set_noise_mode(noise_mode)
    images = render_rows([row.generator for row in rows], seed_list, truncation=truncation, class_idx=class_idx,
                         batch=batch, steps=steps)
    _write(images, [row.name for row in rows], [f"seed{s:04d}" for s in seed_list], out, outdir, nrow)


def _write(images: list[torch.Tensor], row_names: list[str], names: list[str], out: Optional[Path],
           outdir: Optional[Path], nrow: Optional[int]) -> None:
    """One grid (a row per generator) and/or one PNG per image (a subfolder per row when there are several)."""
    if out is not None:
        save_grid(images, out, nrow=nrow)
        click.echo(f"wrote {out} ({len(names)} images x {len(images)} row(s))")
    if outdir is not None:
        for row_name, imgs in zip(row_names, images):
            save_images(imgs, Path(outdir) / row_name if len(images) > 1 else Path(outdir), names)
        click.echo(f"wrote {len(names) * len(images)} PNGs to {outdir}")
