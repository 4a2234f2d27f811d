"""What `ipl eval` evaluates: a run folder, a generator checkpoint, or a folder of images.

Each becomes an `EvalInput` that yields image batches in [-1, 1]. Generated samples are fixed by the
seed: latents are drawn in chunks of `LATENT_CHUNK`, chunk j from its own generator seeded by (seed, j),
so sample i is the same image for every --n and --batch. Diffusion generators draw from a pool of inverted
source images instead: all n latents come from one call (seeded by (seed, 0)), so the n samples are distinct.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from PIL import Image

from ipl import generators
from ipl.core.errors import IPLError
from ipl.core.images import IMAGE_EXTS
from ipl.run import load_run, read_run_config

LATENT_CHUNK = 256
# Sources of the shipped toy world: their runs are scored by the toy judge.
TOY_SOURCES = ("toy", "toy-ddpm")


# ----------------------------------------------------------------------------------------------------------
# Image folders.

def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def read_image(path: Path) -> torch.Tensor:
    """One image file as uint8 [3, H, W] RGB."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise IPLError(f"cannot read image {path}: {e}") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float in [-1, 1]."""
    return images.float() / 127.5 - 1


def image_batches(paths: list[Path], batch: int) -> Iterator[torch.Tensor]:
    """Float batches in [-1, 1] of the files; a batch is cut early where the image size changes."""
    cur: list[torch.Tensor] = []
    for p in paths:
        img = read_image(p)
        if cur and (img.shape != cur[0].shape or len(cur) == batch):
            yield to_float(torch.stack(cur))
            cur = []
        cur.append(img)
    if cur:
        yield to_float(torch.stack(cur))


# ----------------------------------------------------------------------------------------------------------
# Inputs.

@dataclass
class EvalInput:
    """One column of the results table."""

    label: str                                 # column name
    path: str                                  # what the user passed
    kind: str                                  # 'run' | 'generator' | 'images'
    generator: Any = None                      # AdaptableGenerator to sample ('run': the adapted one)
    source: Any = None                         # the run's source generator (same latents: judge, --with-source)
    config: Optional[dict] = None              # the run's config.json
    image_paths: list[Path] = field(default_factory=list)
    target_text: Optional[str] = None          # the run's target text (CLIP score default)
    clip_specs: list[str] = field(default_factory=list)  # the run's CLIP specs
    toy: bool = False                          # a run of the shipped toy world
    notes: dict[str, Any] = field(default_factory=dict)  # facts for the results JSON (e.g. source checksums)

    @property
    def resolution(self) -> Optional[int]:
        if self.generator is not None:
            return int(self.generator.resolution)
        if self.image_paths:
            return int(max(read_image(self.image_paths[0]).shape[1:]))
        return None

    def available(self, n: int) -> int:
        """How many samples this input can give (folders: their size)."""
        return min(n, len(self.image_paths)) if self.kind == "images" else n


def _run_meta(config: dict) -> tuple[Optional[str], list[str], bool]:
    settings = config.get("settings", {})
    resolved = config.get("resolved", {})
    target = resolved.get("target_text") or settings.get("target_text") or settings.get("target")
    clips = settings.get("clip") or []
    clips = [clips] if isinstance(clips, str) else list(clips)
    toy = (str(settings.get("source", "")).strip().lower() in TOY_SOURCES
           or resolved.get("source_entry") in TOY_SOURCES)
    return target, clips, toy


def _label(path: Path, taken: set[str]) -> str:
    label = path.name or str(path)
    base, k = label, 2
    while label in taken:
        label, k = f"{base}#{k}", k + 1
    taken.add(label)
    return label


def open_input(path: str, device: str = "cpu", taken: Optional[set[str]] = None) -> EvalInput:
    """Open a run folder, a generator checkpoint (file or diffusers folder) or a folder of images."""
    p = Path(path).expanduser()
    taken = set() if taken is None else taken
    if not p.exists():
        raise IPLError(f"{path}: no such run folder, checkpoint or image folder.")
    if (p.is_dir() and (p / "config.json").is_file() and not _looks_like_run(p / "config.json")
            and (not _is_json(p / "config.json") or any((p / n).exists() for n in RUN_MARKS))):
        read_run_config(p)  # a run folder whose config.json is corrupt: one error naming the file
    if p.is_dir() and (p / "config.json").is_file() and _looks_like_run(p / "config.json"):
        info = load_run(p, device=device)
        target, clips, toy = _run_meta(info.config)
        inp = EvalInput(label=_label(p, taken), path=str(path), kind="run", generator=info.adapted,
                        source=info.source, config=info.config, target_text=target, clip_specs=clips, toy=toy)
        inp.notes.update(_source_check(info))
        return inp
    if p.is_dir():
        images = list_images(p)
        if images:
            return EvalInput(label=_label(p, taken), path=str(path), kind="images", image_paths=images)
    try:
        gen = generators.load_adaptable(str(p), device=device)
    except IPLError:
        if p.is_dir():
            raise IPLError(f"{path} is neither a run folder (no config.json from `ipl adapt`), nor a folder of "
                           f"images ({', '.join(IMAGE_EXTS)}), nor a generator folder.") from None
        raise
    meta = _generator_meta(gen)
    return EvalInput(label=_label(p, taken), path=str(path), kind="generator", generator=gen,
                     target_text=meta.get("target_text"), clip_specs=list(meta.get("clip") or []))


def _source_check(info: Any) -> dict[str, Any]:
    """The SHA-256 of the source checkpoint loaded now against the one the run was trained from."""
    recorded = info.config.get("resolved", {}).get("source_sha256")
    # Digested the way `ipl adapt` recorded it: by the family that reads it (a file's or a folder's SHA-256).
    now = generators.family_for_path(info.source_path).fingerprint(Path(info.source_path))
    out: dict[str, Any] = {"source_path": str(info.source_path), "source_sha256": now,
                           "source_sha256_at_training": recorded}
    if recorded and recorded != now:
        out["warning"] = (f"the source checkpoint {info.source_path} changed since this run was trained "
                          f"(SHA-256 {now[:12]}... now, {recorded[:12]}... then): source-vs-adapted comparisons "
                          "(judge content/diversity, --with-source) do not describe this run.")
    return out


RUN_MARKS = ("generator.safetensors", "checkpoint.pt", "log.jsonl")  # files only a run folder holds


def _is_json(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def _looks_like_run(config_path: Path) -> bool:
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "settings" in cfg and "resolved" in cfg


def _generator_meta(gen: Any) -> dict:
    """Adaptation metadata a checkpoint in the project's format carries (target text, CLIP specs)."""
    meta = gen.metadata
    inner = meta.get("ipl") if isinstance(meta.get("ipl"), dict) else meta
    out: dict = {}
    if isinstance(inner.get("target_text"), str):
        out["target_text"] = inner["target_text"]
    clip = inner.get("clip")
    if isinstance(clip, str):
        out["clip"] = [clip]
    elif isinstance(clip, (list, tuple)):
        out["clip"] = [str(c) for c in clip]
    return out


# ----------------------------------------------------------------------------------------------------------
# Fixed-seed samples.

def _chunk_generator(seed: int, chunk: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(chunk)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _device_of(module: Any) -> torch.device:
    try:
        return next(module.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def _latents(gen: Any, seed: int, chunk: int, truncation: float, count: int = LATENT_CHUNK) -> torch.Tensor:
    g = _chunk_generator(seed, chunk)
    try:
        return gen.sample_latents(count, generator=g, truncation=truncation)
    except RuntimeError as e:  # a generator that wants its torch.Generator on its own device
        dev = _device_of(gen)
        if dev.type == "cpu" or "device" not in str(e).lower():
            raise
        g_dev = torch.Generator(device=dev).manual_seed(g.initial_seed())
        return gen.sample_latents(count, generator=g_dev, truncation=truncation)


@torch.no_grad()
def sample_batches(inp: EvalInput, n: int, batch: int, seed: int = 0, truncation: float = 1.0,
                   with_source: bool = False) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(images, source images or None) batches in [-1, 1], `n` in all, same latents for source and adapted."""
    for _, _, imgs, src in indexed_batches(inp, n, batch, seed, truncation, with_source):
        yield imgs, src


@torch.no_grad()
def indexed_batches(inp: EvalInput, n: int, batch: int, seed: int = 0, truncation: float = 1.0,
                    with_source: bool = False, rank: int = 0, world: int = 1
                    ) -> Iterator[tuple[int, int, torch.Tensor, Optional[torch.Tensor]]]:
    """(batch index k, index of its first sample, images, source images or None) of `sample_batches`.

    rank / world (a sharded `ipl eval` under torchrun): only the batches k with k % world == rank are rendered and
    yielded; the batches themselves are the one-process ones (same latents, same sizes), so gathering every rank's
    batches in k order gives the one-process stream exactly.
    """
    assert n >= 1 and batch >= 1 and 0 <= rank < world
    if inp.kind == "images":
        start = 0
        for k, imgs in enumerate(image_batches(inp.image_paths[:n], batch)):
            if k % world == rank:
                yield k, start, imgs, None
            start += len(imgs)
        return
    gen = inp.generator
    src = inp.source if with_source else None
    if with_source and src is None:
        raise IPLError(f"{inp.path}: the judge and --with-source need a run folder (source and adapted "
                       "generators), not a single checkpoint.")
    # A pool generator gives n distinct latents only when asked for all n at once (each call draws from the
    # same pool, so chunks would repeat images); the others draw fixed-size chunks (sample i fixed by seed).
    pooled = gen.latents_from_pool
    done, chunk, k = 0, 0, 0
    while done < n:
        lat = _latents(gen, seed, chunk, truncation, count=n if pooled else LATENT_CHUNK)
        lat = lat[: n - done]
        for i in range(0, len(lat), batch):
            if k % world == rank:
                part = lat[i:i + batch]
                imgs = gen.render(part).float().clamp(-1, 1)
                src_imgs = src.render(part.to(_device_of(src))).float().clamp(-1, 1) if src is not None else None
                yield k, done + i, imgs, src_imgs
            k += 1
        done += len(lat)
        chunk += 1
