"""`--compile`: torch.compile of the stage-2 passes, with one warning and the eager path where it fails."""
from __future__ import annotations

import warnings

import pytest
import torch

from ipl.core.config import AdaptConfig
from ipl.core.errors import IPLError
from ipl.method import compile as compile_mod
from ipl.method.compile import compiled
from test_probe import _adapter
from tiny_clip import tiny_clip  # noqa: F401  (fixture)


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(compile_mod, "_WARNED", set())


def test_a_failing_compile_warns_once_and_runs_eagerly(monkeypatch):
    calls = []

    def broken_compile(fn, dynamic=None):
        assert dynamic is False  # dynamic shapes off
        def run(*a, **k):
            calls.append("compiled")
            raise RuntimeError("backend exploded\nmore lines")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    f = compiled(lambda x: x * 2, "f")
    with pytest.warns(RuntimeWarning, match="torch.compile of f failed .RuntimeError: backend exploded.") as rec:
        assert torch.equal(f(torch.ones(2)), torch.full([2], 2.0))
    assert len(rec) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, and the compiled path is not retried
        assert torch.equal(f(torch.ones(3)), torch.full([3], 2.0))
    assert calls == ["compiled"]
    assert compiled(f, "f") is f  # never wrapped twice


def test_no_compiler_means_eager_with_one_warning(monkeypatch):
    monkeypatch.setattr(compile_mod.shutil, "which", lambda name: None)
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compile attempted without a compiler"))
    fn = lambda x: x + 1  # noqa: E731
    with pytest.warns(RuntimeWarning, match="no C.. compiler"):
        assert compiled(fn, "g") is fn
    assert compile_mod.compile_problem() is not None


def test_stage2_routes_its_passes_through_compile(tiny_clip, monkeypatch):
    """With compile on, G_s and G_t renders and the CLIP image encoder go through torch.compile; the step's
    numbers equal an eager step's when the 'compiler' is the identity."""
    from ipl.method.stage2 import Stage2Settings, Stage2Trainer

    names = []

    def identity_compile(fn, dynamic=None):
        names.append(getattr(fn, "__name__", "?"))
        return fn

    monkeypatch.setattr(torch, "compile", identity_compile)
    records = {}
    for comp in (False, True):
        s = Stage2Settings(method="nada", layers=2, layer_batch=2, layer_every=1, lr=0.01, compile=comp,
                           probe="grad")
        tr = Stage2Trainer(_adapter(), [tiny_clip], "a solid shape", "a striped shape", None, s)
        records[comp] = [tr.step() for _ in range(2)]
    assert sorted(names) == ["encode_images", "render", "render", "render_layers"]
    for a, b in zip(*records.values()):
        assert a["total"] == b["total"] and a["layers"] == b["layers"]
    with pytest.raises(IPLError, match="compile"):
        AdaptConfig(target_text="x", compile="yes").validate()


@pytest.mark.slow
def test_real_compile_of_the_generator_matches_eager():
    """A real torch.compile (inductor; needs a C++ compiler) of a tiny synthesis: same images to 1e-5."""
    if compile_mod.compile_problem() is not None:
        pytest.skip(compile_mod.compile_problem())
    A = _adapter(8)
    w = A.sample_latents(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = A.render(w)
        got = compiled(A.render, "render")(w)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
