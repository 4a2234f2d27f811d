"""A run that stops (Ctrl-C in stage 1, a full disk) says so in config.json and resumes; one process per run folder.

Through the console entry point `ipl.commands.cli.main`: exit 130 for an interrupt, 2 with one message naming the
file for a full disk; status `interrupted` / `failed`; the last good checkpoint kept; no temporary file left;
`--resume` completes to the same generator as an uninterrupted run. RUN/.lock keeps a second process out.
"""
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ipl.method.stage2 import Stage2Trainer
from ipl.runlock import LOCK, RunInUseError, RunLock, holder
from tiny_world import run_main, tiny_world

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("safety"), seed=1, clip_seed=1, name="g.safetensors")


def _args(world, out, *extra):
    return ["adapt", "--source", world["gen"], "--source-text", "a solid shape", "--target", "a dotted shape",
            "--clip", world["clip"], "--iters-prompt", "2", "--batch-prompt", "4", "--iters", "4", "--layers", "2",
            "--layer-batch", "2", "--sample-n", "2", "--sample-every", "2", "--checkpoint-every", "2",
            "--seed", "7", "--device", "cpu", "--out", str(out), "--quiet", *extra]


def _errors(err):
    return [l for l in err.splitlines() if l.startswith("Error")]


def _status(out):
    return json.loads((Path(out) / "config.json").read_text())


def _temps(out):
    return [p for p in Path(out).rglob("*.tmp")]


@pytest.fixture(scope="module")
def reference(world):
    """The uninterrupted run every resumed run must equal."""
    out = world["root"] / "full"
    from click.testing import CliRunner

    from ipl.commands.cli import cli
    res = CliRunner().invoke(cli, _args(world, out))
    assert res.exit_code == 0, (res.output, res.exception)
    return load_file(str(out / "generator.safetensors"))


def _same_as(reference, out):
    got = load_file(str(Path(out) / "generator.safetensors"))
    assert set(got) == set(reference)
    for k in got:
        assert torch.equal(got[k], reference[k]), k


# ------------------------------------------------------------------------------------------------- interrupts
def test_ctrl_c_in_stage1_then_resume(world, reference, tmp_path, monkeypatch, capsys):
    import ipl.method.stage1 as stage1

    out = tmp_path / "cut"
    real = stage1.stage1_losses
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # during stage-1 iteration 2
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(stage1, "stage1_losses", interrupted)
    code, err = run_main(monkeypatch, capsys, _args(world, out))
    assert code == 130, err
    assert "Interrupted:" in err and "stage 1" in err, err
    cfg = _status(out)
    assert cfg["status"] == "interrupted" and "stage 1" in cfg["error"], cfg
    assert not (out / "prompts" / "learners.json").exists() and not (out / "generator.safetensors").exists()
    assert _temps(out) == []
    monkeypatch.setattr(stage1, "stage1_losses", real)

    # A kill during a write (SIGKILL: no cleanup can run) leaves a temporary file: the resume removes it.
    (out / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"")
    (out / "samples" / ".iter_000002.png.k1ll3d.tmp").write_bytes(b"")
    code, err = run_main(monkeypatch, capsys, _args(world, out, "--resume"))
    assert code == 0, err
    assert _status(out)["status"] == "complete"
    assert _temps(out) == []
    _same_as(reference, out)


# ------------------------------------------------------------------------------------------------- full disks
def _enospc():
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["checkpoint-oserror", "checkpoint-torch", "grid", "log"])
def test_full_disk_fails_cleanly_then_resume(world, reference, tmp_path, monkeypatch, capsys, where):
    import PIL.Image

    import ipl.run
    out = tmp_path / "full-disk"
    seen = {"ckpt": 0}
    real_save, real_png, real_open = torch.save, PIL.Image.Image.save, open

    def save(obj, f, *a, **k):  # the checkpoint at iteration 4 (the second one) hits a full disk mid-write
        if Path(str(f)).name.startswith(".checkpoint.pt."):
            seen["ckpt"] += 1
            if seen["ckpt"] == 2:
                Path(f).write_bytes(b"PK\x03\x04 partial")
                raise (_enospc() if where == "checkpoint-oserror" else RuntimeError(
                    "[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file "
                    "data/3: file write failed"))
        return real_save(obj, f, *a, **k)

    def png(self, fp, *a, **k):
        if Path(str(fp)).name.startswith(".iter_000002.png."):
            Path(fp).write_bytes(b"\x89PNG partial")
            raise _enospc()
        return real_png(self, fp, *a, **k)

    def log_open(file, mode="r", *a, **k):
        if str(file).endswith("log.jsonl") and "a" in mode and (out / "checkpoint.pt").exists():
            raise _enospc()
        return real_open(file, mode, *a, **k)

    if where.startswith("checkpoint"):
        monkeypatch.setattr(torch, "save", save)
        victim, kept_iteration = out / "checkpoint.pt", 2
    elif where == "grid":
        monkeypatch.setattr(PIL.Image.Image, "save", png)
        victim, kept_iteration = out / "samples" / "iter_000002.png", 2
    else:
        monkeypatch.setattr(ipl.run, "open", log_open, raising=False)
        victim, kept_iteration = out / "log.jsonl", 2
    code, err = run_main(monkeypatch, capsys, _args(world, out))
    monkeypatch.undo()

    assert code == 2, err
    errors = _errors(err)
    assert len(errors) == 1, err
    assert f"could not write {victim}: no space left on device" in errors[0], err
    assert "status 'failed'" in errors[0] and "--resume" in errors[0], err
    assert f"checkpoint {out / 'checkpoint.pt'} (iteration {kept_iteration}) is kept" in errors[0], err
    cfg = _status(out)
    assert cfg["status"] == "failed" and "no space left on device" in cfg["error"], cfg
    assert torch.load(out / "checkpoint.pt", weights_only=True)["trainer"]["iteration"] == kept_iteration
    assert _temps(out) == [], _temps(out)
    assert not (out / "generator.safetensors").exists()

    code, err = run_main(monkeypatch, capsys, _args(world, out, "--resume"))
    assert code == 0, err
    assert _status(out)["status"] == "complete"
    _same_as(reference, out)


def test_unexpected_error_is_recorded_as_failed(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "boom"

    def boom(self):
        raise ValueError("a bug")

    monkeypatch.setattr(Stage2Trainer, "step", boom)
    with pytest.raises(ValueError):
        run_main(monkeypatch, capsys, _args(world, out))
    cfg = _status(out)
    assert cfg["status"] == "failed" and "ValueError: a bug" in cfg["error"]


# ------------------------------------------------------------------------------------------------- the lock
def _snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in Path(folder).rglob("*"))


def test_second_process_is_refused_naming_the_pid(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    lock = RunLock.acquire(out)  # another `ipl adapt` holds the folder (flock: separate open file, same process)
    try:
        before = _snapshot(out)
        for extra in ([], ["--resume"], ["--force"]):
            code, err = run_main(monkeypatch, capsys, _args(world, out, *extra))
            assert code == 2 and len(_errors(err)) == 1, err
            assert f"pid {os.getpid()}" in err and "in use" in err and "Nothing was written" in err, err
            assert _snapshot(out) == before
    finally:
        lock.release()

    # The lock is held for the whole run and released at its end; a folder holding only the lock file is "new".
    seen = []
    real = Stage2Trainer.step

    def step(self):
        seen.append(holder(out))
        return real(self)

    monkeypatch.setattr(Stage2Trainer, "step", step)
    code, err = run_main(monkeypatch, capsys, _args(world, out))
    assert code == 0, err
    assert seen and set(seen) == {os.getpid()}
    assert holder(out) is None


def test_lock_held_by_another_process_and_freed_when_it_dies(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "other"
    out.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                              "from ipl.runlock import RunLock\nRunLock.acquire(Path(sys.argv[1]))\n"
                              "print('locked', flush=True)\ntime.sleep(120)\n", str(out)],
                             stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert child.stdout.readline().strip() == "locked"
        code, err = run_main(monkeypatch, capsys, _args(world, out))
        assert code == 2 and f"pid {child.pid}" in err, err
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
    finally:
        child.kill()
        child.wait(timeout=30)
    assert holder(out) is None  # the OS dropped the lock with the process
    RunLock.acquire(out).release()


def test_lock_without_fcntl_uses_an_exclusive_pid_file(tmp_path, monkeypatch):
    import ipl.runlock as runlock
    monkeypatch.setattr(runlock, "fcntl", None)
    lock = RunLock.acquire(tmp_path)
    assert (tmp_path / LOCK).read_text().split()[0] == str(os.getpid())
    with pytest.raises(RunInUseError, match=f"pid {os.getpid()}"):
        RunLock.acquire(tmp_path)
    assert holder(tmp_path) == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK).exists() and holder(tmp_path) is None
    # A lock whose process is gone is stale: taken over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text(f"{dead.pid}\n")
    assert holder(tmp_path) is None
    RunLock.acquire(tmp_path).release()


FIRST = """
import sys, time
from pathlib import Path
from ipl.method.stage2 import Stage2Trainer
gate, real = Path(sys.argv[1]), Stage2Trainer.step
def step(self):  # hold the run in stage 2 until the test opens the gate
    while not gate.exists():
        time.sleep(0.05)
    return real(self)
Stage2Trainer.step = step
sys.argv = ["ipl", *sys.argv[2:]]
from ipl.commands.cli import main
main()
"""


def test_two_real_processes(world, tmp_path):
    """Two `ipl adapt` on the same --out at once: one runs, the other exits 2 naming the first's pid and writes
    nothing; the log is the first run's alone."""
    out, gate = tmp_path / "race", tmp_path / "gate"
    first = subprocess.Popen([sys.executable, "-c", FIRST, str(gate), *_args(world, out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.time() + 120
        while not (out / "samples" / "iter_000000.png").exists() and first.poll() is None:
            assert time.time() < deadline, "the first run did not reach stage 2"
            time.sleep(0.05)
        before = _snapshot(out)
        for extra in ([], ["--resume"], ["--force"]):
            second = subprocess.run([sys.executable, "-m", "ipl.commands.cli", *_args(world, out, *extra)],
                                    capture_output=True, text=True, cwd=REPO, timeout=120)
            assert second.returncode == 2, second.stderr
            assert f"pid {first.pid}" in second.stderr and "in use" in second.stderr, second.stderr
            assert _snapshot(out) == before
    finally:
        gate.write_text("go")
        _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["it"] for r in log if r["stage"] == 2] == [1, 2, 3, 4]
    assert [r["it"] for r in log if r["stage"] == 1] == [1, 2] and _status(out)["status"] == "complete"


def test_sigterm_stops_a_run_like_ctrl_c(world, tmp_path):
    """`kill PID` during stage 2: exit 130, status interrupted, the folder resumable (no temp file left)."""
    out, gate = tmp_path / "term", tmp_path / "gate"  # the gate never opens: the run waits in stage 2
    proc = subprocess.Popen([sys.executable, "-c", FIRST, str(gate), *_args(world, out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.time() + 120
        while not (out / "samples" / "iter_000000.png").exists() and proc.poll() is None:
            assert time.time() < deadline, "the run did not reach stage 2"
            time.sleep(0.05)
        proc.terminate()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert _status(out)["status"] == "interrupted" and not _temps(out)
