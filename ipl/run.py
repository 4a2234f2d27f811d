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
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ipl import generators
from ipl.core.atomic import torch_save, write_json
from ipl.core.config import AdaptConfig, parse_layers, slugify
from ipl.core.errors import IPLError
from ipl.core.interface import AdaptableGenerator
from ipl.core.family import GeneratorFamily
from ipl.registry import SourceEntry, family_of, get_source, is_registry_name, source_for_file

CONFIG = "config.json"
LOG = "log.jsonl"
CHECKPOINT = "checkpoint.pt"
GENERATOR = "generator.safetensors"
RUN_FILES = (CONFIG, LOG, CHECKPOINT, GENERATOR, "samples", "prompts")
# Settings that may differ on --resume without changing the result.
RESUME_FREE = {"out", "device", "sample_every", "checkpoint_every"}


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
    """Decide what to do with the output folder: 'new', 'resume' or 'overwrite'. Refuses otherwise."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise IPLError(f"--out {out} exists and is not a folder; choose another --out")
    if is_run_folder(out):
        if resume:
            return "resume"
        if force:
            return "overwrite"
        raise IPLError(f"{out} already holds a run ({out / CONFIG}). Pass --resume to continue it, --force to "
                       "replace it, or choose another --out. Nothing was written.")
    if any(out.iterdir()) and not force:
        raise IPLError(f"{out} is not empty and does not hold an ipl run; choose an empty or new --out, "
                       "or pass --force to write into it. Nothing was written.")
    return "new"


class JsonlLog:
    """Append-only JSON-lines log, flushed per record."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
            fh.flush()

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
        saved = json.loads((out / CONFIG).read_text(encoding="utf-8")) if (out / CONFIG).is_file() else None
        if saved is not None:
            diff = {k: (v, cfg.to_dict().get(k)) for k, v in saved["settings"].items()
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
    """Run (or resume) one adaptation; returns the run folder."""
    from ipl.method.stage2 import NonFiniteLossError, Stage2Settings, Stage2Trainer, autocast_factory

    facts = prepared or prepare(cfg, resume=resume, force=force, progress=progress)
    res = resources or Resources()
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
    layers = parse_layers(cfg.layers) if cfg.layers is not None else entry.layers
    if layers is not None:
        layers = min(layers, source.num_layers()) if source.num_layers() else None
    truncation = cfg.truncation if cfg.truncation is not None else entry.truncation

    # The folder.
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
        resumed_state = torch.load(out / CHECKPOINT, map_location=device, weights_only=False)
    record = {
        "settings": cfg.to_dict(),
        "resolved": {
            "out": str(out), "device": str(device), "source_path": str(facts["source_path"]),
            "source_sha256": facts["source_sha256"], "source_entry": entry.name, "family": facts["family"].name,
            "source_text": source_text,
            "target_text": cfg.target_text, "layers": layers if layers is not None else "all",
            "num_layers": source.num_layers(), "truncation": truncation, "resolution": source.resolution,
            "code_dim": source.code_dim,
        },
        "versions": versions(),
        "command": " ".join(sys.argv),
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(out / CONFIG, record)
    log = JsonlLog(out / LOG)
    autocast = autocast_factory(device, cfg.precision)

    # Stage 1 (IPL): learn the prompt learners, or load them from the folder / another target.
    learners = None
    if cfg.method == "ipl" and facts["mode"] == "resume":
        learners = load_learners(out, clips, source.code_dim)
    if facts["mode"] != "resume" or (cfg.method == "ipl" and learners is None):
        log.path.unlink(missing_ok=True)  # everything is redone (stage 1 is deterministic for the seed)
    else:  # keep stage 1 and the stage-2 records up to the checkpoint; later ones are redone
        log.truncate_to(resumed_state["trainer"]["iteration"] if resumed_state else 0)
    if cfg.method == "ipl" and learners is None:
        key = _stage1_key(cfg, facts, source_text, truncation)
        if cfg.lambda_l == 0 and key in res.learners:
            learners = res.learners[key]  # L_d is off: stage 1 does not depend on the target
        else:
            learners = run_stage1(cfg, source, clips, source_text, truncation, autocast, log, progress)
            if cfg.lambda_l == 0:
                res.learners[key] = learners
        save_learners(out, learners, clips, cfg)

    # Stage 2.
    settings = Stage2Settings.from_config(cfg, layers=layers, truncation=truncation)
    trainer_cls = source.stage2_trainer or Stage2Trainer  # diffusion: its lean trainer when asked
    trainer = trainer_cls(source, clips, source_text, cfg.target_text, learners, settings)
    if resumed_state is not None:
        trainer.load_state_dict(resumed_state["trainer"])

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
                               progress=progress)
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


def _stage1_key(cfg: AdaptConfig, facts: dict, source_text: str, truncation: float) -> tuple:
    return (str(facts["source_path"]), tuple(cfg.clip), source_text, cfg.iters_prompt, cfg.batch_prompt,
            cfg.lr_prompt, cfg.n_ctx, cfg.lambda_src, truncation, cfg.seed, cfg.precision, str(facts["device"]))


def save_learners(out: Path, learners: list, clips: list, cfg: AdaptConfig) -> None:
    """prompts/learner_K.safetensors (weights) + prompts/learners.json (how to rebuild them)."""
    from safetensors.torch import save_file

    from ipl.core.atomic import atomic_path

    folder = out / "prompts"
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for k, (m, clip) in enumerate(zip(learners, clips)):
        name = f"learner_{k}.safetensors"
        with atomic_path(folder / name) as tmp:
            save_file({n: t.detach().contiguous().cpu() for n, t in m.state_dict().items()}, str(tmp))
        index.append({"file": name, "clip": cfg.clip[k], "init_kwargs": dict(m.init_kwargs)})
    write_json(folder / "learners.json", {"learners": index})


def load_learners(out: Path, clips: list, code_dim: int) -> Optional[list]:
    """The saved prompt learners of a run (None if absent)."""
    index_path = out / "prompts" / "learners.json"
    if not index_path.is_file():
        return None
    from safetensors.torch import load_file

    from ipl.method.prompts import PromptLearner

    index = json.loads(index_path.read_text(encoding="utf-8"))["learners"]
    if len(index) != len(clips):
        return None
    learners = []
    for item, clip in zip(index, clips):
        m = PromptLearner(**item["init_kwargs"])
        assert m.w_dim == code_dim and m.ctx_dim == clip.ctx_dim, (item, code_dim, clip.ctx_dim)
        m.load_state_dict(load_file(str(out / "prompts" / item["file"])))
        learners.append(m.to(clip.device).eval())
    return learners


def save_checkpoint(out: Path, trainer) -> None:
    """Atomically write the resumable state; refuses to save non-finite weights."""
    for p in trainer.G_t.parameters():
        if not torch.isfinite(p).all():
            from ipl.method.stage2 import NonFiniteLossError

            raise NonFiniteLossError(f"stage 2 iteration {trainer.iteration}: the generator weights became "
                                     f"NaN/inf; the last good checkpoint {out / CHECKPOINT} is kept.")
    torch_save({"trainer": trainer.state_dict(), "format": "ipl-run-checkpoint-1"}, out / CHECKPOINT)


def _checkpoint_iteration(out: Path) -> int:
    try:
        return int(torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False)["trainer"]["iteration"])
    except Exception:
        return -1


def _set_status(out: Path, status: str, message: Optional[str] = None) -> None:
    path = out / CONFIG
    record = json.loads(path.read_text(encoding="utf-8"))
    record["status"] = status
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if message:
        record["error"] = message
    write_json(path, record)


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


def load_run(run_dir, device: str = "cpu") -> RunInfo:
    """Load a run folder's source and adapted generators (so `ipl sample RUN` / `ipl eval RUN` work)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise IPLError(f"{run_dir} is not an ipl run folder (no {CONFIG}); pass a folder written by `ipl adapt`")
    config = json.loads((run_dir / CONFIG).read_text(encoding="utf-8"))
    if not (run_dir / GENERATOR).is_file():
        raise IPLError(f"{run_dir} has no adapted generator yet ({GENERATOR}; status: "
                       f"{config.get('status')}). Finish it with `ipl adapt --resume --out {run_dir} ...`.")
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
