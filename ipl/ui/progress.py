"""A run's progress read from its folder (config.json, log.jsonl, samples/) while `ipl adapt` writes it.

Stage-1 records reach log.jsonl only when stage 1 ends, so during stage 1 the iteration comes from the
progress bar the adapt process prints (its stderr), when the page started it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

_STAGE1_BAR = re.compile(r"stage 1 \(prompts\):\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)(?: \[[\d:]+<([\d:]+))?")


@dataclass
class Progress:
    """Where a run stands."""

    status: str                       # "not started", "running", "complete", "interrupted", "failed", ...
    stage: Optional[int] = None       # 1 (prompt learners) or 2 (generator)
    iteration: int = 0                # of the current stage
    total: Optional[int] = None       # iterations of the current stage
    loss: Optional[float] = None      # the newest record's loss (stage 1 "loss", stage 2 "total")
    seconds_left: Optional[float] = None
    grid: Optional[Path] = None       # the newest source-over-adapted grid
    error: Optional[str] = None
    method: Optional[str] = None

    def describe(self) -> str:
        """One Markdown line for the page."""
        parts = [f"**{self.status}**"]
        if self.stage is not None:
            what = "prompt learners" if self.stage == 1 else "generator"
            parts.append(f"stage {self.stage} ({what}): iteration {self.iteration}"
                         + (f" / {self.total}" if self.total else ""))
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.seconds_left is not None and self.status == "running":
            parts.append(f"about {_duration(self.seconds_left)} left" + (" in stage 1" if self.stage == 1 else ""))
        text = " · ".join(parts)
        return text + (f"\n\n{self.error}" if self.error else "")


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _records(path: Path) -> list[dict[str, Any]]:
    """The log's records; a line being written (torn) is skipped."""
    if path.is_symlink():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def newest_grid(run: Path) -> Optional[Path]:
    """samples/final.png if written, else the samples/iter_NNNNNN.png of the highest iteration."""
    samples = Path(run) / "samples"
    if samples.is_symlink():   # the page reads only what lies inside the run folder
        return None
    final = samples / "final.png"
    if final.is_file() and not final.is_symlink():
        return final
    grids = sorted(p for p in samples.glob("iter_*.png") if re.fullmatch(r"iter_\d{6}\.png", p.name)
                   and p.is_file() and not p.is_symlink())
    return grids[-1] if grids else None


def stage1_from_bar(stderr_text: str) -> Optional[tuple[int, int]]:
    """(iteration, total) of the last stage-1 progress bar in an adapt process's stderr."""
    hits = _STAGE1_BAR.findall(stderr_text[-20000:])
    return (int(hits[-1][0]), int(hits[-1][1])) if hits else None


def stage1_seconds_left(stderr_text: str) -> Optional[float]:
    """The time left the last stage-1 progress bar estimates (tqdm's `[elapsed<left`), in seconds."""
    hits = _STAGE1_BAR.findall(stderr_text[-20000:])
    if not hits or not hits[-1][2]:
        return None
    seconds = 0.0
    for part in hits[-1][2].split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def read_progress(run: Path, stderr_text: str = "") -> Progress:
    """The progress of the run in folder `run` (which may not exist yet)."""
    run = Path(run)
    try:
        if (run / "config.json").is_symlink():
            raise ValueError("a symlink")
        config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict) or not isinstance(config.get("settings"), dict):
            raise ValueError("no settings")
    except (OSError, ValueError, UnicodeDecodeError):
        bar = stage1_from_bar(stderr_text)
        return Progress(status="starting", stage=1 if bar else None, iteration=bar[0] if bar else 0,
                        total=bar[1] if bar else None)
    settings = config["settings"]
    method = settings.get("method")
    iters, iters_prompt = int(settings.get("iters") or 0), int(settings.get("iters_prompt") or 0)
    records = _records(run / "log.jsonl")
    s1 = [r for r in records if r.get("stage") == 1]
    s2 = [r for r in records if r.get("stage") == 2]
    p = Progress(status=str(config.get("status", "unknown")), grid=newest_grid(run), method=method,
                 error=config.get("error") if config.get("status") != "complete" else None)
    mean2 = _mean_seconds(s2)
    if s2:
        p.stage, p.iteration, p.total = 2, int(s2[-1].get("it", len(s2))), iters
        p.loss = _float(s2[-1].get("total"))
        if mean2 is not None:
            p.seconds_left = max(0, iters - p.iteration) * mean2
    elif s1 or method == "nada":
        p.stage, p.iteration, p.total = 2, 0, iters
        if s1:
            p.loss = _float(s1[-1].get("loss"))
    else:
        bar = stage1_from_bar(stderr_text)
        p.stage, p.iteration, p.total = 1, bar[0] if bar else 0, iters_prompt
        p.seconds_left = stage1_seconds_left(stderr_text)
    if p.stage == 1:
        return p
    if p.status == "complete":
        p.iteration, p.seconds_left = iters, 0.0
    return p


def _mean_seconds(records: list[dict[str, Any]], last: int = 20) -> Optional[float]:
    vals = [_float(r.get("seconds")) for r in records[-last:]]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _float(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
