"""Bad numbers, unwritable paths and corrupt files: one clear error (exit 2) naming the flag or path, nothing written.

Every check goes through the console entry point `ipl.commands.cli.main` (exit status and stderr as a user sees
them). Tests run as root here, where chmod cannot make a folder read-only: a read-only folder is simulated by
patching os.access, and "under a file" paths are real.
"""
import json
import math
import os
import shutil
from pathlib import Path

import pytest

from tiny_world import run_main, tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny random 16 px StyleGAN2 and a tiny random CLIP (77-token text context)."""
    return tiny_world(tmp_path_factory.mktemp("bad_input"))


def adapt_args(world, out, *extra, **over):
    args = {"--source": world["gen"], "--source-text": "a solid shape", "--target": "a striped shape",
            "--clip": world["clip"], "--iters-prompt": "1", "--batch-prompt": "2", "--iters": "1", "--batch": "1",
            "--layers": "all", "--layer-batch": "1", "--sample-every": "0", "--sample-n": "2",
            "--out": str(out), "--device": "cpu"}
    args.update(over)
    flat = ["adapt"]
    for k, v in args.items():
        if v is not None:
            flat += [k, v]
    return flat + ["--quiet", *extra]


def assert_one_error(code, err, *needles):
    # `ipl adapt` announces each run ("adapting SOURCE -> TARGET into OUT") before the checks that need models.
    lines = [l for l in err.strip().splitlines() if l.strip() and not l.startswith("adapting ")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.fixture(scope="module")
def finished_run(world):
    """One finished NADA run (1 iteration) to read from."""
    out = world["root"] / "done"
    from click.testing import CliRunner

    from ipl.commands.cli import cli
    res = CliRunner().invoke(cli, adapt_args(world, out, **{"--method": "nada"}))
    assert res.exit_code == 0, (res.output, res.exception)
    return out


# ------------------------------------------------------------------------------------------------------ numbers
BAD_NUMBERS = [
    ("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"), ("--lr", "-0.1"), ("--lr", "5"),
    ("--lr-prompt", "nan"), ("--lr-prompt", "-1"),
    ("--truncation", "nan"), ("--truncation", "inf"), ("--truncation", "3"),
    ("--lambda-l", "nan"), ("--lambda-l", "-1"), ("--lambda-src", "inf"), ("--lambda-src", "-0.5"),
    ("--length-weight", "nan"), ("--length-weight", "inf"), ("--length-ratio", "nan"), ("--length-ratio", "0"),
    ("--ema-decay", "nan"), ("--ema-decay", "1"), ("--ema-decay", "-0.1"),
    ("--seed", str(2**64)), ("--seed", str(2**63)), ("--seed", "-1"),
    ("--n-ctx", "1000"), ("--n-ctx", "0"),
    ("--batch", "100000"), ("--batch", "0"), ("--batch-prompt", "100000"), ("--batch-prompt", "1"),
    ("--layer-batch", "100000"), ("--layer-batch", "0"), ("--augment", "100000"), ("--augment", "-1"),
    ("--sample-n", "100000"), ("--sample-n", "0"), ("--iters", "0"), ("--iters", "100000000"),
    ("--iters-prompt", "100000000"), ("--checkpoint-every", "0"), ("--sample-every", "-1"), ("--layer-every", "0"),
    ("--layers", "0"),
]


@pytest.mark.parametrize("flag,value", BAD_NUMBERS, ids=[f"{f}={v}" for f, v in BAD_NUMBERS])
def test_bad_number_is_refused_before_anything_is_written(world, tmp_path, monkeypatch, capsys, flag, value):
    out = tmp_path / "run"
    extra = {"--length-weight": "1"} if flag == "--length-ratio" else {}
    code, err = run_main(monkeypatch, capsys, adapt_args(world, out, **{flag: value, **extra}))
    assert_one_error(code, err, flag)
    assert not out.exists(), "a refused run must not create its folder"


@pytest.mark.parametrize("weight", ["0", "nan", "inf", "-1"])
def test_clip_weights_must_be_finite_and_not_all_zero(world, tmp_path, monkeypatch, capsys, weight):
    out = tmp_path / "run"
    code, err = run_main(monkeypatch, capsys, adapt_args(world, out, **{"--clip": f"{world['clip']}@{weight}"}))
    assert_one_error(code, err, "--clip")
    assert not out.exists()


def test_validate_is_the_single_gate():
    """The Python API refuses the same numbers (AdaptConfig.validate), before run_adapt writes anything."""
    from ipl.core.config import AdaptConfig
    from ipl.core.errors import IPLError

    AdaptConfig(target_text="x").validate()  # the defaults are valid
    for kw in ({"lr": math.nan}, {"beta1": 1.0}, {"beta2": math.inf}, {"layer_lr": 0.0}, {"seed": 2**63},
               {"iters": 2.5}, {"batch": True}, {"truncation": -2.5}, {"clip": ["a@0", "b@0"]}):
        with pytest.raises(IPLError):
            AdaptConfig(target_text="x", **kw).validate()
    AdaptConfig(target_text="x", truncation=-2.0, seed=2**63 - 1, clip=["a@0", "b@0.5"]).validate()
    # NADA has no stage 1: its settings are not checked (nor used).
    AdaptConfig(target_text="x", method="nada", iters_prompt=0, lambda_l=math.nan).validate()


def test_n_ctx_must_fit_the_clip_text_context(world, tmp_path, monkeypatch, capsys):
    """60 context vectors + a long target text exceed the 77 tokens: refused once the CLIP is loaded, before the
    folder is created, with the largest --n-ctx that fits."""
    out = tmp_path / "run"
    target = "a shape drawn with many thin parallel stripes in several bright colours on a plain background"
    code, err = run_main(monkeypatch, capsys, adapt_args(world, out, **{"--n-ctx": "60", "--target": target}))
    assert_one_error(code, err, "--n-ctx 60", "77-token", "use --n-ctx")
    assert not out.exists()
    most = int(err.split("use --n-ctx ")[1].split()[0])
    from ipl.core.config import AdaptConfig
    from ipl.method.clip import load_clips
    from ipl.run import check_prompt_fits
    clips = load_clips([world["clip"]])
    check_prompt_fits(AdaptConfig(target_text=target, n_ctx=most, clip=[world["clip"]]), clips, "a solid shape")
    with pytest.raises(Exception, match="--n-ctx"):
        check_prompt_fits(AdaptConfig(target_text=target, n_ctx=most + 1, clip=[world["clip"]]), clips, "a shape")


@pytest.mark.parametrize("flag", ["--batch", "--layer-batch", "--batch-prompt"])
def test_batch_whose_images_cannot_fit_in_memory(world, tmp_path, monkeypatch, capsys, flag):
    import ipl.run
    monkeypatch.setattr(ipl.run, "device_memory_bytes", lambda device: 2**20)  # a 1 MiB machine
    out = tmp_path / "run"
    code, err = run_main(monkeypatch, capsys, adapt_args(world, out, **{flag: "200"}))
    assert_one_error(code, err, f"{flag} 200", "1.0 MiB in all", "at 16 px")
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------ targets
def test_target_at_missing_file_is_an_error(world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, err = run_main(monkeypatch, capsys, adapt_args(world, out, **{"--target": f"@{tmp_path}/missing.txt"}))
    assert_one_error(code, err, "no such file", "missing.txt")
    assert not out.exists()


@pytest.mark.parametrize("how", ["--target-file", "--target @"])
def test_target_file_not_utf8(world, tmp_path, monkeypatch, capsys, how):
    bad = tmp_path / "targets.txt"
    bad.write_bytes("a striped shape\ncaf\xe9 au lait\n".encode("latin-1"))
    out = tmp_path / "run"
    extra = {"--target": None, "--target-file": str(bad)} if how == "--target-file" else {"--target": f"@{bad}"}
    code, err = run_main(monkeypatch, capsys, adapt_args(world, out, **extra))
    assert_one_error(code, err, str(bad), "UTF-8")
    assert not out.exists()


# ------------------------------------------------------------------------------------------- unwritable paths
def _read_only(monkeypatch, folder: Path):
    """Make os.access deny writing to `folder` (chmod does not stop root)."""
    real = os.access
    folder = Path(folder).resolve()
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p).resolve() == folder and mode & os.W_OK
                        else real(p, mode, *a, **k))


def test_out_under_a_file(world, tmp_path, monkeypatch, capsys):
    afile = tmp_path / "somefile"
    afile.write_text("mine")
    code, err = run_main(monkeypatch, capsys, adapt_args(world, afile / "run"))
    assert_one_error(code, err, "--out", str(afile), "is a file")
    assert afile.read_text() == "mine"


def test_out_in_a_read_only_folder(world, tmp_path, monkeypatch, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    _read_only(monkeypatch, parent)
    code, err = run_main(monkeypatch, capsys, adapt_args(world, parent / "run"))
    assert_one_error(code, err, "--out", str(parent), "not writable")
    assert list(parent.iterdir()) == []


def test_export_and_sample_into_unwritable_places(finished_run, tmp_path, monkeypatch, capsys):
    afile = tmp_path / "somefile"
    afile.write_text("mine")
    ro = tmp_path / "ro"
    ro.mkdir()
    for args, needle in ((["export", str(finished_run), "--out", str(afile / "g.pt")], str(afile)),
                         (["sample", str(finished_run), "--n", "2", "--out", str(afile / "g.png")], str(afile)),
                         (["sample", str(finished_run), "--n", "2", "--outdir", str(afile / "pngs")], str(afile)),
                         (["eval", str(finished_run), "--out", str(afile / "eval.json")], str(afile))):
        code, err = run_main(monkeypatch, capsys, args)
        assert_one_error(code, err, needle)
    _read_only(monkeypatch, ro)
    for args in (["export", str(finished_run), "--out", str(ro / "g.pt")],
                 ["sample", str(finished_run), "--n", "2", "--out", str(ro / "g.png")]):
        code, err = run_main(monkeypatch, capsys, args)
        assert_one_error(code, err, str(ro), "not writable")
    assert afile.read_text() == "mine" and list(ro.iterdir()) == []


def test_a_write_that_fails_anyway_names_the_file(finished_run, tmp_path, monkeypatch, capsys):
    """Past the checks (e.g. the disk fills up meanwhile): the atomic writer's error names the file."""
    import errno

    import ipl.core.atomic as atomic
    real = atomic.tempfile.mkstemp

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", full)
    target = tmp_path / "g.png"
    code, err = run_main(monkeypatch, capsys, ["sample", str(finished_run), "--n", "2", "--out", str(target)])
    monkeypatch.setattr(atomic.tempfile, "mkstemp", real)
    assert_one_error(code, err, str(target), "no space left on device")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ corrupt files
@pytest.mark.parametrize("content", [b"{\"settings\": {", b"\xff\xfe garbage", b"[1, 2]", b""])
def test_corrupt_config_json(world, finished_run, tmp_path, monkeypatch, capsys, content):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "config.json").write_bytes(content)
    before = sorted(p.name for p in run.rglob("*"))
    for args in (["sample", str(run), "--n", "2", "--out", str(tmp_path / "g.png")],
                 ["eval", str(run), "--metrics", "clip-score", "--n", "2", "--offline", "--quiet",
                  "--out", str(tmp_path / "e.json")],
                 ["export", str(run), "--out", str(tmp_path / "g.pt")],
                 adapt_args(world, run, "--resume", **{"--method": "nada"})):
        code, err = run_main(monkeypatch, capsys, args)
        assert_one_error(code, err, str(run / "config.json"), "corrupt")
    assert sorted(p.name for p in run.rglob("*")) == before
    assert (run / "config.json").read_bytes() == content
    assert not any((tmp_path / n).exists() for n in ("g.png", "e.json", "g.pt"))


def test_config_json_missing_sections_is_corrupt(finished_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "config.json").write_text(json.dumps({"settings": {}, "status": "complete"}))
    code, err = run_main(monkeypatch, capsys, ["sample", str(run), "--n", "2", "--out", str(tmp_path / "g.png")])
    assert_one_error(code, err, str(run / "config.json"), "'resolved'")


def test_the_bounds_themselves_run(world, tmp_path, monkeypatch, capsys):
    """The edges of the ranges are accepted and run: the largest seed, truncation -2, a zero-weight extra CLIP."""
    out = tmp_path / "edge"
    code, err = run_main(monkeypatch, capsys, adapt_args(world, out, "--clip", f"{world['clip']}@0", **{
        "--seed": str(2**63 - 1), "--truncation": "-2", "--ema-decay": "0", "--lambda-l": "0", "--lr": "1"}))
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["status"] == "complete"
