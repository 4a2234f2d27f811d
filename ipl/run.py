"""A run folder: config.json, log.jsonl, samples/, prompts/, the adapted generator, a resumable checkpoint.

Layout of runs/<name>/:
    config.json              every setting, resolved defaults, versions, source SHA-256, status
    log.jsonl                one JSON record per iteration (stage 1 and 2): loss terms, layers, seconds, memory
    samples/latents.pt       the fixed latents of every grid
    samples/iter_NNNNNN.png  source row over adapted (EMA) row, at start and every --sample-every iterations
    samples/final.png        the same for the saved generator
    prompts/learner_K.safetensors + prompts/learners.json   the frozen stage-1 prompt learners (IPL)
    generator.safetensors    the adapted generator (EMA) in the project's own format
    checkpoint.pt            resumable state (stage-2 weights, EMA, optimiser, RNG, iteration)
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ipl import generators
from ipl.core.atomic import check_writable, torch_save, write_json
from ipl.core.config import AdaptConfig, parse_layers, slugify
from ipl.core.errors import CheckpointError, IPLError, WriteError
from ipl.core.interface import AdaptableGenerator
from ipl.core.family import GeneratorFamily
from ipl.distributed import broadcast_object, held_signals, is_main, parallel_record, share_learners, share_trainer
from ipl.registry import SourceEntry, family_of, get_source, is_registry_name, source_for_file
from ipl.runlock import LOCK, RunLock, check_free

CONFIG = "config.json"
LOG = "log.jsonl"
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "ipl-run-checkpoint-1"   # torch.save of tensors and plain containers: loads weights-only
GENERATOR = "generator.safetensors"
RUN_FILES = (CONFIG, LOG, CHECKPOINT, GENERATOR, "samples", "prompts")
# Settings that may differ on --resume without changing the result.
RESUME_FREE = {"out", "device", "sample_every", "checkpoint_every", "filled_by", "compile", "data_parallel"}
# Settings added since: what a run saved without them did (it is resumed only with that value).
# (layer_map: the row -> layer map before --layer-map was ours, i.e. semantic, without the empty-row fix.)
SAVED_BEFORE = {"noise": "fixed", "layer_map": "semantic", "probe": "reference"}


# ---------------------------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda if present else cpu; `cuda` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise IPLError(f"--device {name} was asked for but no CUDA GPU is available to torch "
                           f"{torch.__version__} (torch.cuda.is_available() is False); use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise IPLError(f"unknown device {name!r}; choose auto, cuda, cuda:N or cpu")


def resolve_source(source: str, allow_download: bool = True, progress: bool = True
                   ) -> tuple[Path, str, Optional[SourceEntry]]:
    """Checkpoint path, its fingerprint (SHA-256), and its registry entry (None for a user file or folder)."""
    from ipl.download import ensure_source

    if Path(source).expanduser().exists():
        path = Path(source).expanduser().resolve()
        return path, generators.family_for_path(path).fingerprint(path), None
    if is_registry_name(source):
        entry = get_source(source)
        path, digest = ensure_source(entry, allow_download=allow_download, progress=progress)
        return path, digest, entry
    for family in generators.FAMILIES:  # names a family finds itself (e.g. Hugging Face repo ids)
        if family.claims_name(source):
            path, digest = family.locate(source, allow_download)
            return path, digest, None
    if any(ch in source for ch in "/\\") or Path(source).suffix:
        raise IPLError(f"--source {source!r}: no such checkpoint file. Pass an existing .pt/.pkl/.safetensors "
                       "path or a registry name (see `ipl models list`).")
    get_source(source)  # raises, listing the known names
    raise AssertionError("unreachable")


def default_out(cfg: AdaptConfig) -> Path:
    """runs/<source>-<target-slug>."""
    src = Path(cfg.source).stem if Path(cfg.source).suffix else cfg.source
    return Path("runs") / f"{slugify(src)}-{slugify(cfg.target_text)}"


def versions() -> dict[str, str]:
    """Versions that matter for rerunning exactly."""
    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        from importlib.metadata import version

        out["ipl"] = version("ipl")
    except Exception:
        out["ipl"] = "unknown"
    try:
        import open_clip

        out["open_clip"] = getattr(open_clip, "__version__", "unknown")
    except Exception:
        out["open_clip"] = "not installed"
    out["cuda"] = str(torch.version.cuda)
    return out


def is_run_folder(path: Path) -> bool:
    """True if `path` holds (part of) an ipl run."""
    return (path / CONFIG).is_file() or (path / CHECKPOINT).is_file()


def check_out_folder(out: Path, resume: bool, force: bool) -> str:
    """Decide what to do with the output folder: 'new', 'resume' or 'overwrite'. Refuses otherwise (a folder
    another process runs in, one that cannot be created or written). Creates nothing."""
    if not out.exists():
        check_writable(out, "--out", folder=True)
        return "new"
    if not out.is_dir():
        raise IPLError(f"--out {out} exists and is not a folder; choose another --out")
    check_free(out)  # another `ipl adapt` runs in it: refused, naming its pid
    check_writable(out, "--out", folder=True)
    if is_run_folder(out):
        if resume:
            return "resume"
        if force:
            return "overwrite"
        raise IPLError(f"{out} already holds a run ({out / CONFIG}). Pass --resume to continue it, --force to "
                       "replace it, or choose another --out. Nothing was written.")
    if any(p.name != LOCK and not _is_temp(p) for p in out.iterdir()) and not force:
        raise IPLError(f"{out} is not empty and does not hold an ipl run; choose an empty or new --out, "
                       "or pass --force to write into it. Nothing was written.")
    return "new"


class JsonlLog:
    """Append-only JSON-lines log, flushed per record."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, default=str) + "\n")
                fh.flush()
        except OSError as e:  # a full disk: the file named, not a traceback
            raise WriteError.from_exception(self.path, e) from None

    def truncate_to(self, stage2_iteration: int) -> None:
        """Drop stage-2 records after the checkpoint (they will be redone on resume)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
            if rec.get("stage") == 2 and int(rec.get("it", 0)) > stage2_iteration:
                continue
            keep.append(line)
        from ipl.core.atomic import write_text

        write_text(self.path, "".join(k + "\n" for k in keep))


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """All records of a run's log.jsonl."""
    path = Path(run_dir) / LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- sharing
@dataclass
class Resources:
    """Models shared by the runs of one `ipl adapt` call (several targets reuse them)."""

    generators: dict = field(default_factory=dict)   # (path, device) -> AdaptableGenerator
    clips: dict = field(default_factory=dict)        # (specs, device) -> list[FrozenClip]
    learners: dict = field(default_factory=dict)     # target-independent stage-1 results

    def generator(self, path: Path, device: torch.device, family: GeneratorFamily) -> AdaptableGenerator:
        key = (str(path), str(device))
        if key not in self.generators:
            self.generators[key] = family.load(Path(path), device=str(device))
        return self.generators[key]

    def clip_models(self, specs: Sequence[str], device: torch.device) -> list:
        key = (tuple(specs), str(device))
        if key not in self.clips:
            from ipl.method.clip import load_clips

            self.clips[key] = load_clips(list(specs), device=str(device))
        return self.clips[key]


# ---------------------------------------------------------------------------------------------- the run
def prepare(cfg: AdaptConfig, resume: bool = False, force: bool = False,
            allow_download: bool = True, progress: bool = True) -> dict[str, Any]:
    """Validate everything a run needs before any file is written; returns resolved facts."""
    cfg.validate()
    device = resolve_device(cfg.device)
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    mode = check_out_folder(out, resume, force)
    if mode == "resume":
        saved = read_run_config(out, need=("settings",)) if (out / CONFIG).is_file() else None
        if saved is not None:
            diff = {k: (v, cfg.to_dict().get(k)) for k, v in {**SAVED_BEFORE, **saved["settings"]}.items()
                    if k not in RESUME_FREE and cfg.to_dict().get(k) != v}
            if diff:
                raise IPLError(f"--resume {out}: these settings differ from the saved run: " + "; ".join(
                    f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
                    + ". Resume with the same settings, or start a new run with --force / another --out.")
    path, digest, entry = resolve_source(cfg.source, allow_download=allow_download, progress=progress)
    # The source's generator family, resolved once for the whole run.
    family = family_of(entry) if entry is not None else generators.family_for_path(path)
    return {"out": out, "mode": mode, "device": device, "source_path": path, "source_sha256": digest,
            "entry": entry, "family": family}


def run_adapt(cfg: AdaptConfig, resume: bool = False, force: bool = False, progress: bool = True,
              resources: Optional[Resources] = None, prepared: Optional[dict[str, Any]] = None) -> Path:
    """Run (or resume) one adaptation; returns the run folder.

    One process per run folder: RUN/.lock is held from the folder's creation to the end (ipl.runlock). However
    the run stops after config.json is written, config.json says so: status `interrupted` (Ctrl-C, SIGINT) or
    `failed` (an error, a full disk, a NaN), the message under "error"; the last good checkpoint is kept. A full
    or unwritable disk is an IPLError naming the file (WriteError); the KeyboardInterrupt is re-raised.
    """
    facts = prepared or prepare(cfg, resume=resume, force=force, progress=progress)
    if cfg.data_parallel and not is_main():  # data-parallel: rank 0 writes the run folder, the others only train
        return _follow_run(cfg, facts, resources or Resources())
    out: Path = facts["out"]
    state: dict[str, Any] = {"lock": None, "config_written": False}
    try:
        return _run_adapt(cfg, facts, progress, resources or Resources(), state)
    except KeyboardInterrupt:
        if state["config_written"]:
            _stop(out, cfg, "interrupted", "interrupted")
        raise
    except IPLError as e:
        if state["config_written"]:
            note = _stop(out, cfg, "failed", str(e))
            if note and isinstance(e, WriteError):
                raise WriteError(f"{e}. {note}", e.path, e.errno) from None
        raise
    except OSError as e:  # a folder or the log this run writes itself
        err = WriteError.from_exception(e.filename or out, e)
        note = _stop(out, cfg, "failed", str(err)) if state["config_written"] else None
        raise WriteError(f"{err}. {note}" if note else str(err), err.path, err.errno) from None
    except (MemoryError, RuntimeError) as e:
        if not (isinstance(e, MemoryError) or _out_of_memory(e)):
            if state["config_written"]:
                _stop(out, cfg, "failed", f"{type(e).__name__}: {e}")
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        msg = (f"out of memory on {facts['device']} ({first[:200]}); lower --batch, --batch-prompt, --layer-batch "
               "or --augment")
        note = _stop(out, cfg, "failed", msg) if state["config_written"] else None
        raise IPLError(f"{msg}. {note}" if note else msg) from None
    except BaseException as e:
        if state["config_written"]:
            _stop(out, cfg, "failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        if state["lock"] is not None:
            state["lock"].release()


def _run_adapt(cfg: AdaptConfig, facts: dict[str, Any], progress: bool, res: Resources,
               state: dict[str, Any]) -> Path:
    """The run itself (run_adapt: its lock and final status); state["lock"], state["config_written"] are set
    here."""
    from ipl.method.stage2 import NonFiniteLossError, Stage2Settings, Stage2Trainer, autocast_factory

    out: Path = facts["out"]
    device: torch.device = facts["device"]
    torch.manual_seed(cfg.seed)

    # Load models (errors here leave the folder untouched).
    source = res.generator(facts["source_path"], device, facts["family"])
    entry: SourceEntry = facts["entry"] or source_for_file(str(facts["source_path"]), source.resolution)
    clips = res.clip_models(cfg.clip, device)
    if cfg.freeze_noise and not source.noise_parameters():
        raise IPLError("--freeze-noise: this generator has no noise inputs (StyleGAN2 sources only); drop the flag")
    source.configure(cfg.diffusion)  # per-run options of the family (refused by families without any)
    source.set_code_encoder(clips[0])  # diffusion: the run's first CLIP makes the codes
    source_text = cfg.source_text if cfg.source_text is not None else entry.source_text
    if " ".join(source_text.lower().split()).strip(" .") == " ".join(cfg.target_text.lower().split()).strip(" ."):
        raise IPLError(f"source text and target text are the same ({source_text!r}); choose another --target")
    check_prompt_fits(cfg, clips, source_text)  # --n-ctx within every CLIP's text context
    check_memory(cfg, source.resolution, device)  # batches whose images alone cannot fit
    layers = parse_layers(cfg.layers) if cfg.layers is not None else entry.layers
    if layers is not None:
        layers = min(layers, source.num_layers()) if source.num_layers() else None
    truncation = cfg.truncation if cfg.truncation is not None else entry.truncation

    # The folder: locked (one process per run folder) before anything in it is touched; temporary files a
    # killed earlier process left behind are removed.
    out.mkdir(parents=True, exist_ok=True)
    state["lock"] = RunLock.acquire(out)
    remove_stale_temp_files(out)
    if facts["mode"] == "overwrite":
        for name in RUN_FILES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    resumed_state = None
    if facts["mode"] == "resume" and (out / CHECKPOINT).is_file():
        resumed_state = load_checkpoint(out / CHECKPOINT, map_location=device)
    learners = None  # read (and checked) before anything is written, like the checkpoint
    if cfg.method == "ipl" and facts["mode"] == "resume":
        learners = load_learners(out, clips, source.code_dim)
    record = {
        "settings": cfg.to_dict(),
        "resolved": {
            "out": str(out), "device": str(device), "source_path": str(facts["source_path"]),
            "source_sha256": facts["source_sha256"], "source_entry": entry.name, "family": facts["family"].name,
            "source_text": source_text,
            "target_text": cfg.target_text, "layers": layers if layers is not None else "all",
            "num_layers": source.num_layers(), "truncation": truncation, "resolution": source.resolution,
            "code_dim": source.code_dim,
            **parallel_record(cfg.data_parallel, cfg.batch, cfg.batch_prompt),
        },
        "versions": versions(),
        "command": " ".join(sys.argv),
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(out / CONFIG, record)
    state["config_written"] = True
    log = JsonlLog(out / LOG)
    autocast = autocast_factory(device, cfg.precision)

    # Stage 1 (IPL): learn the prompt learners, or load them from the folder (above) / another target.
    if facts["mode"] != "resume" or (cfg.method == "ipl" and learners is None):
        log.path.unlink(missing_ok=True)  # everything is redone (stage 1 is deterministic for the seed)
    else:  # keep stage 1 and the stage-2 records up to the checkpoint; later ones are redone
        log.truncate_to(resumed_state["trainer"]["iteration"] if resumed_state else 0)
    if cfg.method == "ipl" and cfg.data_parallel:  # tell the other ranks whether stage 1 runs (they join it)
        broadcast_object(learners is None and not (
            cfg.lambda_l == 0 and _stage1_key(cfg, facts, source_text, truncation) in res.learners))
    if cfg.method == "ipl" and learners is None:
        key = _stage1_key(cfg, facts, source_text, truncation)
        if cfg.lambda_l == 0 and key in res.learners:
            learners = res.learners[key]  # L_d is off: stage 1 does not depend on the target
        else:
            learners = run_stage1(cfg, source, clips, source_text, truncation, autocast, log, progress)
            if cfg.lambda_l == 0:
                res.learners[key] = learners
        save_learners(out, learners, clips, cfg)
    if cfg.method == "ipl" and cfg.data_parallel:
        learners = share_learners(learners, clips)

    # Stage 2.
    settings = Stage2Settings.from_config(cfg, layers=layers, truncation=truncation)
    trainer_cls = source.stage2_trainer or Stage2Trainer  # diffusion: its lean trainer when asked
    trainer = trainer_cls(source, clips, source_text, cfg.target_text, learners, settings)
    if resumed_state is not None:
        try:
            trainer.load_state_dict(resumed_state["trainer"])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:
            raise CheckpointError(f"{out / CHECKPOINT}: does not fit this run ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}); it may have been tampered with "
                                  f"or come from another run. Delete it to redo stage 2 from the start with "
                                  f"--resume, or start a new run.") from None
    if cfg.data_parallel:
        share_trainer(trainer, resumed=resumed_state is not None)

    fixed = sample_latents_fixed(source, cfg, truncation, device)
    torch_save(fixed.cpu(), out / "samples" / "latents.pt")
    with torch.no_grad():
        source_row = render_batched(source, fixed)
    if trainer.iteration == 0:
        save_samples(out / "samples" / "iter_000000.png", source_row, trainer.G_ema, fixed)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iters, initial=trainer.iteration, desc=f"stage 2 ({cfg.method})", unit="it")
    try:
        while trainer.iteration < cfg.iters:
            try:
                rec = trainer.step()
            except NonFiniteLossError as e:
                _set_status(out, "failed", str(e))
                kept = (f"the last good checkpoint {out / CHECKPOINT} (iteration "
                        f"{_checkpoint_iteration(out)}) is kept" if (out / CHECKPOINT).exists()
                        else "no checkpoint had been written yet")
                raise NonFiniteLossError(f"{e} Stopped; {kept}.") from None
            log.write(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['total']:.4f}")
            it = trainer.iteration
            if it % cfg.checkpoint_every == 0 or it == cfg.iters:
                save_checkpoint(out, trainer)
            if cfg.sample_every and it % cfg.sample_every == 0 and it != cfg.iters:
                save_samples(out / "samples" / f"iter_{it:06d}.png", source_row, trainer.G_ema, fixed)
    except KeyboardInterrupt:
        _set_status(out, "interrupted", f"stopped at stage-2 iteration {trainer.iteration}; "
                    f"`ipl adapt --resume` continues from checkpoint iteration {_checkpoint_iteration(out)}")
        raise
    finally:
        if bar is not None:
            bar.close()

    # Result: the EMA generator, the final grid, the final status.
    meta = {"ipl": {"source": str(cfg.source), "source_sha256": facts["source_sha256"],
                    "source_text": source_text, "target_text": cfg.target_text, "method": cfg.method,
                    "iters": cfg.iters, "clip": list(cfg.clip), "seed": cfg.seed}}
    trainer.G_ema.save(str(out / GENERATOR), metadata=meta)
    save_samples(out / "samples" / "final.png", source_row, trainer.G_ema, fixed)
    _set_status(out, "complete")
    return out


def run_stage1(cfg: AdaptConfig, source: AdaptableGenerator, clips: list, source_text: str, truncation: float,
               autocast, log: JsonlLog, progress: bool) -> list:
    """Stage 1 through ipl.method.stage1.train_prompts; each history record goes to the log."""
    from ipl.method.stage1 import train_prompts

    t0 = time.perf_counter()
    with autocast():
        result = train_prompts(source, clips, source_text, cfg.target_text, iters=cfg.iters_prompt,
                               batch=cfg.batch_prompt, lr=cfg.lr_prompt, n_ctx=cfg.n_ctx, lambda_l=cfg.lambda_l,
                               lambda_src=cfg.lambda_src, truncation=truncation, seed=cfg.seed,
                               progress=progress, noise=cfg.noise, data_parallel=cfg.data_parallel)
    elapsed = time.perf_counter() - t0
    from ipl.method.stage2 import memory_mb

    device = next(source.parameters()).device
    mem = memory_mb(device)
    for i, rec in enumerate(result.history):
        entry = {"stage": 1, "it": i + 1}
        entry.update({k: v for k, v in rec.items() if k not in ("stage", "it", "iter")})
        entry.setdefault("seconds", round(elapsed / max(1, len(result.history)), 6))
        entry.setdefault("mem_mb", mem)
        log.write(entry)
    return list(result.learners)


class _NoLog(JsonlLog):
    """The log of a data-parallel rank other than 0: rank 0 writes the run's log."""

    def __init__(self) -> None:
        super().__init__(Path(os.devnull))

    def write(self, record: dict[str, Any]) -> None:
        pass


def _follow_run(cfg: AdaptConfig, facts: dict[str, Any], res: Resources) -> Path:
    """Data-parallel, a rank other than 0: the same stage-1 and stage-2 steps as rank 0 (_run_adapt), on this
    rank's slices of the batches; writes nothing (rank 0 owns the folder, its lock, log, samples, checkpoints)."""
    from ipl.method.stage2 import Stage2Settings, Stage2Trainer, autocast_factory

    device: torch.device = facts["device"]
    torch.manual_seed(cfg.seed)
    source = res.generator(facts["source_path"], device, facts["family"])
    entry: SourceEntry = facts["entry"] or source_for_file(str(facts["source_path"]), source.resolution)
    clips = res.clip_models(cfg.clip, device)
    source.configure(cfg.diffusion)
    source.set_code_encoder(clips[0])
    source_text = cfg.source_text if cfg.source_text is not None else entry.source_text
    layers = parse_layers(cfg.layers) if cfg.layers is not None else entry.layers
    if layers is not None:
        layers = min(layers, source.num_layers()) if source.num_layers() else None
    truncation = cfg.truncation if cfg.truncation is not None else entry.truncation
    learners = None
    if cfg.method == "ipl":
        if broadcast_object(None):  # rank 0 runs stage 1 (nothing saved to resume from): join it
            autocast = autocast_factory(device, cfg.precision)
            learners = run_stage1(cfg, source, clips, source_text, truncation, autocast, _NoLog(), False)
        learners = share_learners(learners, clips)
    settings = Stage2Settings.from_config(cfg, layers=layers, truncation=truncation)
    trainer_cls = source.stage2_trainer or Stage2Trainer
    trainer = trainer_cls(source, clips, source_text, cfg.target_text, learners, settings)
    share_trainer(trainer, resumed=False)
    while trainer.iteration < cfg.iters:
        trainer.step()
    return facts["out"]


def _stage1_key(cfg: AdaptConfig, facts: dict, source_text: str, truncation: float) -> tuple:
    return (str(facts["source_path"]), tuple(cfg.clip), source_text, cfg.iters_prompt, cfg.batch_prompt,
            cfg.lr_prompt, cfg.n_ctx, cfg.lambda_src, truncation, cfg.seed, cfg.precision, str(facts["device"]),
            cfg.noise)


def save_learners(out: Path, learners: list, clips: list, cfg: AdaptConfig) -> None:
    """prompts/learner_K.safetensors (weights) + prompts/learners.json (how to rebuild them)."""
    from ipl.core.atomic import save_safetensors

    folder = out / "prompts"
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for k, (m, clip) in enumerate(zip(learners, clips)):
        name = f"learner_{k}.safetensors"
        save_safetensors({n: t.detach().contiguous().cpu() for n, t in m.state_dict().items()}, folder / name)
        index.append({"file": name, "clip": cfg.clip[k], "init_kwargs": dict(m.init_kwargs)})
    write_json(folder / "learners.json", {"learners": index})


# PromptLearner's constructor arguments as learners.json may give them: (types, lowest, highest).
_LEARNER_KWARGS: dict[str, tuple[tuple[type, ...], float, float]] = {
    "w_dim": ((int,), 1, 1 << 16), "n_ctx": ((int,), 1, 76), "ctx_dim": ((int,), 1, 1 << 14),
    "num_layers": ((int,), 1, 64), "lr_multiplier": ((int, float), 1e-12, 1e6),
}


def _learner_kwargs(index_path: Path, k: int, item: Any, code_dim: int, ctx_dim: int) -> dict[str, Any]:
    """Check one learners.json entry: a plain file name and PromptLearner arguments of the right names/types."""
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{index_path}: learner {k}: {why}; the file may have been tampered with or is not "
                               f"written by ipl. Delete {index_path.parent} to redo stage 1 with --resume, or start "
                               f"a new run.")

    if not isinstance(item, dict) or not isinstance(item.get("file"), str) or not isinstance(
            item.get("init_kwargs"), dict):
        raise bad("expected an object with 'file' and 'init_kwargs'")
    name = item["file"]
    if Path(name).name != name or name.startswith(".") or not name.endswith(".safetensors"):
        raise bad(f"file {name!r} is not a .safetensors file name inside {index_path.parent}")
    kwargs = item["init_kwargs"]
    unknown = sorted(set(kwargs) - set(_LEARNER_KWARGS))
    if unknown or "w_dim" not in kwargs:
        raise bad(f"init_kwargs must hold w_dim and only {', '.join(_LEARNER_KWARGS)} (found {sorted(kwargs)})")
    for key, value in kwargs.items():
        types, low, high = _LEARNER_KWARGS[key]
        if isinstance(value, bool) or not isinstance(value, types) or not (low <= value <= high):
            raise bad(f"init_kwargs[{key!r}] = {value!r} is not a {'/'.join(t.__name__ for t in types)} "
                      f"in [{low}, {high}]")
    if kwargs["w_dim"] != code_dim or kwargs.get("ctx_dim", 512) != ctx_dim:
        raise bad(f"w_dim {kwargs['w_dim']} / ctx_dim {kwargs.get('ctx_dim', 512)} do not fit this run's "
                  f"generator ({code_dim}) / CLIP ({ctx_dim})")
    return dict(kwargs)


def load_learners(out: Path, clips: list, code_dim: int) -> Optional[list]:
    """The saved prompt learners of a run (None if absent); a malformed or tampered file is a CheckpointError."""
    index_path = out / "prompts" / "learners.json"
    if not index_path.is_file():
        return None
    from safetensors.torch import load_file

    from ipl.method.prompts import PromptLearner

    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))["learners"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path}: not a prompt-learner index written by ipl ({type(e).__name__}: {e}); "
                              f"it may have been tampered with. Delete {index_path.parent} to redo stage 1 with "
                              f"--resume.") from None
    if not isinstance(index, list):
        raise CheckpointError(f"{index_path}: 'learners' is not a list; it may have been tampered with")
    if len(index) != len(clips):
        return None
    learners = []
    for k, (item, clip) in enumerate(zip(index, clips)):
        m = PromptLearner(**_learner_kwargs(index_path, k, item, code_dim, clip.ctx_dim))
        weights = out / "prompts" / item["file"]
        try:
            m.load_state_dict(load_file(str(weights)))
        except Exception as e:  # safetensors raises its own error types; load_state_dict a RuntimeError
            first = str(e).splitlines()[0] if str(e) else ""
            raise _refused(weights, f"not the prompt learner's safetensors weights ({type(e).__name__}: {first})"
                           ) from None
        learners.append(m.to(clip.device).eval())
    return learners


def save_checkpoint(out: Path, trainer) -> None:
    """Atomically write the resumable state; refuses to save non-finite weights."""
    for p in trainer.G_t.parameters():
        if not torch.isfinite(p).all():
            from ipl.method.stage2 import NonFiniteLossError

            raise NonFiniteLossError(f"stage 2 iteration {trainer.iteration}: the generator weights became "
                                     f"NaN/inf; the last good checkpoint {out / CHECKPOINT} is kept.")
    torch_save({"trainer": trainer.state_dict(), "format": CHECKPOINT_FORMAT}, out / CHECKPOINT)


def _refused(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: refused to load: {why}. It may have been tampered with, or it is not a file "
                           f"written by ipl; nothing from it was executed.")


def require_safetensors(path: Path) -> None:
    """Refuse a run-folder file that should be safetensors (ipl writes no other kind there) but is not.

    A pickle or torch.save file put in its place would otherwise be read by content as another checkpoint format.
    """
    import struct

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    n = struct.unpack("<Q", head[:8])[0] if len(head) == 9 else 0
    if not (len(head) == 9 and head[8:9] == b"{" and 0 < n <= size - 8):
        raise _refused(path, "it is not a safetensors file (ipl writes a run's generator and prompt learners only "
                             "as safetensors)")


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """RUN/checkpoint.pt, read in torch's weights-only mode: tensors and plain Python data, never code.

    The trainers' state (weights, EMA, Adam and GradScaler state, the RNG state as a uint8 tensor, ints,
    floats, lists) needs no extra allowed globals. Anything else is refused with a CheckpointError naming the file.
    """
    import pickle
    import zipfile

    path = Path(path)
    hint = "Delete it to redo stage 2 from the start with --resume, or start a new run"
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message suggests weights_only=False: keep only the lines saying what was refused.
        noise = ("Weights only load failed", "Please file an issue", "Check the documentation")
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(noise)]
        reason = "; ".join(lines) or "not a weights-only torch file"
        raise _refused(path, f"it is not plain tensors and data ({reason})") from None
    except (RuntimeError, EOFError, ValueError, TypeError, KeyError, AttributeError, OSError, zipfile.BadZipFile,
            UnicodeDecodeError, MemoryError, OverflowError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{path}: not a readable ipl checkpoint ({type(e).__name__}: {first}); it is "
                              f"truncated, corrupt, tampered with or not written by ipl. {hint}.") from None
    trainer = state.get("trainer") if isinstance(state, dict) else None
    if (not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or not isinstance(trainer, dict)
            or type(trainer.get("iteration")) is not int or trainer["iteration"] < 0):
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not an ipl run checkpoint (expected format {CHECKPOINT_FORMAT!r} with a "
                              f"trainer state, found {found!r}); it may have been tampered with. {hint}.")
    return state


def _checkpoint_iteration(out: Path) -> int:
    try:
        return int(load_checkpoint(out / CHECKPOINT)["trainer"]["iteration"])
    except IPLError:
        return -1


def _set_status(out: Path, status: str, message: Optional[str] = None) -> None:
    path = out / CONFIG
    record = json.loads(path.read_text(encoding="utf-8"))
    record["status"] = status
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if message:
        record["error"] = message
    write_json(path, record)


def _stop(out: Path, cfg: AdaptConfig, status: str, message: str) -> str:
    """_stop_now with SIGTERM/SIGINT held: when a process of a torchrun job dies, the agent's SIGTERM often
    reaches the others while they handle the failed collective; the status is written first, then it arrives."""
    with held_signals():
        return _stop_now(out, cfg, status, message)


def _stop_now(out: Path, cfg: AdaptConfig, status: str, message: str) -> str:
    """Record a stopped run in config.json (unless a handler closer to the cause already did) and say what is
    kept and how to continue; never raises (on a full disk config.json itself may not be writable)."""
    if (out / CHECKPOINT).is_file():
        kept = f"the last good checkpoint {out / CHECKPOINT} (iteration {_checkpoint_iteration(out)}) is kept"
    elif cfg.method == "ipl" and not (out / "prompts" / "learners.json").is_file():
        kept = "stage 1 had not finished (its prompt learners were not saved: --resume redoes stage 1)"
    else:
        kept = "no stage-2 checkpoint had been written yet (--resume starts stage 2 from its beginning)"
    if status == "interrupted":
        message = f"interrupted (Ctrl-C / SIGINT); {kept}"
    try:
        if json.loads((out / CONFIG).read_text(encoding="utf-8")).get("status") == "running":
            _set_status(out, status, message)
        recorded = f"status {status!r} in {out / CONFIG}"
    except (OSError, ValueError, IPLError) as e:
        recorded = f"the status could not be recorded in {out / CONFIG} ({e})"
    return (f"Stopped: {recorded}; {kept}. `ipl adapt --resume --out {out}` with the same settings continues "
            f"the run" + (" once there is space on the disk" if "space" in message or "quota" in message else ""))


def _is_temp(path: Path) -> bool:
    """A temporary file of ipl.core.atomic (`.NAME.XXXX.tmp`)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def remove_stale_temp_files(out: Path) -> int:
    """Delete the temporary files a killed earlier process left in the run folder (call with the lock held)."""
    n = 0
    for folder in (out, out / "samples", out / "prompts"):
        if folder.is_dir():
            for p in folder.iterdir():
                if _is_temp(p) and p.is_file():
                    p.unlink(missing_ok=True)
                    n += 1
    return n


def read_run_config(run_dir: Path, need: Sequence[str] = ("settings", "resolved")) -> dict[str, Any]:
    """RUN/config.json as a dict, or an IPLError naming the file when it is missing, unreadable or corrupt."""
    path = Path(run_dir) / CONFIG
    redo = (f"restore it, or redo the run with `ipl adapt ... --force --out {run_dir}` (replaces the folder's run) "
            "or another --out")
    if not path.is_file():
        raise IPLError(f"{run_dir} is not an ipl run folder (no {CONFIG}); pass a folder written by `ipl adapt`")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise IPLError(f"{path} is corrupt (not UTF-8 text); {redo}") from None
    except ValueError as e:
        raise IPLError(f"{path} is corrupt (not JSON: {e}); {redo}") from None
    except OSError as e:
        raise IPLError(f"{path}: cannot read it ({e.strerror or e})") from None
    missing = [k for k in need if not isinstance(config, dict) or not isinstance(config.get(k), dict)]
    if missing:
        raise IPLError(f"{path} is corrupt (no {', '.join(repr(k) for k in missing)} section); {redo}")
    return config


def check_prompt_fits(cfg: AdaptConfig, clips: list, source_text: str) -> None:
    """IPL's prompts 'X X X X {class}.' (n_ctx learned vectors, then the class text) must fit every CLIP model's
    text context (77 tokens for OpenAI's); refused with the largest --n-ctx that fits, before anything is written."""
    if cfg.method != "ipl":
        return
    from ipl.method.prompts import PLACEHOLDER

    for spec, clip in zip(cfg.clip, clips):
        tok = clip.tokenizer
        for text in dict.fromkeys([source_text, cfg.target_text]):
            tokens = tok([" ".join([PLACEHOLDER] * cfg.n_ctx) + f" {text}."])[0]
            length = int(tokens.shape[-1])
            eot, dot = int(tokens.argmax()), int(tok(["."])[0][1])
            # A text too long is cut by the tokenizer: then the token before the end token is not the final '.'.
            if cfg.n_ctx + 3 <= length and cfg.n_ctx + 2 <= eot and int(tokens[eot - 1]) == dot:
                continue
            own = tok([f"{text}."])[0]
            n_text = int(own.argmax()) - 1  # the text's tokens with its '.'
            most = length - 2 - n_text
            fix = f"use --n-ctx {most} or less" if most >= 1 else "use a shorter text"
            raise IPLError(f"--n-ctx {cfg.n_ctx}: the prompt of {cfg.n_ctx} learned vectors + {text!r} "
                           f"({n_text} tokens with its '.') does not fit the {length}-token text context of CLIP "
                           f"{spec}; {fix}")


# Lower bounds of the memory a step needs, in images of 3 x res^2 float32 (docs/adapt.md, "Safety"): stage 2 and
# the layer probe keep, per latent, the source and adapted images and the generator's activations for the
# backward pass (far more than 8 images' worth for any StyleGAN2 or UNet); stage 1 renders without gradients.
MEMORY_IMAGES = {"batch": 10, "layer_batch": 10, "batch_prompt": 2}


def device_memory_bytes(device: torch.device) -> Optional[int]:
    """All the memory of the device: a GPU's total memory, or the machine's physical RAM (None if unknown)."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError, RuntimeError, AssertionError):
        return None


def check_memory(cfg: AdaptConfig, resolution: int, device: torch.device) -> None:
    """Refuse a batch whose images (and the activations kept for them) alone exceed the device's whole memory:
    it could only fail on allocation, after the folder is written."""
    total = device_memory_bytes(device)
    if not total:
        return
    image = 3 * int(resolution) ** 2 * 4
    for name, images in MEMORY_IMAGES.items():
        if name == "batch_prompt" and cfg.method != "ipl":
            continue
        value = int(getattr(cfg, name))
        need = value * images * image
        if need > total:
            fit = max(0, total // (images * image))
            raise IPLError(f"--{name.replace('_', '-')} {value}: at {resolution} px this needs at least "
                           f"{_size(need)} ({value} x {images} images of 3 x {resolution}^2 x 4 bytes) but "
                           f"the {device.type} has {_size(total)} in all; use --{name.replace('_', '-')} "
                           f"{fit} or less" + (" (or a smaller model)" if fit == 0 else ""))


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return (type(e).__name__ == "OutOfMemoryError" or "out of memory" in text.lower()
            or "can't allocate memory" in text or "not enough memory" in text)


def sample_latents_fixed(source: AdaptableGenerator, cfg: AdaptConfig, truncation: float,
                         device: torch.device) -> torch.Tensor:
    """The grids' latents: always the same for a given seed."""
    g = torch.Generator(device="cpu")  # CPU stream: the same latents on every device
    g.manual_seed(int(cfg.seed) + 2)
    return source.sample_latents(cfg.sample_n, generator=g, truncation=truncation)


@torch.no_grad()
def render_batched(generator: AdaptableGenerator, latents: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Render in chunks, fp32, on CPU at the end."""
    outs = [generator.render(latents[i:i + batch]).float().cpu() for i in range(0, latents.shape[0], batch)]
    return torch.cat(outs)


def save_samples(path: Path, source_row: torch.Tensor, adapted: AdaptableGenerator, latents: torch.Tensor) -> None:
    """Grid: source row over adapted row, same latents."""
    from ipl.core.images import save_grid

    save_grid([source_row, render_batched(adapted, latents)], str(path))


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class RunInfo:
    """A finished (or partly finished) run, loaded."""

    run_dir: Path
    config: dict[str, Any]                 # the run's config.json
    source: AdaptableGenerator             # G_s
    adapted: AdaptableGenerator            # the saved EMA generator
    entry: SourceEntry                     # registry entry (or a stand-in for a user file)
    source_path: Path

    @property
    def source_generator(self) -> AdaptableGenerator:
        """Alias of `source`."""
        return self.source

    @property
    def adapted_generator(self) -> AdaptableGenerator:
        """Alias of `adapted`."""
        return self.adapted


def export_run_generator(config: dict[str, Any], src: Path, target: Path, fmt: str) -> None:
    """Write the generator file `src` of the run described by `config` to `target` in another tool's format."""
    generator = generators.load_adaptable(str(src), device="cpu")
    if fmt not in generator.export_formats:
        raise IPLError(f"{src}: this generator cannot be written as {fmt!r} (formats it can write: "
                       f"{', '.join(generator.export_formats) or 'none'})")
    meta = {"source": config["settings"]["source"], "target_text": config["settings"]["target_text"],
            "method": config["settings"]["method"], "exported_from": str(src)}
    generator.export(str(target), fmt, meta)


def load_run(run_dir, device: str = "cpu") -> RunInfo:
    """Load a run folder's source and adapted generators (so `ipl sample RUN` / `ipl eval RUN` work)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise IPLError(f"{run_dir} is not an ipl run folder (no {CONFIG}); pass a folder written by `ipl adapt`")
    config = read_run_config(run_dir)
    if not (run_dir / GENERATOR).is_file():
        raise IPLError(f"{run_dir} has no adapted generator yet ({GENERATOR}; status: "
                       f"{config.get('status')}). Finish it with `ipl adapt --resume --out {run_dir} ...`.")
    require_safetensors(run_dir / GENERATOR)
    resolved = config["resolved"]
    source_path = Path(resolved["source_path"])
    entry = None
    if resolved.get("source_entry") and is_registry_name(config["settings"]["source"]):
        entry = get_source(config["settings"]["source"])
    if not source_path.exists():  # a file, or a folder for diffusers sources
        if entry is None:
            raise IPLError(f"the source checkpoint of run {run_dir} is gone: {source_path}. Put it back there.")
        source_path, _, _ = resolve_source(config["settings"]["source"], allow_download=False)
    source = generators.load_adaptable(str(source_path), device=device)
    source.configure(config["settings"].get("diffusion"))  # diffusion: the run's options (t0, pool) shape it
    adapted = generators.load_adaptable(str(run_dir / GENERATOR), device=device)
    adapted.attach_source(source)  # diffusion: latents are the source model's inversions
    if entry is None:
        entry = source_for_file(str(source_path), source.resolution)
    return RunInfo(run_dir=run_dir, config=config, source=source, adapted=adapted, entry=entry,
                   source_path=source_path)
