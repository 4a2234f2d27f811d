"""`ipl sample`: render seeds from a checkpoint (any StyleGAN2 format) or a run folder into a grid or PNGs."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import click
import torch

from ipl.errors import IPLError
from ipl.interface import AdaptableGenerator

PathLike = Union[str, os.PathLike]


@dataclass
class NamedGenerator:
    """One row of the output: an AdaptableGenerator and the name its images are filed under."""
    name: str
    generator: AdaptableGenerator


def parse_seeds(text: str) -> list[int]:
    """'0-15' / '1,5,9' / '0-3,10' -> list of ints (ranges inclusive)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise IPLError(f"--seeds: range '{part}' runs backwards; write it as {hi}-{lo}")
            seeds.extend(range(lo, hi + 1))
        elif re.fullmatch(r"\d+", part):
            seeds.append(int(part))
        else:
            raise IPLError(f"--seeds: cannot read '{part}'; use e.g. 0-15 or 1,5,9 or 0-3,10")
    if not seeds:
        raise IPLError("--seeds is empty; use e.g. 0-15")
    return seeds


def resolve_generators(path: PathLike, device: Union[str, torch.device] = "cpu",
                       source_too: bool = False) -> list[NamedGenerator]:
    """The generators `ipl sample PATH` renders, as rows: a checkpoint gives one; a run folder its adapted
    generator (and, with source_too, the source generator first, which also draws the latents)."""
    import generators

    path = Path(path)
    if not path.exists():
        raise IPLError(f"{path}: no such checkpoint file or run folder")
    if path.is_dir() and (path / "config.json").is_file():
        # A run folder written by `ipl adapt` (ipl/run.py owns its layout).
        from ipl.run import load_run

        info = load_run(path, device=str(device))
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
    G = getattr(generator, "G", None)
    if class_idx is not None:
        if G is None or not hasattr(G, "c_dim"):
            raise IPLError("--class only applies to conditional StyleGAN2 generators")
        if G.c_dim == 0:
            raise IPLError("--class was given but the generator is unconditional (c_dim = 0)")
        if not 0 <= class_idx < G.c_dim:
            raise IPLError(f"--class {class_idx} is out of range; this generator has {G.c_dim} classes "
                           f"(0..{G.c_dim - 1})")
    out = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        if class_idx is None:
            out.append(generator.sample_latents(1, gen, truncation=truncation))
        else:
            z = torch.randn([1, G.z_dim], generator=gen).to(G.w_avg.device)
            c = torch.zeros([1, G.c_dim], device=G.w_avg.device)
            c[0, class_idx] = 1
            out.append(G.mapping(z, c, truncation_psi=truncation)[:, 0])
    return torch.cat(out)


@torch.no_grad()
def render_rows(rows: list[AdaptableGenerator], seeds: list[int], truncation: float = 1.0,
                class_idx: Optional[int] = None, batch: int = 8, progress: bool = True) -> list[torch.Tensor]:
    """For each row, images [len(seeds), 3, H, W] (raw, [-1, 1] nominal); latents come from the first row."""
    from tqdm import tqdm

    out: list[list[torch.Tensor]] = [[] for _ in rows]
    with tqdm(total=len(seeds), desc="sampling", unit="img", disable=not progress or len(seeds) <= batch) as bar:
        for i in range(0, len(seeds), batch):
            latents = seed_latents(rows[0], seeds[i: i + batch], truncation, class_idx)
            for r, generator in enumerate(rows):
                out[r].append(generator.render(latents).float().cpu())
            bar.update(len(latents))
    return [torch.cat(images) for images in out]


def render_seeds(G: torch.nn.Module, seeds: list[int], truncation: float = 1.0, noise_mode: str = "const",
                 class_idx: Optional[int] = None, batch: int = 8, progress: bool = True) -> torch.Tensor:
    """Images [len(seeds), 3, H, W] from a StyleGAN2 Generator (or any AdaptableGenerator), one seed each."""
    from generators.stylegan2.adapter import StyleGAN2Adapter

    generator = G if isinstance(G, AdaptableGenerator) else StyleGAN2Adapter(G, noise_mode=noise_mode)
    return render_rows([generator], seeds, truncation, class_idx, batch, progress)[0]


def _is_diffusion(target: PathLike) -> bool:
    """True for a diffusion run folder, an ipl diffusion file, a diffusers folder or a diffusion registry name."""
    from generators.diffusion import is_diffusion_checkpoint

    return is_diffusion_checkpoint(target)


@click.command("sample")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--ckpt", type=click.Path(path_type=Path), help="Generator checkpoint (.pt/.pkl/.safetensors) "
              "or run folder; same as the positional PATH.")
@click.option("--n", "n", type=int, default=None, help="Number of images (seeds 0..n-1 unless --seeds). [default: 16]")
@click.option("--seeds", type=str, default=None, help="Seeds, e.g. 0-15 or 1,5,9 (one image per seed).")
@click.option("--truncation", type=float, default=1.0, show_default=True, help="Truncation psi toward w_avg.")
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
    from ipl.images import save_grid, save_images

    if path is not None and ckpt is not None and Path(path) != Path(ckpt):
        raise IPLError("give the generator either as PATH or as --ckpt, not both")
    target = ckpt if ckpt is not None else path
    if target is None:
        raise IPLError("no generator given: use `ipl sample --ckpt FILE` or `ipl sample RUN_FOLDER`")
    if _is_diffusion(target):
        if class_idx is not None:
            raise IPLError("--class only applies to conditional StyleGAN2 generators, not diffusion models")
        if truncation != 1.0:
            raise IPLError("--truncation does not apply to diffusion models (no truncation trick); drop it")
        from generators.diffusion import sampling

        # Diffusion models sample from seeded noise (and edit real images): their own command does it.
        click.get_current_context().invoke(sampling.command, path=Path(target), n=n, seeds=seeds, steps=steps,
                                           edit_dir=edit_dir, source_too=source_too, out=out, outdir=outdir,
                                           nrow=nrow, batch=batch, device=device)
        return
    if steps is not None or edit_dir is not None:
        raise IPLError(f"--steps and --edit apply to diffusion models and runs only; {target} is not one")
    if seeds is not None:
        seed_list = parse_seeds(seeds)
        if n is not None and n != len(seed_list):
            raise IPLError(f"--n {n} disagrees with --seeds {seeds} ({len(seed_list)} seeds); give one or make "
                           f"them match")
    else:
        if n is not None and n <= 0:
            raise IPLError(f"--n must be positive, got {n}")
        seed_list = list(range(16 if n is None else n))
    if batch <= 0:
        raise IPLError(f"--batch must be positive, got {batch}")
    if out is None and outdir is None:
        out = Path("grid.png")

    rows = resolve_generators(target, device=device, source_too=source_too)
    for row in rows:
        if hasattr(row.generator, "noise_mode"):
            row.generator.noise_mode = noise_mode
    images = render_rows([row.generator for row in rows], seed_list, truncation=truncation, class_idx=class_idx,
                         batch=batch)
    if out is not None:
        save_grid(images, out, nrow=nrow)
        click.echo(f"wrote {out} ({len(seed_list)} seeds x {len(rows)} generator(s))")
    if outdir is not None:
        names = [f"seed{s:04d}" for s in seed_list]
        for row, imgs in zip(rows, images):
            folder = Path(outdir) / row.name if len(rows) > 1 else Path(outdir)
            save_images(imgs, folder, names)
        click.echo(f"wrote {len(seed_list) * len(rows)} PNGs to {outdir}")
