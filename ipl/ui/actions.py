"""The page's callbacks as plain Python (no gradio): build the adapt command, list runs, sample, export, edit.

Sampling renders exactly what `ipl sample RUN --seeds S --truncation T --outdir D` writes: the run's adapted
generator (ipl.run.load_run), noise mode `const`, seeds in chunks of 8 through `sample_seeds`, PNGs through
ipl.core.images.save_images.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ipl.core.config import slugify
from ipl.core.errors import IPLError
from ipl.core.seeds import parse_seeds as _parse_seeds
from ipl.registry import REGISTRY, cache_path, is_registry_name
from ipl.ui.jobs import Job, JobManager
from ipl.ui.paths import (PathRefused, Roots, check_clip_spec, checkpoint_path, contained, list_run_names, run_dir,
                          run_file)
from ipl.ui.progress import Progress, newest_grid, read_progress

MAX_SEEDS = 64            # images per sampling request
SAMPLE_BATCH = 8          # `ipl sample --batch` default: the same chunks, the same images
CHECKPOINT_SUFFIXES = (".pt", ".pkl", ".safetensors")


def ipl_command() -> list[str]:
    """How to run the CLI in a child process: the `ipl` script next to this Python, else `python -m`."""
    script = Path(sys.executable).parent / ("ipl.exe" if os.name == "nt" else "ipl")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "ipl.commands.cli"]


# -------------------------------------------------------------------------------------------------- sources
def source_choices(roots: Roots) -> list[tuple[str, str]]:
    """(label, value) for the source menu: the toy world, registry names, checkpoints in the model cache."""
    out = [("toy: the shipped toy world (offline, CPU)", "toy")]
    for name, entry in REGISTRY.items():
        if name == "toy" or not entry.readable:
            continue
        where = "cached" if cache_path(entry).exists() else "downloaded on first use"
        out.append((f"{name}: {entry.description or entry.family} ({where})", name))
    files = list(roots.extra_files)
    models = roots.cache / "models"
    if models.is_dir():
        files += sorted(p for p in models.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    for p in dict.fromkeys(files):
        out.append((f"file: {p}", str(p)))
    return out


def _source_value(roots: Roots, source: str) -> str:
    source = str(source or "").strip()
    if not source:
        raise IPLError("choose a source generator")
    if is_registry_name(source):
        return source.lower()
    return str(checkpoint_path(roots, source))


# -------------------------------------------------------------------------------------------------- adapt
@dataclass
class AdaptForm:
    """What the Adapt tab asks for (None / "" = the source's default, as when the flag is not given)."""

    source: str
    targets: str                       # one target text per line
    method: str = "ipl"
    iters_prompt: Optional[int] = None
    iters: Optional[int] = None
    layers: str = ""                   # K or "all"
    clip: str = ""                     # CLIP specs, one per line or comma-separated
    seed: Optional[int] = 0
    sample_every: Optional[int] = None
    run_name: str = ""                 # one target only; default <source>-<target-slug>
    overwrite: bool = False
    device: str = "auto"


def _targets(text: str) -> list[str]:
    targets = [" ".join(t.split()) for t in str(text or "").splitlines() if t.strip()]
    if not targets:
        raise IPLError("type a target text, e.g. 'on a dark background' (one per line for several runs)")
    for t in targets:
        if t.startswith("@"):  # `--target @FILE` reads a file: the page never lets a text name a file
            raise PathRefused(f"target {t!r}: a target may not start with '@' (on the CLI that reads a file)")
    return targets


def _int_or_none(value: Any, what: str, low: int) -> Optional[int]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise IPLError(f"{what}: expected a whole number, got {value!r}") from None
    if number != int(number) or number < low:
        raise IPLError(f"{what}: expected a whole number >= {low}, got {value!r}")
    return int(number)


def adapt_command(roots: Roots, form: AdaptForm) -> tuple[list[str], list[Path]]:
    """The `ipl adapt` command line for the form and the run folders it writes (all inside the runs folder)."""
    source = _source_value(roots, form.source)
    targets = _targets(form.targets)
    if form.method not in ("ipl", "nada"):
        raise IPLError(f"method {form.method!r}: choose ipl or nada")
    stem = Path(source).stem if Path(source).suffix else source
    if form.run_name and form.run_name.strip():
        if len(targets) > 1:
            raise IPLError("a run name is for one target; leave it empty with several targets "
                           "(each run is named <source>-<target>)")
        names = [form.run_name.strip()]
    else:
        names = [f"{slugify(stem)}-{slugify(t)}" for t in targets]
    if len(set(names)) != len(names):
        raise IPLError("two targets map to the same run folder; give them distinct texts")
    runs = [run_dir(roots, n, must_exist=False) for n in names]
    argv = [*ipl_command(), "adapt", f"--source={source}", f"--method={form.method}"]
    argv += [f"--target={t}" for t in targets]
    for flag, value, low in (("--iters-prompt", form.iters_prompt, 1), ("--iters", form.iters, 1),
                             ("--seed", form.seed, 0), ("--sample-every", form.sample_every, 0)):
        number = _int_or_none(value, flag.lstrip("-"), low)
        if number is not None:
            argv.append(f"{flag}={number}")
    layers = str(form.layers or "").strip().lower()
    if layers:
        if layers != "all" and _int_or_none(layers, "layers", 1) is None:
            raise IPLError(f"layers: a number of layers or 'all', got {form.layers!r}")
        argv.append(f"--layers={layers}")
    for spec in re.split(r"[\n,]+", str(form.clip or "")):
        if spec.strip():
            argv.append(f"--clip={check_clip_spec(roots, spec.strip())}")
    if form.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", str(form.device)):
        raise IPLError(f"device {form.device!r}: choose auto, cpu, cuda or cuda:N")
    argv.append(f"--device={form.device}")
    argv.append(f"--out={runs[0] if len(runs) == 1 else roots.runs}")
    if form.overwrite:
        argv.append("--force")
    return argv, runs


def resume_command(roots: Roots, name: str) -> tuple[list[str], list[Path]]:
    """The command that continues the stopped run `name` with its saved settings."""
    from ipl.run import read_run_config
    from ipl.runlock import holder

    folder = run_dir(roots, name)
    config = read_run_config(folder, need=("settings",))
    if config.get("status") == "complete":
        raise IPLError(f"run {name!r} is complete; nothing to resume")
    if holder(folder) is not None:
        raise IPLError(f"run {name!r} is being adapted right now (its folder is locked); wait for it or stop it")
    return [sys.executable, "-m", "ipl.ui.worker", "resume", str(folder)], [folder]


def submit(manager: JobManager, argv: list[str], runs: list[Path]) -> Job:
    """Queue a job unless one already queued or running writes one of the same run folders."""
    for r in runs:
        if manager.busy_with(r):
            raise IPLError(f"{r.name} is already queued or being adapted; wait for it or stop it")
    return manager.submit(argv, runs)


def job_status(roots: Roots, manager: JobManager, job: Optional[Job]) -> tuple[str, Optional[str]]:
    """Markdown of a job's runs' progress and the newest grid of the run it works on."""
    if job is None:
        return "No adaptation started from this page yet.", None
    if job.state == "queued":
        return f"**queued**: {manager.position(job)} adaptation(s) run or wait before this one.", None
    lines, grid, text = [], None, job.output()
    for run in job.runs:
        p = read_progress(run, text if run == _active_run(job) else "")
        if job.finished and p.status in ("starting", "running"):
            p.status = job.state
        lines.append(f"`{run.name}`: {p.describe()}")
        if p.grid is not None and (grid is None or p.status in ("running", "starting")):
            grid = p.grid
    if job.state == "done":
        lines.append("**Done**: open the run on the **Runs** tab to sample it.")
    elif job.state == "stopped":
        lines.append("Stopped: the run keeps its last checkpoint; choose it under **Resume** to continue.")
    elif job.state == "failed":
        lines.append(f"The adaptation ended with an error: {job.error_message() or 'see the terminal'}")
    elif job.state == "cancelled":
        lines.append("Removed from the queue before it started.")
    return "\n\n".join(lines), publish(roots, grid)


def _active_run(job: Job) -> Optional[Path]:
    """The run the job works on now: the first of its runs that is not complete."""
    for run in job.runs:
        if read_progress(run).status != "complete":
            return run
    return None


def resumable_runs(roots: Roots) -> list[str]:
    """Runs that stopped before the end (interrupted, failed, or running without a process)."""
    from ipl.runlock import holder

    out = []
    for name in list_run_names(roots):
        p = read_progress(roots.runs / name)
        if p.status != "complete" and holder(roots.runs / name) is None:
            out.append(name)
    return out


# -------------------------------------------------------------------------------------------------- runs
def _config(folder: Path) -> dict[str, Any]:
    if (folder / "config.json").is_symlink():
        return {}
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return config if isinstance(config, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def eval_numbers(folder: Path) -> dict[str, float]:
    """The run's own column of RUN/eval.json (`ipl eval RUN`), if written."""
    if (folder / "eval.json").is_symlink():
        return {}
    try:
        record = json.loads((folder / "eval.json").read_text(encoding="utf-8"))
        columns = record["columns"]
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return {}
    for col in columns if isinstance(columns, list) else []:
        if isinstance(col, dict) and isinstance(col.get("values"), dict):
            path = str(col.get("path") or "")
            if path and Path(path).name == folder.name or columns.index(col) == 0:
                return {k: float(v) for k, v in col["values"].items() if isinstance(v, (int, float))}
    return {}


@dataclass
class RunRow:
    """One run folder as the gallery shows it."""

    name: str
    target: str
    method: str
    source: str
    status: str
    grid: Optional[Path]
    evals: dict[str, float]

    def caption(self) -> str:
        text = f"{self.name}: {self.target!r} ({self.method}, {self.status})"
        if self.evals:
            text += " · " + ", ".join(f"{k} {v:.3g}" for k, v in list(self.evals.items())[:4])
        return text


def list_runs(roots: Roots) -> list[RunRow]:
    """Every run folder inside the runs folder."""
    rows = []
    for name in list_run_names(roots):
        folder = roots.runs / name
        config = _config(folder)
        settings = config.get("settings") if isinstance(config.get("settings"), dict) else {}
        rows.append(RunRow(name=name, target=str(settings.get("target_text", "?")),
                           method=str(settings.get("method", "?")), source=str(settings.get("source", "?")),
                           status=str(config.get("status", "unreadable config.json")),
                           grid=newest_grid(folder), evals=eval_numbers(folder)))
    return rows


def run_details(roots: Roots, name: str) -> str:
    """Markdown about one run: settings that matter, status, eval numbers."""
    folder = run_dir(roots, name)
    config = _config(folder)
    settings = config.get("settings") if isinstance(config.get("settings"), dict) else {}
    p: Progress = read_progress(folder)
    lines = [f"### {name}",
             f"target **{settings.get('target_text', '?')}** · method {settings.get('method', '?')} · source "
             f"{settings.get('source', '?')} · status **{p.status}**",
             f"iterations: stage 1 {settings.get('iters_prompt', '?')}, stage 2 {settings.get('iters', '?')} · "
             f"CLIP {', '.join(map(str, settings.get('clip', [])))} · seed {settings.get('seed', '?')}"]
    evals = eval_numbers(folder)
    if evals:
        lines.append("eval.json: " + ", ".join(f"{k} {v:.4g}" for k, v in evals.items()))
    if p.error:
        lines.append(f"error: {p.error}")
    return "\n\n".join(lines)


# -------------------------------------------------------------------------------------------------- sampling
def parse_seeds(text: str) -> list[int]:
    """The page's seeds field, in the syntax of `ipl sample --seeds`, at most MAX_SEEDS."""
    return _parse_seeds(text, what="seeds", limit=MAX_SEEDS)


class Sampler:
    """Loaded runs (a few, most recent first) and the PNGs rendered from them."""

    def __init__(self, roots: Roots, device: str = "cpu", keep: int = 4):
        self.roots, self.device, self.keep = roots, device, keep
        self._runs: "OrderedDict[tuple[str, int], Any]" = OrderedDict()
        self._lock = threading.Lock()

    def load(self, name: str):
        """ipl.run.RunInfo of run `name` (cached while its generator file is unchanged)."""
        from ipl.run import GENERATOR, load_run

        folder = run_dir(self.roots, name)
        gen = run_file(self.roots, name, GENERATOR) if (folder / GENERATOR).exists() else None
        if gen is None:
            raise IPLError(f"run {name!r} has no adapted generator yet (status {read_progress(folder).status}); "
                           "finish or resume it first")
        key = (str(folder), gen.stat().st_mtime_ns)
        with self._lock:
            if key in self._runs:
                self._runs.move_to_end(key)
                return self._runs[key]
        self.roots.check_run_source(folder, _config(folder))
        info = load_run(folder, device=self.device)
        for g in (info.adapted, info.source):
            g.set_noise_mode("const")   # `ipl sample`'s default --noise-mode
        with self._lock:
            self._runs[key] = info
            while len(self._runs) > self.keep:
                self._runs.popitem(last=False)
        return info

    @torch.no_grad()
    def render(self, name: str, seeds: list[int], truncation: float, source: bool = False) -> torch.Tensor:
        """Images [len(seeds), 3, H, W] of run `name` (its source generator with source=True)."""
        info = self.load(name)
        generator = info.source if source else info.adapted
        chunks = [generator.sample_seeds(seeds[i:i + SAMPLE_BATCH], truncation, None, None).float().cpu()
                  for i in range(0, len(seeds), SAMPLE_BATCH)]
        return torch.cat(chunks)

    def sample(self, names: Sequence[str], seeds_text: str, truncation: float, source_too: bool = False
               ) -> list[tuple[str, str]]:
        """(PNG path, caption) per run (and the first run's source with source_too) and seed: the same seeds
        for every run, side by side."""
        from ipl.core.images import save_images

        names = [n for n in (names or []) if n]
        if not names:
            raise IPLError("choose one or more runs to sample")
        seeds = parse_seeds(seeds_text)
        truncation = float(truncation)
        if not 0.0 <= truncation <= 2.0:
            raise IPLError(f"truncation {truncation}: expected a value in [0, 2]")
        out_dir = new_scratch(self.roots, "samples")
        rows: list[tuple[str, str, bool]] = ([(names[0], "source", True)] if source_too else [])
        rows += [(n, n, False) for n in names]
        items = []
        for k, (name, label, is_source) in enumerate(rows):
            images = self.render(name, seeds, truncation, source=is_source)
            paths = save_images(images, out_dir / f"{k:02d}", [f"seed{s:04d}" for s in seeds])
            items += [(str(p), f"{label} · seed {s}") for p, s in zip(paths, seeds)]
        return items


def publish(roots: Roots, path: Optional[Path]) -> Optional[str]:
    """A copy of a run's image in the scratch folder (the only folder the page's web server hands files from);
    the same copy while the file is unchanged."""
    import hashlib

    if path is None:
        return None
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return None
    try:
        contained(path, [roots.runs])
    except PathRefused:
        return None
    stat = path.stat()
    key = hashlib.sha256(f"{path}|{stat.st_mtime_ns}|{stat.st_size}".encode()).hexdigest()[:16]
    dest = roots.scratch / "published" / key / path.name
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
    return str(dest)


def new_scratch(roots: Roots, kind: str) -> Path:
    """A fresh folder inside the page's scratch folder (RUNS/.ipl-ui/...)."""
    folder = roots.scratch / kind / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True, exist_ok=False)
    return folder


# -------------------------------------------------------------------------------------------------- download
def export_generator(roots: Roots, name: str, fmt: str) -> Path:
    """A copy (in the scratch folder) of run `name`'s adapted generator: ours (`ipl`, generator.safetensors) or
    rosinality's `.pt` (what `ipl export RUN --format rosinality` writes, RUN/generator_rosinality.pt)."""
    from ipl.run import GENERATOR, export_run_generator, read_run_config, require_safetensors

    folder = run_dir(roots, name)
    config = read_run_config(folder)
    if not (folder / GENERATOR).is_file():
        raise IPLError(f"run {name!r} has no adapted generator yet (status {config.get('status')!r})")
    gen = run_file(roots, name, GENERATOR)
    require_safetensors(gen)
    if fmt == "ipl":
        src = gen
    elif fmt == "rosinality":
        src = folder / "generator_rosinality.pt"
        if not (src.is_file() and not src.is_symlink() and src.stat().st_mtime_ns >= gen.stat().st_mtime_ns):
            export_run_generator(config, gen, src, fmt)
        src = run_file(roots, name, src.name)
    else:
        raise IPLError(f"format {fmt!r}: choose ipl or rosinality")
    dest = new_scratch(roots, "downloads") / f"{name}-{src.name}"
    try:
        os.link(src, dest)    # same disk (both inside the runs folder): no copy of a large file
    except OSError:
        shutil.copyfile(src, dest)
    return dest


# -------------------------------------------------------------------------------------------------- edit
def edit_function():
    """`ipl.edit` (real images into a run's domain), or None where this ipl has none."""
    try:
        from ipl import edit
    except ImportError:
        return None
    return edit if callable(edit) else None


def edit_photo(roots: Roots, names: Sequence[str], image: str, steps: Optional[int] = None, device: str = "cpu",
               upload_dirs: Sequence[Path] = (), loss: Optional[str] = None) -> list[tuple[str, str]]:
    """(PNG path, caption): the photo, its reconstruction, and the photo in each chosen run's domain."""
    from ipl.core.images import save_images

    edit = edit_function()
    if edit is None:
        raise IPLError("this ipl has no `ipl.edit`")
    names = [n for n in (names or []) if n]
    if not names:
        raise IPLError("choose one or more runs")
    if not image:
        raise IPLError("upload a photo first")
    photo = contained_upload(roots, image, upload_dirs)
    runs = [run_dir(roots, n) for n in names]
    for run in runs:
        roots.check_run_source(run, _config(run))
    steps = _int_or_none(steps, "steps", 1)
    if loss not in (None, "lpips", "mse"):
        raise IPLError(f"loss {loss!r}: choose lpips or mse")
    result = edit(runs, [photo], steps=steps, loss=loss, device=device, progress=False)
    out_dir = new_scratch(roots, "edit")
    items = []
    for label, images in [("input", result.inputs), ("reconstruction", result.reconstructions)] + [
            (Path(k).name, v) for k, v in result.adapted.items()]:
        path = save_images(images[:1].float().cpu(), out_dir, [f"{len(items):02d}-{label}"])[0]
        items.append((str(path), label))
    return items


def contained_upload(roots: Roots, path: str, upload_dirs: Sequence[Path]) -> Path:
    """An uploaded file: inside Gradio's upload folder (in the scratch folder)."""
    return contained(path, [Path(d).resolve() for d in upload_dirs] or [roots.scratch], what="uploaded file")
