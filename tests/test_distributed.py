"""`ipl adapt` / `ipl eval` under torchrun: 2 CPU processes (gloo) against one process, on the tiny world.

Two torchrun launches: tests/dist_worker.py (data-parallel stages 1 and 2, a data-parallel CLI run interrupted and
resumed, different settings on one rank, a sharded eval) and `python -m ipl adapt` with three targets spread over
the two processes. Every result is compared with the same work done in this (one) process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dist_worker import adapt_args, cli, eval_args, trainer_case
from tiny_world import tiny_world

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300  # a loaded 2-core box; both launches take ~20 s when it is idle


def torchrun(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 ARGS` (a free port of its own), one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IPL_OFFLINE": "1", "TORCH_HOME": str(tmp / "torch_home"),
           "PYTHONPATH": str(REPO / "tests")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("dist_world"))


@pytest.fixture(scope="module")
def launched(world, tmp_path_factory) -> Path:
    """The worker's outputs (one torchrun launch for all the data-parallel and eval cases)."""
    out = tmp_path_factory.mktemp("dist_out")
    torchrun(out, "tests/dist_worker.py", world["gen"], world["clip"], str(out))
    return out


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("IPL_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _weights(run: Path) -> dict:
    return load_file(str(run / "generator.safetensors"))


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_data_parallel_stages_equal_one_process_with_the_whole_batch(launched, world):
    # 2 ranks x (stage 1: 2, stage 2: 1 latent) against one process with batches 4 and 2, from the same latents.
    one = trainer_case(world["gen"], world["clip"], batch=2, batch_prompt=4, data_parallel=False)
    ranks = [torch.load(launched / f"trainer_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert _max_diff(ranks[0]["G_t"], ranks[1]["G_t"]) == 0 and _max_diff(ranks[0]["G_ema"], ranks[1]["G_ema"]) == 0
    got = ranks[0]
    assert got["rendered"] == [1, 1, 1] and one["rendered"] == [2, 2, 2]  # each rank renders its half only
    assert _max_diff(one["G_t"], one["G_s"]) > 1e-3  # 3 steps at lr 0.01 move the trained layer far beyond the tolerance
    assert _max_diff(got["G_t"], one["G_t"]) < 1e-5
    assert _max_diff(got["G_ema"], one["G_ema"]) < 1e-5
    assert [r["layers"] for r in got["stage2"]] == [r["layers"] for r in one["stage2"]]
    for a, b in zip(got["stage2"], one["stage2"]):  # logged: the whole batch's loss, not rank 0's half
        assert a["total"] == pytest.approx(b["total"], abs=1e-4)
    # Stage 1: the contrastive loss couples the batch; gathered features give the one-process loss and gradient.
    assert got["stage1_loss"] == pytest.approx(one["stage1_loss"], abs=1e-5)
    for a, b in zip(got["learners"], one["learners"]):
        assert _max_diff(a, b) < 1e-4


def test_data_parallel_run_resumes_and_equals_one_process(launched, world, tmp_path):
    statuses = [json.loads((launched / f"status_rank{r}.json").read_text()) for r in (0, 1)]
    for s in statuses:
        assert (s["full"], s["interrupted"], s["resumed"]) == (0, 130, 0)
    full, resumed = launched / "dp_full", launched / "dp_resumed"
    config = json.loads((full / "config.json").read_text())
    assert config["status"] == "complete" and config["settings"]["data_parallel"] is True
    assert config["resolved"]["data_parallel_processes"] == 2
    assert (config["resolved"]["batch_per_process"], config["resolved"]["batch_prompt_per_process"]) == (1, 2)
    # The interrupted run resumed from its step-2 checkpoint gives the uninterrupted run, bit for bit.
    assert _max_diff(_weights(resumed), _weights(full)) == 0
    assert [r["it"] for r in _log(resumed) if r["stage"] == 2] == [1, 2, 3, 4]  # rank 0 alone wrote it, once
    assert cli(adapt_args(world["gen"], world["clip"], tmp_path / "one")) == 0
    assert _max_diff(_weights(full), _weights(tmp_path / "one")) < 1e-5


def test_ranks_with_different_settings_refuse_to_start(launched):
    for r in (0, 1):
        message = json.loads((launched / f"status_rank{r}.json").read_text())["mismatch"]
        assert message and "differ between ranks: rank(s) 1" in message and f"this is rank {r}" in message


def test_sharded_eval_equals_one_process(launched, world, tmp_path):
    assert all(json.loads((launched / f"status_rank{r}.json").read_text())["eval"] == 0 for r in (0, 1))
    assert cli(eval_args(world["clip"], launched / "dp_full", tmp_path / "one.json")) == 0
    sharded = json.loads((launched / "eval_sharded.json").read_text())["columns"][0]
    one = json.loads((tmp_path / "one.json").read_text())["columns"][0]
    assert sharded["n"] == one["n"] == 10
    assert sharded["values"] == one["values"] and sharded["details"] == one["details"]  # exactly


def test_targets_spread_over_ranks_equal_one_process_runs(world, tmp_path):
    targets = ["a striped shape", "a dotted shape", "a red shape"]  # rank 0 runs two, rank 1 one
    args = ["adapt", "--source", world["gen"], "--clip", world["clip"], "--source-text", "a solid shape",
            "--method", "nada", "--iters", "3", "--batch", "2", "--layers", "1", "--layer-batch", "2",
            "--sample-every", "0", "--sample-n", "2", "--device", "cpu", "--quiet"]
    for t in targets:
        args += ["--target", t]
    proc = torchrun(tmp_path, "-m", "ipl", *args, "--out", str(tmp_path / "spread"))
    assert cli([*args, "--out", str(tmp_path / "one")]) == 0
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(names) == 3 and sorted(p.name for p in (tmp_path / "spread").iterdir()) == names
    # The summary: every run folder, printed once (by rank 0) after all finished.
    printed = [line for line in proc.stdout.splitlines() if line.strip()]
    assert sorted(Path(line).name for line in printed) == names
    for name in names:
        a, b = tmp_path / "spread" / name, tmp_path / "one" / name
        assert _max_diff(_weights(a), _weights(b)) < 1e-6
        ca, cb = (json.loads((x / "config.json").read_text()) for x in (a, b))
        assert ca["status"] == cb["status"] == "complete"
        assert {k: v for k, v in ca["settings"].items() if k != "out"} == \
               {k: v for k, v in cb["settings"].items() if k != "out"}
        la, lb = ([(r["it"], r["total"], r["layers"]) for r in _log(x)] for x in (a, b))
        assert [(i, layers) for i, _, layers in la] == [(i, layers) for i, _, layers in lb]
        assert [t for _, t, _ in la] == pytest.approx([t for _, t, _ in lb], abs=1e-6)
