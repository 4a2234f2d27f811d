"""`ipl ui` without a browser: what the page may touch (path containment), one adaptation at a time (the job
queue), the progress reader, stop and resume, and the page's callbacks (sampling gives `ipl sample`'s exact PNGs,
the download, the Edit tab where `ipl.edit` exists). Tiny random worlds (tests/tiny_world.py) keep runs short."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ipl.core.errors import IPLError
from ipl.ui import actions
from ipl.ui.actions import AdaptForm, Sampler
from ipl.ui.jobs import JobManager
from ipl.ui.paths import PathRefused, Roots, check_clip_spec, checkpoint_path, contained, list_run_names, run_dir
from ipl.ui.progress import read_progress, stage1_from_bar
from tiny_world import run_main, tiny_world

ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _roots(tmp_path: Path) -> Roots:
    return Roots.make(tmp_path / "runs", tmp_path / "home")


def _fake_run(folder: Path, status: str = "running", **settings) -> Path:
    folder.mkdir(parents=True)
    s = {"method": "ipl", "iters": 10, "iters_prompt": 4, "target_text": "a dark shape", "source": "toy", **settings}
    (folder / "config.json").write_text(json.dumps({"settings": s, "status": status}))
    return folder


# ------------------------------------------------------------------------------------------------ containment
def test_run_names_cannot_leave_the_runs_folder(tmp_path):
    roots = _roots(tmp_path)
    _fake_run(roots.runs / "good")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "config.json").write_text("{}")
    os.symlink(tmp_path / "secret", roots.runs / "link")           # a run folder that is a symlink out
    assert run_dir(roots, "good") == roots.runs / "good"
    for bad in ("../secret", "..", ".", "a/b", "/etc", ".ipl-ui", "good/../../secret", "", "x\\..\\y", "link"):
        with pytest.raises(PathRefused):
            run_dir(roots, bad)
    assert list_run_names(roots) == ["good"]                          # the symlink and the scratch are not runs


def test_files_are_contained_and_symlinks_out_refused(tmp_path):
    roots = _roots(tmp_path)
    run = _fake_run(roots.runs / "r")
    (run / "samples").mkdir()
    (run / "samples" / "final.png").write_bytes(b"png")
    os.symlink("/etc/passwd", run / "samples" / "evil.png")
    assert contained(run / "samples" / "final.png", roots.readable) == (run / "samples" / "final.png").resolve()
    for bad in ("/etc/passwd", roots.runs / ".." / "x", run / "samples" / "evil.png", tmp_path / "home2" / "a"):
        with pytest.raises(PathRefused):
            contained(bad, roots.readable)
    with pytest.raises(PathRefused):
        actions.run_file(roots, "r", "samples/evil.png")
    with pytest.raises(PathRefused):
        actions.run_file(roots, "r", "../r/config.json")
    assert actions.run_file(roots, "r", "samples/final.png").read_bytes() == b"png"


def test_a_runs_own_files_and_source_must_not_lead_outside(tmp_path):
    roots = _roots(tmp_path)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "final.png").write_bytes(b"not yours")
    run = _fake_run(roots.runs / "r")
    os.symlink(secret, run / "samples")                              # samples/ a symlink out of the run
    (run / "generator.safetensors").write_bytes(b"x")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "resolved": {"source_path": "/etc/passwd"}}))
    assert actions.list_runs(roots)[0].grid is None
    assert actions.publish(roots, secret / "final.png") is None
    with pytest.raises(PathRefused, match="ipl ui --source /etc/passwd"):
        Sampler(roots).load("r")                                     # the source is read only where allowed
    trusted = Roots.make(tmp_path / "runs", tmp_path / "home", extra_files=["/etc/passwd"])
    trusted.check_run_source(run, json.loads((run / "config.json").read_text()))
    from ipl.core.assets import shipped

    roots.check_run_source(run, {"resolved": {"source_path": str(shipped("toy/generator.safetensors"))}})


def test_sources_and_clip_specs_must_lie_in_the_runs_folder_or_model_cache(tmp_path):
    roots = _roots(tmp_path)
    (roots.cache / "models").mkdir(parents=True)
    ckpt = roots.cache / "models" / "g.pt"
    ckpt.write_bytes(b"x")
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes(b"x")
    assert checkpoint_path(roots, str(ckpt)) == ckpt.resolve()
    with pytest.raises(PathRefused):
        checkpoint_path(roots, str(outside))
    assert ("file: " + str(ckpt.resolve()), str(ckpt.resolve())) in actions.source_choices(roots)
    # The operator may name one file on the command line (`ipl ui --source FILE`).
    trusted = Roots.make(tmp_path / "runs", tmp_path / "home", extra_files=[outside])
    assert checkpoint_path(trusted, str(outside)) == outside.resolve()
    assert check_clip_spec(roots, "toy") == "toy"
    assert check_clip_spec(roots, "ViT-B-32:openai@0.5") == "ViT-B-32:openai@0.5"
    cfg = roots.cache / "clip.json"
    cfg.write_text("{}")
    assert check_clip_spec(roots, f"{cfg}:none") == f"{cfg.resolve()}:none"
    for bad in ("/etc/clip.json:none", f"ViT-B-32:{outside}", "../x.json"):
        with pytest.raises(PathRefused):
            check_clip_spec(roots, bad)


def test_adapt_command_is_the_cli_with_checked_inputs(tmp_path):
    roots = _roots(tmp_path)
    argv, runs = actions.adapt_command(roots, AdaptForm(source="toy", targets=" on a  dark background \n",
                                                        iters_prompt="2", iters=3, layers="all", seed=7))
    assert argv[:len(actions.ipl_command())] == actions.ipl_command()
    assert argv[len(actions.ipl_command()):] == [
        "adapt", "--source=toy", "--method=ipl", "--target=on a dark background", "--iters-prompt=2", "--iters=3",
        "--seed=7", "--layers=all", "--device=auto", f"--out={roots.runs / 'toy-on-a-dark-background'}"]
    assert runs == [roots.runs / "toy-on-a-dark-background"]
    argv, runs = actions.adapt_command(roots, AdaptForm(source="toy", targets="dark\npastel", method="nada"))
    assert runs == [roots.runs / "toy-dark", roots.runs / "toy-pastel"] and f"--out={roots.runs}" in argv
    bad_forms = [dict(targets="@/etc/passwd"),                    # --target @FILE would read a file
                 dict(targets="dark", run_name="../outside"), dict(targets="dark", run_name="/tmp/x"),
                 dict(targets="dark", source="/etc/passwd"), dict(targets="dark", clip="/etc/x.json:none"),
                 dict(targets=""), dict(targets="dark", iters="-1"), dict(targets="dark", layers="some"),
                 dict(targets="a\nb", run_name="one"), dict(targets="dark", device="tpu; rm -rf /")]
    for form in bad_forms:
        with pytest.raises(IPLError):
            actions.adapt_command(roots, AdaptForm(**{"source": "toy", **form}))
    assert not (tmp_path / "outside").exists()


# ------------------------------------------------------------------------------------------------ progress
def test_progress_reader(tmp_path):
    run = _fake_run(tmp_path / "run", iters=10, iters_prompt=4)
    bar = "stage 1 (prompts):  50%|█████     | 2/4 [00:01<00:01,  1.9it/s]\r"
    p = read_progress(run, bar)
    assert (p.status, p.stage, p.iteration, p.total, p.loss, p.seconds_left) == ("running", 1, 2, 4, None, 1.0)
    assert "about 1 s left in stage 1" in p.describe()
    assert stage1_from_bar("junk " + bar + "stage 1 (prompts):  75%|███  | 3/4 [") == (3, 4)
    assert stage1_from_bar(bar + "stage 1 (prompts):  75%|███  | 3") == (2, 4)   # a bar torn mid-write
    log = [{"stage": 1, "it": i, "loss": 3.0 - i} for i in range(1, 5)]
    log += [{"stage": 2, "it": 1, "total": 2.0, "seconds": 1.0}, {"stage": 2, "it": 2, "total": 1.5, "seconds": 3.0}]
    (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + '\n{"stage": 2, "it": 3, "tot')
    (run / "samples").mkdir()
    for name in ("iter_000000.png", "iter_000002.png", "iter_000001.png", "other.png"):
        (run / "samples" / name).write_bytes(b"")
    p = read_progress(run)
    assert (p.stage, p.iteration, p.total, p.loss) == (2, 2, 10, 1.5)
    assert p.seconds_left == pytest.approx(8 * 2.0)                 # 8 iterations left at 2 s each
    assert p.grid == run / "samples" / "iter_000002.png"
    assert "stage 2 (generator): iteration 2 / 10" in p.describe() and "16 s left" in p.describe()
    (run / "samples" / "final.png").write_bytes(b"")
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "status": "complete"}))
    p = read_progress(run)
    assert (p.status, p.iteration, p.grid.name) == ("complete", 10, "final.png")
    assert read_progress(tmp_path / "not-yet").status == "starting"


# ------------------------------------------------------------------------------------------------ the queue
def _stamp_job(path: Path, seconds: float) -> list[str]:
    code = (f"import time,sys; open({str(path)!r},'a').write(f'start {{time.time()}}\\n'); time.sleep({seconds}); "
            f"open({str(path)!r},'a').write(f'end {{time.time()}}\\n')")
    return [sys.executable, "-c", code]


def test_adaptations_are_queued_one_at_a_time_and_stop(tmp_path):
    manager = JobManager(tmp_path / "jobs")
    a = manager.submit(_stamp_job(tmp_path / "a.txt", 0.8), [tmp_path / "runs" / "a"])
    b = manager.submit(_stamp_job(tmp_path / "b.txt", 0.1), [tmp_path / "runs" / "b"])
    c = manager.submit(_stamp_job(tmp_path / "c.txt", 0.1), [])
    assert manager.busy_with(tmp_path / "runs" / "b")
    with pytest.raises(IPLError):   # a second job on a run folder already queued is refused
        actions.submit(manager, ["true"], [tmp_path / "runs" / "b"])
    assert manager.position(b) >= 1 and b.state == "queued"
    assert manager.stop(c) and c.state == "cancelled"
    assert manager.wait(b, timeout=30) and a.finished
    times = {k: dict(line.split() for line in (tmp_path / f"{k}.txt").read_text().splitlines()) for k in "ab"}
    assert float(times["a"]["end"]) <= float(times["b"]["start"])    # b started only after a had ended
    assert (a.state, b.state, a.returncode) == ("done", "done", 0)
    assert not (tmp_path / "c.txt").exists()
    # A running job gets SIGTERM: stopped, not killed.
    d = manager.submit([sys.executable, "-c", "import signal,sys,time\n"
                        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(130))\ntime.sleep(30)"], [])
    deadline = time.monotonic() + 10
    while d.process is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    assert manager.stop(d) and manager.wait(d, timeout=10)
    assert (d.state, d.returncode) == ("stopped", 130)
    manager.shutdown()


# ------------------------------------------------------------------------------------------------ real runs
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny world in the model cache and a 2 + 2 run adapted through the page's job queue: stopped once it runs,
    then resumed to the end (what each step left is recorded for the tests)."""
    root = tmp_path_factory.mktemp("ui")
    world = tiny_world(root / "home" / "models")
    roots = Roots.make(root / "runs", root / "home")
    manager = JobManager(roots.scratch / "jobs", env=ONE_THREAD)
    form = AdaptForm(source=world["gen"], targets="a striped shape", iters_prompt=2, iters=2, clip=world["clip"],
                     run_name="tiny", device="cpu")
    argv, runs = actions.adapt_command(roots, form)
    run = runs[0]
    first = actions.submit(manager, argv, runs)
    deadline = time.monotonic() + 120
    while read_progress(run).status != "running" and not first.finished and time.monotonic() < deadline:
        time.sleep(0.02)
    manager.stop(first)                      # as soon as config.json says running: stage 1 has not ended
    assert manager.wait(first, timeout=60), "the stopped adaptation did not end"
    stopped = {"state": first.state, "status": read_progress(run).status,
               "command": json.loads((run / "config.json").read_text())["command"],
               "resumable": actions.resumable_runs(roots), "text": actions.job_status(roots, manager, first)[0]}
    second = actions.submit(manager, *actions.resume_command(roots, "tiny"))
    assert manager.wait(second, timeout=180), "the resumed adaptation did not end"
    assert second.state == "done", second.output()[-3000:]
    yield {"roots": roots, "world": world, "manager": manager, "run": run, "stopped": stopped, "resumed": second}
    manager.shutdown()


def test_stop_leaves_a_resumable_run_and_resume_finishes_it(tiny):
    roots, run, stopped = tiny["roots"], tiny["run"], tiny["stopped"]
    assert stopped["state"] == "stopped" and stopped["status"] == "interrupted"
    assert stopped["command"].split()[1] == "adapt"                  # the page ran the CLI
    assert "tiny" in stopped["resumable"] and "Resume" in stopped["text"]
    config = json.loads((run / "config.json").read_text())
    assert config["status"] == "complete" and config["settings"]["iters"] == 2
    assert config["settings"]["target_text"] == "a striped shape"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["it"] for r in log if r["stage"] == 2] == [1, 2]
    assert (run / "generator.safetensors").is_file() and "tiny" not in actions.resumable_runs(roots)


def test_the_page_runs_the_cli_and_lists_the_run(tiny):
    roots, run = tiny["roots"], tiny["run"]
    rows = actions.list_runs(roots)
    assert [r.name for r in rows] == ["tiny"] and rows[0].grid == run / "samples" / "final.png"
    (run / "eval.json").write_text(json.dumps({"columns": [{"path": str(run), "values": {"target_rate": 0.5}}]}))
    assert actions.list_runs(roots)[0].evals == {"target_rate": 0.5}
    assert "0.5" in actions.list_runs(roots)[0].caption()
    text, grid = actions.job_status(roots, tiny["manager"], tiny["resumed"])
    assert "complete" in text and "Done" in text
    assert Path(grid).read_bytes() == (run / "samples" / "final.png").read_bytes()
    assert Path(grid).is_relative_to(roots.scratch)                  # handed out from the scratch folder only
    with pytest.raises(IPLError):
        actions.resume_command(roots, "tiny")                        # complete: nothing to resume


def test_sampling_on_the_page_gives_ipl_sample_pixels(tiny, tmp_path, monkeypatch, capsys):
    roots, run = tiny["roots"], tiny["run"]
    sampler = Sampler(roots)
    items = sampler.sample(["tiny", "tiny"], "3,0", 0.7, source_too=True)
    assert [c for _, c in items] == ["source · seed 3", "source · seed 0", "tiny · seed 3", "tiny · seed 0",
                                     "tiny · seed 3", "tiny · seed 0"]
    code, err = run_main(monkeypatch, capsys, ["sample", run, "--seeds", "3,0", "--truncation", "0.7",
                                               "--source-too", "--outdir", tmp_path / "cli"])
    assert code == 0, err
    for (path, caption), row in zip(items, ["source", "source", "adapted", "adapted", "adapted", "adapted"]):
        seed = int(caption.rsplit(" ", 1)[1])
        expected = np.asarray(Image.open(tmp_path / "cli" / row / f"seed{seed:04d}.png"))
        assert np.array_equal(np.asarray(Image.open(path)), expected), (caption, row)
    assert all(Path(p).is_relative_to(roots.scratch) for p, _ in items)
    for bad in (["../tiny"], [], ["nope"]):
        with pytest.raises(IPLError):
            sampler.sample(bad, "0", 1.0)
    with pytest.raises(IPLError):
        sampler.sample(["tiny"], "0-100", 1.0)                     # too many images at once


def test_download_in_both_formats(tiny):
    import torch

    roots, run = tiny["roots"], tiny["run"]
    ours = actions.export_generator(roots, "tiny", "ipl")
    assert ours.read_bytes() == (run / "generator.safetensors").read_bytes() and ours.is_relative_to(roots.scratch)
    ros = actions.export_generator(roots, "tiny", "rosinality")
    state = torch.load(ros, map_location="cpu", weights_only=True)
    assert "g_ema" in state and (run / "generator_rosinality.pt").is_file()
    with pytest.raises(IPLError):
        actions.export_generator(roots, "../tiny", "ipl")


# ------------------------------------------------------------------------------------------------ the page
def _gradio():
    try:
        import gradio  # noqa: F401
    except ImportError:
        if os.environ.get("IPL_REQUIRE_BROWSER") == "1":
            pytest.fail("IPL_REQUIRE_BROWSER=1 but gradio is missing: pip install -e '.[test,ui]'", pytrace=False)
        pytest.skip("gradio is not installed (pip install 'ipl[ui]')")


def test_the_page_builds_with_one_adaptation_slot(monkeypatch, tmp_path):
    _gradio()
    from ipl.ui.app import UiConfig, build

    for name in ("GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED"):   # build() sets them; restored after the test
        monkeypatch.setenv(name, os.environ.get(name, ""))
    page = build(UiConfig(runs=tmp_path / "runs", cache=tmp_path / "home"))   # its own runs folder and scratch
    config = page.blocks.get_config_file()
    tabs = [c["props"].get("label") for c in config["components"] if c.get("type") == "tabitem"]
    assert tabs[:2] == ["Adapt", "Runs"] and ("Edit" in tabs) == (actions.edit_function() is not None)
    adapt = [fn for fn in page.blocks.fns.values() if fn.concurrency_id == "adapt"]
    assert len(adapt) == 2 and all(fn.concurrency_limit == 1 for fn in adapt)   # Start and Resume share one slot
    assert os.environ["GRADIO_TEMP_DIR"] == str(page.roots.scratch)
    page.manager.shutdown()
    monkeypatch.setattr(actions, "edit_function", lambda: None)     # an ipl without ipl.edit: no Edit tab
    page = build(UiConfig(runs=tmp_path / "runs", cache=tmp_path / "home"))
    tabs = [c["props"].get("label") for c in page.blocks.get_config_file()["components"] if c.get("type") == "tabitem"]
    assert tabs == ["Adapt", "Runs"] and not page.has_edit
    page.manager.shutdown()


def test_ipl_ui_without_gradio_says_how_to_install(monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_gradio(name, *args, **kwargs):
        if name == "gradio" or name.startswith("gradio."):
            raise ImportError("No module named 'gradio'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gradio)
    code, err = run_main(monkeypatch, capsys, ["ui", "--runs", "unused"])
    assert code == 2 and "pip install 'ipl[ui]'" in err


def test_edit_tab_puts_a_photo_into_each_runs_domain(tiny):
    if actions.edit_function() is None:
        pytest.skip("this ipl has no ipl.edit (the Edit tab is absent)")
    roots = tiny["roots"]
    upload = roots.scratch / "upload" / "photo.png"
    upload.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(0).random((24, 20, 3)) * 255).astype(np.uint8)).save(upload)
    items = actions.edit_photo(roots, ["tiny"], str(upload), steps=2, upload_dirs=[roots.scratch / "upload"],
                               loss="mse")
    assert [c for _, c in items] == ["input", "reconstruction", "tiny"]
    sizes = {Image.open(p).size for p, _ in items}
    assert sizes == {(16, 16)}
    outside = roots.runs.parent / "photo.png"
    Image.open(upload).save(outside)
    with pytest.raises(PathRefused):
        actions.edit_photo(roots, ["tiny"], str(outside), steps=2, upload_dirs=[roots.scratch / "upload"], loss="mse")


def test_host_other_than_loopback_warns_and_share_is_off_by_default(monkeypatch, capsys, tmp_path):
    _gradio()
    import ipl.ui.app as app

    seen = []
    monkeypatch.setattr(app, "launch", lambda config, block=True: seen.append(config))
    code, err = run_main(monkeypatch, capsys, ["ui", "--runs", tmp_path / "runs", "--port", "7999"])
    assert code == 0 and "WARNING" not in err
    assert (seen[0].host, seen[0].share, seen[0].port, seen[0].source) == ("127.0.0.1", False, 7999, "toy")
    code, err = run_main(monkeypatch, capsys, ["ui", "--runs", tmp_path / "runs", "--host", "0.0.0.0"])
    assert code == 0 and "WARNING: --host 0.0.0.0" in err and seen[1].share is False
    code, err = run_main(monkeypatch, capsys, ["ui", "--runs", tmp_path / "runs", "--share"])
    assert code == 0 and "public Gradio link" in err and seen[2].share is True
