"""Real images into a source generator's latents (`ipl invert`) and through adapted generators (`ipl edit`).

The generator family does the search (`AdaptableGenerator.project`, `pivotal_tune`); this module reads the images,
builds the distance (LPIPS from local weights, or MSE), batches, writes latents.pt / PNGs / grids / the settings
JSON, and resumes. Images are centre-cropped to a square and resized to the generator's resolution; nothing aligns
faces (docs/invert.md).

Output folder of `ipl invert` (and `ipl edit`, which adds adapted/<run>/ and its own grid):
    latents.pt              {"format", "source", "source_sha256", "settings", "entries": {name: {"latent",
                            "file", "source_sha256", "psnr", "pti"}}}, rewritten after every batch
    inputs/<name>.png       the image as fitted to the generator (what was inverted)
    reconstructions/<name>.png
    pti/batch_NNNN.safetensors   with --pti-steps: the tuned source generator of that batch
    grid.png                one row per image: input | reconstruction (| adapted, one column per run)
    invert.json / edit.json the settings (InvertConfig) and per-image results
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ipl.core.atomic import check_writable, torch_save, write_json
from ipl.core.errors import IPLError, WeightsNotFoundError
from ipl.core.images import list_images, read_image, save_grid, save_images
from ipl.core.interface import AdaptableGenerator
from ipl.core.lpips_model import load_lpips

PathLike = Union[str, os.PathLike]
Images = Union[Sequence[PathLike], torch.Tensor]
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LATENTS = "latents.pt"
LATENTS_FORMAT = "ipl-latents-1"
LOSSES = ("lpips", "mse")
SPACES = ("w", "w+")
# Settings that must match for --resume (and for reusing a latents file) to continue the same inversion.
RESUME_KEYS = ("space", "steps", "loss", "lpips_net", "pti_steps", "seed")


@dataclass
class InvertConfig:
    """Settings of one inversion (written as JSON next to the results)."""

    source: str = ""                  # registry name or checkpoint path ("<object>" for a generator passed in)
    space: str = "w+"                 # "w": NVIDIA's projector; "w+": its W result refined per layer
    steps: Optional[int] = None       # None: the source's default (StyleGAN2: 1000 as NVIDIA; toy: 200)
    loss: Optional[str] = None        # lpips | mse; None: the source's default (StyleGAN2: lpips; toy: mse)
    lpips_net: str = "vgg"            # LPIPS backbone (NVIDIA's projector measures with VGG16 features)
    lpips_weights: Optional[str] = None  # a local copy of the backbone's torchvision weights
    pti_steps: int = 0                # pivotal tuning steps after the search (0: none; PTI: 350)
    batch_size: Optional[int] = None  # images optimised at once; None: 16 up to 128 px, else 4
    seed: int = 0
    device: str = "cpu"
    filled_by: dict = field(default_factory=dict)  # setting -> where its value came from ("flag", "source:NAME")

    def validate(self) -> "InvertConfig":
        """Refuse settings that cannot work, saying what to change."""
        if self.space not in SPACES:
            raise IPLError(f"--space {self.space!r}: choose one of {', '.join(SPACES)}")
        if self.loss is not None and self.loss not in LOSSES:
            raise IPLError(f"--loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if self.steps is not None and not 1 <= int(self.steps) <= 1_000_000:
            raise IPLError(f"--steps must be between 1 and 1000000, got {self.steps}")
        if not 0 <= int(self.pti_steps) <= 1_000_000:
            raise IPLError(f"--pti-steps must be between 0 and 1000000, got {self.pti_steps}")
        if self.batch_size is not None and not 1 <= int(self.batch_size) <= 1024:
            raise IPLError(f"--batch must be between 1 and 1024, got {self.batch_size}")
        return self

    def resolve(self, generator: AdaptableGenerator, label: str) -> "InvertConfig":
        """Fill unset settings from the generator's projection defaults (recorded in filled_by as `label`)."""
        cfg = dataclasses.replace(self, filled_by=dict(self.filled_by))
        defaults = dict(generator.projection_defaults)
        for name in ("steps", "loss"):
            if getattr(cfg, name) is None:
                if name in defaults:
                    setattr(cfg, name, defaults[name])
                    cfg.filled_by.setdefault(name, label)
                elif name == "loss":
                    cfg.loss = "lpips"
        if cfg.batch_size is None:
            cfg.batch_size = 16 if generator.resolution <= 128 else 4
        return cfg.validate()

    def same_search(self, other: dict[str, Any]) -> list[str]:
        """Names of RESUME_KEYS whose values differ from a recorded settings dict."""
        mine = dataclasses.asdict(self)
        return [k for k in RESUME_KEYS if other.get(k) != mine[k]]


@dataclass
class InversionResult:
    """What `invert` returns: tensors on the CPU, one row per image, images in [-1, 1]."""

    latents: torch.Tensor                 # [N, ...] the source generator's latents (StyleGAN2: W+)
    reconstructions: torch.Tensor         # [N, 3, H, W] renders of the latents (by the PTI generator if tuned)
    inputs: torch.Tensor                  # [N, 3, H, W] the images as fitted to the generator
    names: list[str] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    config: Optional[InvertConfig] = None
    tuned: list[AdaptableGenerator] = field(default_factory=list)   # --pti-steps: one per batch
    seconds: float = 0.0


@dataclass
class EditResult:
    """What `edit` returns: tensors on the CPU in [-1, 1], one row per image."""

    inputs: torch.Tensor                  # [N, 3, H, W]
    reconstructions: torch.Tensor         # [N, 3, H, W] the first run's source reconstruction (diffusion: DDIM)
    adapted: dict[str, torch.Tensor] = field(default_factory=dict)   # run path -> [N, 3, H, W]
    names: list[str] = field(default_factory=list)
    latents: Optional[torch.Tensor] = None


# ------------------------------------------------------------------------------------------------ distances
def mse_distance(renders: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error [N] (images in [-1, 1])."""
    return (renders - images).square().mean((1, 2, 3))


def lpips_distance(net: str = "vgg", weights: Optional[str] = None, device: Union[str, torch.device] = "cpu"
                   ) -> Distance:
    """LPIPS v0.1 with its pretrained backbone from local weights (never a random one): per-image distances [N].
    Images above 256 px are area-downsampled to 256 first, as NVIDIA's projector does for its VGG."""
    try:
        model, _ = load_lpips(net, weights, allow_random=False, device=device)
    except WeightsNotFoundError as e:
        raise WeightsNotFoundError(f"--loss lpips: {e} Or use --loss mse, which needs no download.") from None

    def distance(renders: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if renders.shape[-1] > 256:
            renders = F.interpolate(renders, size=(256, 256), mode="area")
            images = F.interpolate(images, size=(256, 256), mode="area")
        return model(renders, images).reshape(len(renders))

    return distance


def build_distance(cfg: InvertConfig, device: Union[str, torch.device]) -> Distance:
    """The search distance of a resolved config."""
    if cfg.loss == "mse":
        return mse_distance
    return lpips_distance(cfg.lpips_net, cfg.lpips_weights, device)


def pti_distance(distance: Distance) -> Distance:
    """PTI's tuning loss: L2 + LPIPS (weights 1, 1); with --loss mse only the L2."""
    if distance is mse_distance:
        return mse_distance
    return lambda renders, images: mse_distance(renders, images) + distance(renders, images)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR [N] in dB of images in [-1, 1] (peak-to-peak 2), both clamped to the range."""
    mse = (a.float().clamp(-1, 1) - b.float().clamp(-1, 1)).square().mean((1, 2, 3))
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


# ------------------------------------------------------------------------------------------------ inputs
def fit_tensor(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Images [N, 3, H, W] in [-1, 1] centre-cropped to a square and resized (antialiased) to resolution."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise IPLError(f"images must be a tensor [N, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
    x = images.detach().float().cpu()
    h, w = x.shape[-2:]
    s = min(h, w)
    x = x[:, :, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    if s != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(-1, 1)


def unique_names(paths: Sequence[Path]) -> list[str]:
    """File stems, made unique with a numeric suffix (a/x.png and b/x.jpg -> x, x_1)."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        name = p.stem
        while name in seen:
            seen[p.stem] += 1
            name = f"{p.stem}_{seen[p.stem]}"
        seen.setdefault(name, 0)
        out.append(name)
    return out


def read_inputs(images: Images, resolution: int) -> tuple[torch.Tensor, list[str], list[str], list[str]]:
    """(images [N, 3, R, R], names, files, errors): every readable image; one message per unreadable file."""
    if isinstance(images, torch.Tensor):
        x = fit_tensor(images, resolution)
        return x, [f"image{i:04d}" for i in range(len(x))], ["<tensor>"] * len(x), []
    files = list_images(images)
    names = unique_names(files)
    out, kept_names, kept_files, errors = [], [], [], []
    for path, name in zip(files, names):
        try:
            out.append(read_image(path, resolution))
        except IPLError as e:
            errors.append(str(e))
            continue
        kept_names.append(name)
        kept_files.append(str(path))
    x = torch.stack(out) if out else torch.zeros([0, 3, resolution, resolution])
    return x, kept_names, kept_files, errors


# ------------------------------------------------------------------------------------------------ sources
def is_run(path: PathLike) -> bool:
    """True for a run folder of `ipl adapt` (its config.json has settings and resolved facts; a diffusers model
    folder also has a config.json, without them)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "settings" in data and "resolved" in data


def load_source(source: Union[PathLike, AdaptableGenerator], device: str, progress: bool = True
                ) -> tuple[AdaptableGenerator, Optional[str], str, str]:
    """(generator, SHA-256 or None, label for provenance, the source as text) for a registry name, checkpoint path
    or an AdaptableGenerator object (as `ipl adapt --source` resolves one)."""
    if isinstance(source, AdaptableGenerator):
        return source.to(device), None, "source:<object>", "<object>"
    from ipl import generators
    from ipl.run import resolve_source

    text = str(source)
    if is_run(text):
        raise IPLError(f"{text} is a run folder; `ipl invert` takes the source generator (a registry name or a "
                       f"checkpoint). To put images through a run, use `ipl edit {text} IMAGES...`")
    path, digest, entry = resolve_source(text, allow_download=True, progress=progress)
    generator = generators.load_adaptable(path, device=device)
    label = f"source:{entry.name}" if entry is not None else f"source:{path.name}"
    return generator, digest, label, text


def _device(name: str) -> str:
    from ipl.run import resolve_device

    return str(resolve_device(name))


# ------------------------------------------------------------------------------------------------ inversion
def invert_tensor(generator: AdaptableGenerator, images: torch.Tensor, cfg: InvertConfig,
                  distance: Optional[Distance] = None, progress: bool = True,
                  on_batch: Optional[Callable[[int, int, torch.Tensor, torch.Tensor, Optional[AdaptableGenerator]],
                                              None]] = None) -> InversionResult:
    """Invert fitted images [N, 3, R, R] batch by batch with a resolved config. `on_batch(start, stop, latents,
    reconstructions, tuned)` is called after each batch (the folder writer saves there)."""
    from tqdm import tqdm

    if not generator.can_project:
        generator.project(images, mse_distance)  # raises the family's own message: it cannot invert
    device = next(iter(generator.parameters())).device
    distance = distance or build_distance(cfg, device)
    latents, recons, tuned = [], [], []
    t0 = time.perf_counter()
    with tqdm(total=len(images), desc="inverting", unit="img", disable=not progress) as bar:
        for start in range(0, len(images), cfg.batch_size):
            x = images[start:start + cfg.batch_size].to(device)
            lat = generator.project(x, distance, space=cfg.space, steps=cfg.steps, seed=cfg.seed + start,
                                    progress=progress)
            renderer = generator
            if cfg.pti_steps:
                renderer = generator.pivotal_tune(lat, x, pti_distance(distance), cfg.pti_steps, progress=progress)
                tuned.append(renderer)
            with torch.no_grad():
                rec = renderer.render(lat).float().cpu()
            latents.append(lat.cpu())
            recons.append(rec)
            if on_batch is not None:
                on_batch(start, start + len(x), lat.cpu(), rec, renderer if cfg.pti_steps else None)
            bar.update(len(x))
    rec = torch.cat(recons) if recons else images[:0]
    return InversionResult(latents=torch.cat(latents) if latents else torch.zeros(0), reconstructions=rec,
                           inputs=images.cpu(), psnr=psnr(rec, images.cpu()).tolist(), config=cfg, tuned=tuned,
                           seconds=time.perf_counter() - t0)


def invert(source: Union[PathLike, AdaptableGenerator], images: Images, *, space: str = "w+",
           steps: Optional[int] = None, loss: Optional[str] = None, pti_steps: int = 0,
           batch_size: Optional[int] = None, device: str = "cpu", seed: int = 0, progress: bool = True,
           lpips_weights: Optional[str] = None) -> InversionResult:
    """Invert real images (files, folders, or a tensor [N, 3, H, W] in [-1, 1]) into a source generator."""
    dev = _device(device)
    generator, _, label, text = load_source(source, dev, progress)
    given = {k for k, v in (("steps", steps), ("loss", loss), ("batch_size", batch_size)) if v is not None}
    cfg = InvertConfig(source=text, space=space, steps=steps, loss=loss, pti_steps=pti_steps, batch_size=batch_size,
                       seed=seed, device=dev, lpips_weights=lpips_weights,
                       filled_by={k: "flag" for k in given}).validate().resolve(generator, label)
    x, names, _, errors = read_inputs(images, generator.resolution)
    if errors:
        raise IPLError("; ".join(errors))
    result = invert_tensor(generator, x, cfg, progress=progress)
    result.names = names
    return result


def _load_latents_file(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise IPLError(f"{path}: cannot read it as an `ipl invert` latents file ({type(e).__name__}: {e}); "
                       f"expected the {LATENTS} written by `ipl invert`") from e
    if not isinstance(data, dict) or data.get("format") != LATENTS_FORMAT:
        raise IPLError(f"{path}: not an `ipl invert` latents file (format {LATENTS_FORMAT!r} expected)")
    return data


def _rows(inputs: torch.Tensor, *columns: torch.Tensor) -> list[torch.Tensor]:
    """One grid row per image: its input, then each column's image."""
    return [torch.stack([inputs[i], *(c[i] for c in columns)]) for i in range(len(inputs))]


def _save_rows(rows: list[torch.Tensor], path: Path) -> None:
    """A grid with one line per image (also for a single image, which make_grid would wrap square)."""
    save_grid(rows, path, nrow=len(rows[0]))


def _read_png(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32).copy()
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


def prepare_out(out: Path, resume: bool, force: bool, marker: str) -> None:
    """Refuse an --out that holds results unless resuming or forced; create it."""
    if out.exists() and not out.is_dir():
        raise IPLError(f"--out {out} exists and is not a folder; choose another --out")
    check_writable(out, "--out", folder=True)
    if (out / marker).exists() and not resume and not force:
        raise IPLError(f"{out} already holds results ({out / marker}). Pass --resume to continue (images already "
                       f"done are skipped), --force to redo them, or choose another --out. Nothing was written.")
    out.mkdir(parents=True, exist_ok=True)


def invert_to_folder(cfg: InvertConfig, images: Sequence[PathLike], out: PathLike, resume: bool = False,
                     force: bool = False, progress: bool = True) -> dict[str, Any]:
    """`ipl invert`: invert image files into `out` (latents.pt, PNGs, grid.png, invert.json); with `resume`, images
    already in latents.pt are skipped. Unreadable images are reported at the end (IPLError) after the rest ran."""
    out = Path(out)
    cfg.validate()
    prepare_out(out, resume, force, LATENTS)
    dev = _device(cfg.device)
    generator, digest, label, text = load_source(cfg.source, dev, progress)
    cfg = dataclasses.replace(cfg, source=text, device=dev).resolve(generator, label)
    x, names, files, errors = read_inputs(list(images), generator.resolution)
    data: dict[str, Any] = {"format": LATENTS_FORMAT, "source": text, "source_sha256": digest,
                            "settings": dataclasses.asdict(cfg), "entries": {}}
    if resume and (out / LATENTS).exists():
        old = _load_latents_file(out / LATENTS)
        if old.get("source_sha256") != digest:
            raise IPLError(f"--resume: {out / LATENTS} was inverted into another source (SHA-256 "
                           f"{old.get('source_sha256')}, now {digest}); use another --out or --force")
        differ = cfg.same_search(old.get("settings", {}))
        if differ:
            raise IPLError(f"--resume: {out / LATENTS} was made with other settings ({', '.join(differ)}: "
                           f"{', '.join(str(old['settings'].get(k)) for k in differ)}); give the same ones, or --force")
        data["entries"] = dict(old["entries"])
    todo = [i for i, name in enumerate(names) if name not in data["entries"]]
    skipped = len(names) - len(todo)
    if skipped and progress:
        print(f"--resume: {skipped} image(s) already inverted in {out / LATENTS}, skipped")
    x_todo = x[todo] if todo else x[:0]

    def save_batch(start: int, stop: int, lat: torch.Tensor, rec: torch.Tensor,
                   tuned: Optional[AdaptableGenerator]) -> None:
        idx = todo[start:stop]
        batch_names = [names[i] for i in idx]
        save_images(x[idx], out / "inputs", batch_names)
        save_images(rec, out / "reconstructions", batch_names)
        pti = None
        if tuned is not None:
            (out / "pti").mkdir(exist_ok=True)
            pti = f"pti/batch_{len(list((out / 'pti').glob('batch_*.safetensors'))):04d}.safetensors"
            tuned.save(str(out / pti), metadata={"ipl": {"pti_of": text, "source_sha256": digest,
                                                         "images": batch_names}})
        scores = psnr(rec, x[idx]).tolist()
        for j, i in enumerate(idx):
            data["entries"][names[i]] = {"latent": lat[j].clone(), "file": files[i], "source_sha256": digest,
                                         "psnr": float(scores[j]), "pti": pti}
        torch_save(data, out / LATENTS)  # atomically, after every batch: a kill loses one batch at most

    result = invert_tensor(generator, x_todo, cfg, progress=progress, on_batch=save_batch) if todo else None
    done = [n for n in names if n in data["entries"]]
    if done:
        inputs = torch.stack([_read_png(out / "inputs" / f"{n}.png") for n in done])
        recs = torch.stack([_read_png(out / "reconstructions" / f"{n}.png") for n in done])
        _save_rows(_rows(inputs, recs), out / "grid.png")
    summary = {"settings": dataclasses.asdict(cfg), "source_sha256": digest, "images": len(names),
               "inverted_now": len(todo), "skipped": skipped, "unreadable": errors,
               "seconds": result.seconds if result else 0.0,
               "seconds_per_image": (result.seconds / len(todo)) if result and todo else None,
               "psnr": {n: data["entries"][n]["psnr"] for n in done}}
    write_json(out / "invert.json", summary)
    if errors:
        raise IPLError(f"{len(errors)} image(s) could not be read and were skipped (the other {len(names)} were "
                       f"inverted into {out}): " + "; ".join(errors))
    return summary


# ------------------------------------------------------------------------------------------------ edit
def _split_runs(runs: Sequence[PathLike]) -> list[Path]:
    paths = [Path(r) for r in runs]
    if not paths:
        raise IPLError("no run given: `ipl edit RUN [RUN2 ...] IMAGES... --out DIR` (RUN: a folder of `ipl adapt`)")
    for p in paths:
        if not is_run(p):
            raise IPLError(f"{p} is not an ipl run folder (no config.json); pass folders written by `ipl adapt`")
    return paths


def edit(runs: Sequence[PathLike], images: Images, *, latents: Optional[PathLike] = None,
         steps: Optional[int] = None, loss: Optional[str] = None, device: str = "cpu", progress: bool = True,
         space: str = "w+", seed: int = 0, batch_size: Optional[int] = None,
         lpips_weights: Optional[str] = None) -> EditResult:
    """Put real images through adapted generators: inverted with each run's source (or `latents` from `ipl invert`),
    rendered by the adapted generator; diffusion runs use their DDIM-inversion edit."""
    result, _ = _edit(runs, images, latents=latents, steps=steps, loss=loss, device=device, progress=progress,
                      space=space, seed=seed, batch_size=batch_size, lpips_weights=lpips_weights)
    return result


def _edit(runs: Sequence[PathLike], images: Images, *, latents: Optional[PathLike], steps: Optional[int],
          loss: Optional[str], device: str, progress: bool, space: str, seed: int, batch_size: Optional[int],
          lpips_weights: Optional[str]) -> tuple[EditResult, dict[str, Any]]:
    from ipl.run import load_run

    dev = _device(device)
    run_paths = _split_runs(runs)
    infos = [load_run(p, device=dev) for p in run_paths]
    resolution = infos[0].adapted.resolution
    for p, info in zip(run_paths, infos):
        if info.adapted.resolution != resolution:
            raise IPLError(f"runs of different resolutions cannot share a grid: {run_paths[0]} is {resolution} px, "
                           f"{p} {info.adapted.resolution} px; edit them separately")
    saved = _load_latents_file(Path(latents)) if latents is not None else None
    if saved is not None and (images is None or (not isinstance(images, torch.Tensor) and not list(images))):
        # All the file's images: as `ipl invert` fitted them (its inputs/ folder), else the files it read.
        folder = Path(latents).parent / "inputs"
        images = [folder / f"{n}.png" if (folder / f"{n}.png").is_file() else Path(e["file"])
                  for n, e in saved["entries"].items()]
    x, names, files, errors = read_inputs(images, resolution)
    if errors and not len(x):
        raise IPLError("; ".join(errors))
    meta: dict[str, Any] = {"errors": errors, "files": files, "runs": {}}
    adapted: dict[str, torch.Tensor] = {}
    recon: Optional[torch.Tensor] = None
    shared_latents: Optional[torch.Tensor] = None
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # source SHA-256 -> (latents, reconstructions)
    for path, info in zip(run_paths, infos):
        source, target = info.source, info.adapted
        digest = info.config["resolved"].get("source_sha256")
        if source.can_project:
            if saved is not None:
                if saved.get("source_sha256") != digest:
                    raise IPLError(f"--latents {latents}: inverted into a source with SHA-256 "
                                   f"{saved.get('source_sha256')}, but run {path} adapted {digest}; invert the "
                                   f"images into that run's source (`ipl invert`) or drop --latents")
                lat = _latents_for(saved, names, latents, isinstance(images, torch.Tensor))
                with torch.no_grad():
                    rec = torch.cat([source.render(c.to(dev)).float().cpu() for c in lat.split(16)])
                cache.setdefault(digest, (lat, rec))
            elif digest not in cache:
                given = {k for k, v in (("steps", steps), ("loss", loss), ("batch_size", batch_size)) if v}
                cfg = InvertConfig(source=str(info.config["settings"]["source"]), space=space, steps=steps,
                                   loss=loss, seed=seed, batch_size=batch_size, device=dev,
                                   lpips_weights=lpips_weights, filled_by={k: "flag" for k in given})
                cfg = cfg.validate().resolve(source, f"source:{info.entry.name}")
                res = invert_tensor(source, x, cfg, progress=progress)
                cache[digest] = (res.latents, res.reconstructions)
                meta["runs"][str(path)] = {"invert": dataclasses.asdict(cfg), "seconds": res.seconds}
            lat, rec = cache[digest]
            with torch.no_grad():
                out = torch.cat([target.render(c.to(dev)).float().cpu() for c in lat.split(16)])
            if shared_latents is None:
                shared_latents = lat
                meta["source_sha256"] = digest
        else:  # diffusion: DDIM inversion with the source, regeneration with the adapted model (and the source)
            out = torch.cat([target.edit_images(source, c.to(dev)).float().cpu() for c in x.split(8)])
            rec = torch.cat([source.edit_images(source, c.to(dev)).float().cpu() for c in x.split(8)])
        adapted[str(path)] = out
        if recon is None:
            recon = rec
    result = EditResult(inputs=x, reconstructions=recon, adapted=adapted, names=names, latents=shared_latents)
    return result, meta


def _latents_for(saved: dict[str, Any], names: list[str], path: Optional[PathLike], from_tensor: bool
                 ) -> torch.Tensor:
    entries = saved["entries"]
    if from_tensor:  # images given as a tensor: the file's entries in order
        values = list(entries.values())
        if len(values) != len(names):
            raise IPLError(f"--latents {path} holds {len(values)} images but {len(names)} were given")
        return torch.stack([v["latent"] for v in values])
    missing = [n for n in names if n not in entries]
    if missing:
        more = " ..." if len(entries) > 8 else ""
        raise IPLError(f"--latents {path} has no latents for {', '.join(missing)}; invert them first with "
                       f"`ipl invert` (its entries: {', '.join(list(entries)[:8])}{more})")
    return torch.stack([entries[n]["latent"] for n in names])


def edit_to_folder(runs: Sequence[PathLike], images: Sequence[PathLike], out: PathLike, *,
                   latents: Optional[PathLike] = None, force: bool = False, progress: bool = True,
                   **options: Any) -> dict[str, Any]:
    """`ipl edit`: grid.png (one row per image: input | reconstruction | one column per run), PNGs per column,
    latents.pt of the inversion, edit.json. Unreadable images are reported at the end after the rest ran."""
    out = Path(out)
    prepare_out(out, False, force, "edit.json")
    t0 = time.perf_counter()
    result, meta = _edit(runs, images, latents=latents, progress=progress, **options)
    names = result.names
    save_images(result.inputs, out / "inputs", names)
    save_images(result.reconstructions, out / "reconstructions", names)
    columns = []
    for k, (run, imgs) in enumerate(result.adapted.items()):
        folder = Path(run).name if list(result.adapted).count(run) == 1 else f"run{k}"
        save_images(imgs, out / "adapted" / f"{k:02d}_{folder}", names)
        columns.append(imgs)
    _save_rows(_rows(result.inputs, result.reconstructions, *columns), out / "grid.png")
    if result.latents is not None:
        digest = meta.get("source_sha256")
        torch_save({"format": LATENTS_FORMAT, "source_sha256": digest,
                    "entries": {n: {"latent": result.latents[i], "file": meta["files"][i], "source_sha256": digest}
                                for i, n in enumerate(names)}}, out / LATENTS)
    summary = {"runs": list(result.adapted), "images": names, "files": meta["files"], "latents": str(latents),
               "options": {k: v for k, v in options.items()}, "inversions": meta["runs"],
               "unreadable": meta["errors"], "seconds": time.perf_counter() - t0,
               "columns": ["input", "reconstruction", *result.adapted]}
    write_json(out / "edit.json", summary)
    if meta["errors"]:
        raise IPLError(f"{len(meta['errors'])} image(s) could not be read and were skipped (the other {len(names)} "
                       f"were edited into {out}): " + "; ".join(meta["errors"]))
    return summary


def summary_json(path: PathLike) -> dict[str, Any]:
    """The invert.json / edit.json of an output folder."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
