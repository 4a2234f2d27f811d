"""A shared run folder must not run code: every file ipl reads back is read as data only (issue 19).

A real tiny run folder is built once; each test copies it, puts a code-running pickle in the place of one of
its files (checkpoint.pt, generator.safetensors, prompts/, samples/latents.pt) and runs the commands that read
the folder: each either refuses with exit status 2 and a message naming the file, or never reads the file;
the payload never runs. Also: the NVIDIA restricted unpickler refuses tensor views outside their storage, and
the files ipl writes are byte-for-byte reproducible with the permissions of a file made with open().
"""
from __future__ import annotations

import collections
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from ipl import generators
from ipl.core.errors import CheckpointError, UnsafePickleError
from ipl.generators.stylegan2.network import Generator
from tiny_world import run_main, tiny_world

pytestmark = pytest.mark.filterwarnings("ignore:.*RANDOM weights", "ignore:.*pickle protocol",
                                        "ignore:TypedStorage is deprecated")


class _Payload:
    """Pickles as `func(*args)`: what an attacker's __reduce__ would run on load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payload(marker: Path) -> _Payload:
    return _Payload(os.system, f"touch {marker}")


def _write_pickle(path: Path, obj, protocol: int = 2) -> Path:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    return path


def _ipl(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run the real console entry point (user errors -> exit 2); returns (status, stderr)."""
    return run_main(monkeypatch, capsys, args)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("safe_reads")
    world = tiny_world(root, seed=1, clip_seed=1, name="g.safetensors")
    from click.testing import CliRunner

    from ipl.commands.cli import cli

    res = CliRunner().invoke(cli, _adapt_args(world, root / "base"))
    assert res.exit_code == 0, (res.output, res.exception)
    world["base"] = root / "base"
    return world


def _adapt_args(world, out, *extra):
    return ["adapt", "--source", world["gen"], "--source-text", "a solid shape", "--target", "a dotted shape",
            "--clip", world["clip"], "--iters-prompt", "2", "--batch-prompt", "4", "--iters", "2", "--layers", "2",
            "--layer-batch", "2", "--sample-n", "2", "--sample-every", "0", "--checkpoint-every", "2",
            "--seed", "7", "--device", "cpu", "--out", str(out), "--quiet", *extra]


@pytest.fixture()
def run(world, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(world["base"], out)
    return out


def _sample(run, tmp_path):
    return ["sample", run, "--n", "2", "--device", "cpu", "--out", tmp_path / "grid.png"]


def _eval(world, run, tmp_path):
    return ["eval", run, "--metrics", "clip-score", "--clip", world["clip"], "--allow-random-weights", "--n", "2",
            "--batch", "2", "--device", "cpu", "--offline", "--quiet", "--out", tmp_path / "eval.json"]


def _export(run, tmp_path):
    return ["export", run, "--out", tmp_path / "exported.pt"]


# --- checkpoint.pt ----------------------------------------------------------------------------------------------

def test_checkpoint_is_plain_data_and_loads_weights_only(run):
    from ipl.run import CHECKPOINT, load_checkpoint

    state = torch.load(run / CHECKPOINT, weights_only=True)  # no extra allowed globals needed
    assert state["format"] == "ipl-run-checkpoint-1" and state["trainer"]["iteration"] == 2
    assert state["trainer"]["rng"].dtype == torch.uint8
    assert load_checkpoint(run / CHECKPOINT)["trainer"]["iteration"] == 2


@pytest.mark.parametrize("kind", ["torch-zip", "raw-pickle"])
def test_payload_checkpoint_refused_on_resume_never_read_elsewhere(world, run, tmp_path, monkeypatch, capsys,
                                                                     kind):
    marker = tmp_path / "pwned"
    state = {"format": "ipl-run-checkpoint-1", "trainer": {"iteration": _payload(marker)}}
    if kind == "torch-zip":
        torch.save(state, run / "checkpoint.pt")
    else:
        _write_pickle(run / "checkpoint.pt", state)
    config_before = (run / "config.json").read_bytes()

    code, err = _ipl(monkeypatch, capsys, *_adapt_args(world, run, "--resume"))
    assert code == 2, err
    assert "checkpoint.pt" in err and "tampered" in err and "nothing from it was executed" in err
    assert "weights_only" not in err  # torch's advice to load it unsafely is not passed on
    assert (run / "config.json").read_bytes() == config_before  # refused before anything was written
    assert not marker.exists()

    # sample / eval / export never read checkpoint.pt: they work, and the payload does not run.
    for args in (_sample(run, tmp_path), _eval(world, run, tmp_path), _export(run, tmp_path)):
        code, err = _ipl(monkeypatch, capsys, *args)
        assert code == 0, (args[0], err)
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "eval.json").is_file()
    assert (tmp_path / "exported.pt").is_file()
    assert not marker.exists()


def test_checkpoint_of_another_kind_is_a_clear_error(run, tmp_path):
    from ipl.run import load_checkpoint

    path = tmp_path / "checkpoint.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not an ipl run checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="tampered") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "weights_only" not in str(info.value)
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 40)  # a torn zip
    with pytest.raises(CheckpointError, match="tampered|corrupt") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


# --- generator.safetensors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["raw-pickle", "torch-zip"])
def test_payload_generator_refused_by_sample_eval_export(world, run, tmp_path, monkeypatch, capsys, kind):
    marker = tmp_path / "pwned"
    target = run / "generator.safetensors"
    if kind == "torch-zip":
        torch.save({"g_ema": _payload(marker)}, target)
    else:
        _write_pickle(target, {"G_ema": _payload(marker)})
    for args in (_sample(run, tmp_path), _eval(world, run, tmp_path), _export(run, tmp_path)):
        code, err = _ipl(monkeypatch, capsys, *args)
        assert code == 2, (args[0], err)
        assert "generator.safetensors" in err and "not a safetensors file" in err and "tampered" in err, err
    assert not marker.exists()
    # --resume rewrites the generator at the end and never reads the old one.
    code, err = _ipl(monkeypatch, capsys, *_adapt_args(world, run, "--resume"))
    assert code == 0, err
    assert not marker.exists() and generators.load(target) is not None


# --- prompts/ ------------------------------------------------------------------------------------------------------

def test_payload_learner_weights_refused_on_resume(world, run, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    _write_pickle(run / "prompts" / "learner_0.safetensors", {"net.1.weight": _payload(marker)})
    code, err = _ipl(monkeypatch, capsys, *_adapt_args(world, run, "--resume"))
    assert code == 2, err
    assert "learner_0.safetensors" in err and "tampered" in err
    assert not marker.exists()


@pytest.mark.parametrize("change, expected", [
    ({"init_kwargs": {"w_dim": 16, "n_ctx": 4, "ctx_dim": 32, "num_layers": 4, "lr_multiplier": 0.01,
                      "__class__": "os.system"}}, "only w_dim"),
    ({"init_kwargs": {"w_dim": "16"}}, "w_dim"),
    ({"init_kwargs": {"w_dim": 16, "n_ctx": 10 ** 9, "ctx_dim": 32}}, "n_ctx"),
    ({"init_kwargs": {"w_dim": 16, "ctx_dim": 32, "lr_multiplier": True}}, "lr_multiplier"),
    ({"init_kwargs": {"w_dim": 8, "ctx_dim": 32}}, "do not fit"),
    ({"file": "../../g.safetensors"}, "not a .safetensors file name"),
    ({"init_kwargs": [16]}, "expected an object"),
])
def test_tampered_learner_index_refused(world, run, monkeypatch, capsys, change, expected):
    index_path = run / "prompts" / "learners.json"
    index = json.loads(index_path.read_text())
    index["learners"][0].update(change)
    index_path.write_text(json.dumps(index))
    code, err = _ipl(monkeypatch, capsys, *_adapt_args(world, run, "--resume"))
    assert code == 2, err
    assert "learners.json" in err and expected in err, err


def test_learner_index_not_json_refused(world, run, monkeypatch, capsys):
    (run / "prompts" / "learners.json").write_bytes(pickle.dumps({"learners": []}))
    code, err = _ipl(monkeypatch, capsys, *_adapt_args(world, run, "--resume"))
    assert code == 2 and "learners.json" in err, err


# --- samples/latents.pt: nothing reads it ------------------------------------------------------------------------

def test_payload_latents_never_read(world, run, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    torch.save({"latents": _payload(marker)}, run / "samples" / "latents.pt")
    for args in (_sample(run, tmp_path), _export(run, tmp_path), _adapt_args(world, run, "--resume")):
        code, err = _ipl(monkeypatch, capsys, *args)
        assert code == 0, (args[0], err)
    assert not marker.exists()


# --- --source ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["torch-zip", "raw-pickle"])
def test_payload_source_refused(world, tmp_path, monkeypatch, capsys, kind):
    marker = tmp_path / "pwned"
    source = tmp_path / "evil.pt"
    if kind == "torch-zip":
        torch.save({"g_ema": _payload(marker), "latent_avg": torch.zeros(16)}, source)
    else:
        _write_pickle(source, {"G_ema": _payload(marker)})
    args = _adapt_args(world, tmp_path / "out")
    args[args.index("--source") + 1] = str(source)
    code, err = _ipl(monkeypatch, capsys, *args)
    assert code == 2, err
    assert "evil.pt" in err and "refused" in err and "system" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_rosinality_loader_reads_weights_only(fixtures_dir, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    generators.load(fixtures_dir / "rosinality_sg2_64.pt")
    assert calls and all(w is True for w in calls)


# --- Inception weights for FID/KID/IS (torch-fidelity would read them with weights_only=False) ------------------

def test_inception_weights_read_weights_only(tmp_path):
    from ipl.metrics.fid import LAYER, _RandomInitInceptionV3, load_inception

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": _payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused") as info:
        load_inception([LAYER["fid"]], weights=str(evil))
    assert str(evil) in str(info.value) and not marker.exists()

    # A genuine state dict still loads, tensors and all.
    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(3)
    ref = _RandomInitInceptionV3("inception-v3-compat", [LAYER["fid"]], feature_extractor_weights_path=str(empty))
    good = tmp_path / "good.pth"
    torch.save(ref.state_dict(), good)
    net, info = load_inception([LAYER["fid"]], weights=str(good))
    assert not info.random_weights
    for (k, a), (_, b) in zip(ref.state_dict().items(), net.state_dict().items()):
        assert torch.equal(a, b), k


# --- NVIDIA pickles: tensor views must lie inside their storage -------------------------------------------------

class _View:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride): any view, even a bad one."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


@pytest.mark.parametrize("offset, size, stride, ok", [
    (0, (4,), (1,), True),
    (2, (2,), (1,), True),
    (0, (2, 2), (2, 1), True),
    (3, (0, 5), (1, 1), True),          # empty: reads nothing
    (0, (100,), (1,), False),           # beyond the storage: torch would grow it with uninitialised memory
    (2, (3,), (1,), False),
    (0, (2, 2), (3, 1), False),
    (-1, (2,), (1,), False),
    (0, (2,), (-1,), False),
    (9, (0,), (1,), False),
    (0, (2, 2), (1,), False),
])
def test_restricted_unpickler_checks_tensor_extent(tmp_path, offset, size, stride, ok):
    from ipl.generators.stylegan2.safe_pickle import safe_load_pickle

    storage = torch.arange(4, dtype=torch.float32).storage()
    path = _write_pickle(tmp_path / "net.pkl", {"x": _View(storage, offset, size, stride)}, protocol=4)
    if ok:
        assert safe_load_pickle(path)["x"].shape == size
        return
    with pytest.raises(CheckpointError, match="malformed tensor record") as info:
        safe_load_pickle(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError):
        generators.load(path)


def test_real_nvidia_fixtures_still_load(fixtures_dir):
    from ipl.generators.stylegan2.safe_pickle import safe_load_pickle

    for name in ("nvidia_sg2ada_64.pkl", "nvidia_sg2ada_64_cond_clamp.pkl"):
        assert safe_load_pickle(fixtures_dir / name)
        assert generators.load(fixtures_dir / name) is not None


def test_unsafe_pickle_error_still_comes_first(tmp_path):
    marker = tmp_path / "pwned"
    path = _write_pickle(tmp_path / "evil.pkl", {"G_ema": _payload(marker)})
    with pytest.raises(UnsafePickleError):
        generators.load(path)
    assert not marker.exists()


# --- written files: deterministic bytes, the usual permissions -------------------------------------------------

def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _open_mode(folder: Path) -> int:
    probe = folder / "probe.txt"
    with open(probe, "w"):
        pass
    mode = _mode(probe)
    probe.unlink()
    return mode


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_generator_save_is_deterministic_with_open_permissions(tmp_path, umask):
    torch.manual_seed(0)
    G = Generator(z_dim=8, w_dim=8, img_resolution=8, mapping_layers=1, channels={4: 8, 8: 8})
    meta = {"ipl": {"target_text": "x", "clip": ["a", "b"]}, "b": 1, "a": 2}
    paths = [generators.save(G, tmp_path / f"g{i}.safetensors", metadata=meta) for i in range(4)]
    first = paths[0].read_bytes()
    assert all(p.read_bytes() == first for p in paths[1:])
    assert all(_mode(p) == _open_mode(tmp_path) == 0o666 & ~umask for p in paths)
    G2 = generators.load(paths[0])
    for (k, a), (_, b) in zip(G.state_dict().items(), G2.state_dict().items()):
        assert torch.equal(a, b), k


def test_diffusion_save_is_deterministic_with_open_permissions(tmp_path, umask):
    from test_diffusion import tiny_adapter

    a = tiny_adapter()
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"d{i}.safetensors")
        a.save(str(paths[-1]), metadata={"ipl": {"target_text": "x", "method": "ipl"}, "z": 1, "y": 2})
    first = paths[0].read_bytes()
    assert all(p.read_bytes() == first for p in paths[1:])
    assert all(_mode(p) == _open_mode(tmp_path) for p in paths)
    assert type(generators.load_adaptable(paths[0])).__name__ == "DiffusionAdapter"


def test_learners_and_run_files_deterministic_with_open_permissions(world, tmp_path, umask):
    from ipl.core.config import AdaptConfig
    from ipl.method.prompts import PromptLearner
    from ipl.run import save_learners

    torch.manual_seed(0)
    learners = [PromptLearner(w_dim=16, n_ctx=2, ctx_dim=32)]
    cfg = AdaptConfig(source=world["gen"], target_text="x", clip=[world["clip"]])
    for name in ("a", "b"):
        save_learners(tmp_path / name, learners, [None], cfg)
    for f in ("learner_0.safetensors", "learners.json"):
        a, b = tmp_path / "a" / "prompts" / f, tmp_path / "b" / "prompts" / f
        assert a.read_bytes() == b.read_bytes(), f
        assert _mode(a) == _open_mode(tmp_path) == 0o666 & ~umask, f


def test_run_folder_files_have_open_permissions(world, tmp_path):
    """Every file of a run (safetensors, checkpoint, JSON, PNG, latents) gets what open() would give."""
    expected = _open_mode(tmp_path)
    for p in Path(world["base"]).rglob("*"):
        if p.is_file():
            assert _mode(p) == expected, p


def test_canonical_header_rewrite_when_it_grows(tmp_path, monkeypatch):
    """If the canonical header were longer than safetensors' own, the file is rewritten, data kept aligned."""
    import ipl.core.atomic as atomic
    from safetensors import safe_open
    from safetensors.torch import load_file

    real = atomic._header_bytes
    monkeypatch.setattr(atomic, "_header_bytes", lambda h: real(h) + b"   ")  # 3 more bytes than fit
    tensors = {"b": torch.arange(5.0), "a": torch.ones(3, dtype=torch.float16)}
    atomic.save_safetensors(tensors, tmp_path / "x.safetensors", metadata={"k": "v", "j": "w"})
    n = int.from_bytes((tmp_path / "x.safetensors").read_bytes()[:8], "little")
    assert (8 + n) % 8 == 0
    back = load_file(str(tmp_path / "x.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as fh:
        assert fh.metadata() == {"j": "w", "k": "v"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
