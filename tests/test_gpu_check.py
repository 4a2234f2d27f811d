"""scripts/gpu_check.py works end to end in --dry-run (toy sizes, CPU): every step runs and one JSON is written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # four subprocesses (pytest, two benchmarks): 256 s on the loaded shared 2-core machine
def test_gpu_check_dry_run_writes_one_json(tmp_path):
    from tiny_clip import write_tiny_clip_files

    out = tmp_path / "check.json"
    clip_cfg, _ = write_tiny_clip_files(tmp_path / "clip")
    # The compiled candidate is left out here (compiling takes minutes on CPU); the real run has it.
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--dry-run", "--out", str(out), "--budget-s", "240",
                           "--candidates", "fp32:ref:reference,bf16:auto:reference,bf16:auto:grad",
                           "--clip", f"{clip_cfg}:none"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and set(report["steps"]) == {"build", "tests", "ops", "adapt"}
    steps = report["steps"]
    summary = json.loads(proc.stdout)
    assert summary["out"] == str(out) and summary["steps"] == {k: v["rc"] for k, v in steps.items()}
    if not torch.cuda.is_available():
        # No GPU: the build step says why (and fails), the GPU tests skip, the benchmarks run on CPU.
        assert steps["build"]["rc"] == 1 and "GPU" in steps["build"]["result"]["reason"]
        assert report["ok"] is False and proc.returncode == 1
    assert steps["tests"]["rc"] == 0, steps["tests"]
    assert steps["ops"]["rc"] == 0 and steps["ops"]["result"]["suite"] == "ops", steps["ops"]
    adapt = steps["adapt"]
    assert adapt["rc"] == 0, adapt
    results = adapt["result"]["results"]
    assert set(results) == {"fp32_ref", "bf16_auto", "bf16_auto_grad"}
    assert results["bf16_auto_grad"]["probe"] == "grad" and results["bf16_auto"]["precision"] == "bf16"
    targets = report["targets"]
    assert {"both_stages_under_60s", "peak_under_10gb", "bf16_cuda_at_least_2x", "note"} <= set(targets)
    assert targets["bf16_cuda_vs_fp32_ref_speedup"] > 0
