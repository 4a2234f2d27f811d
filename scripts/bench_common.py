"""Helpers shared by the benchmark suites: device sync and peak-memory measurement."""
from __future__ import annotations

from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (GPU allocator peak, or the process's peak RSS on Linux)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # Linux: writing 5 resets the process's peak RSS (VmHWM)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_mb(device: torch.device) -> float:
    """Peak memory in MiB since the last `reset_peak` (NaN where it cannot be read)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")
