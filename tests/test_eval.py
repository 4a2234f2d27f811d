"""`ipl eval` end to end: inputs, fixed seeds, offline errors, random-weight labelling, the toy judge.

Networks: a tiny random CLIP and a random LPIPS backbone (clearly labelled; never results), and the shipped
toy assets where they exist. No downloads: TORCH_HOME is an empty folder and IPL_OFFLINE=1.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ipl.commands.cli import cli
from ipl.core.assets import shipped
from ipl.core.errors import WeightsNotFoundError
from ipl.core.interface import AdaptableGenerator
from ipl.metrics.sources import EvalInput, sample_batches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_clip import write_tiny_clip_files  # noqa: E402

TOY_GENERATOR = shipped("toy/generator.safetensors")
TOY_JUDGE = shipped("toy/judge.safetensors")
TOY_CLIP = shipped("toy/clip.safetensors")


def _require_shipped(*paths: Path) -> None:
    """The toy assets are package data (ipl/assets/toy/), part of the repository: missing ones fail, never skip."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.fail(f"shipped toy assets missing: {', '.join(missing)}", pytrace=False)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("IPL_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs on a shared box: avoid OpenMP spin contention
    yield
    torch.set_num_threads(threads)


class FakeGenerator(AdaptableGenerator):
    """Latents -> 8x8 images through a fixed random linear map (for the seeding logic only)."""

    code_dim = 4
    resolution = 8

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.proj = torch.nn.Linear(4, 3 * 8 * 8)

    def sample_latents(self, n, generator=None, truncation=1.0):
        return torch.randn(n, 4, generator=generator) * truncation

    def codes(self, latents):
        return latents

    def render(self, latents):
        return torch.tanh(self.proj(latents)).view(-1, 3, 8, 8) * 1.5

    def trainable_parameters(self):
        return list(self.parameters())

    def save(self, path, metadata=None):
        raise NotImplementedError


def _collect(inp, n, batch, seed=0):
    return torch.cat([imgs for imgs, _ in sample_batches(inp, n, batch, seed=seed)])


def test_samples_are_fixed_by_seed_whatever_n_and_batch():
    inp = EvalInput(label="fake", path="fake", kind="generator", generator=FakeGenerator())
    small = _collect(inp, 5, 2)
    large = _collect(inp, 300, 64)          # crosses a latent-chunk boundary (256)
    assert small.shape == (5, 3, 8, 8) and large.shape == (300, 3, 8, 8)
    torch.testing.assert_close(small, large[:5], rtol=0, atol=1e-6)  # GEMM rounding differs by batch
    torch.testing.assert_close(_collect(inp, 300, 7), large, rtol=0, atol=1e-6)
    assert not torch.allclose(_collect(inp, 5, 2, seed=1), small)
    assert large.min() >= -1 and large.max() <= 1            # clamped like saved images
    assert len(torch.unique(large.flatten(1), dim=0)) == 300   # no repeated samples across chunks


def _write_pngs(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, a in enumerate(images):
        Image.fromarray(a).save(folder / f"{i:03d}.png")


@pytest.fixture()
def image_folders(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    same = np.repeat(base[None], 12, axis=0)
    noisy = np.clip(base[None].astype(int) + rng.integers(-60, 61, (12, 32, 32, 3)), 0, 255).astype(np.uint8)
    _write_pngs(tmp_path / "same", same)
    _write_pngs(tmp_path / "noisy", noisy)
    return tmp_path / "same", tmp_path / "noisy"


@pytest.mark.filterwarnings("ignore:.*RANDOM weights")  # the tiny CLIP is random on purpose (and labelled)
def test_eval_folders_refuses_random_weights_then_labels_them(tmp_path, image_folders):
    same, noisy = image_folders
    cfg, _ = write_tiny_clip_files(tmp_path / "clip")
    out = tmp_path / "res.json"
    args = ["eval", str(same), "--vs", str(noisy), "--metrics", "intra-lpips,clip-score", "--clip", f"{cfg}:none",
            "--target", "a red circle", "--n", "12", "--batch", "5", "--device", "cpu", "--offline", "--quiet",
            "--lpips-size", "32", "--out", str(out)]
    r = CliRunner().invoke(cli, args)
    assert isinstance(r.exception, WeightsNotFoundError), r.output
    assert "alexnet-owt-7be5be79.pth" in str(r.exception) and not out.exists()

    r = CliRunner().invoke(cli, args + ["--allow-random-weights"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    res = json.loads(out.read_text())
    assert res["format"] == "ipl-eval-1"
    assert "lpips-backbone" in res["random_weights"] and any(w.startswith("clip") for w in res["random_weights"])
    assert "not results" in res["note"]
    cols = {c["label"]: c for c in res["columns"]}
    assert set(cols) == {"same", "noisy"} and cols["same"]["n"] == 12
    assert cols["same"]["values"]["intra-lpips"] == pytest.approx(0.0, abs=1e-9)   # identical images
    assert cols["noisy"]["values"]["intra-lpips"] > 1e-3
    for c in cols.values():
        assert np.isfinite(c["values"]["clip-score"]) and -100 <= c["values"]["clip-score"] <= 100
        assert c["details"]["clip-score"]["clip_text"] == "a red circle"
    assert res["settings"]["n"] == 12 and res["versions"]["torch-fidelity"] != "not installed"
    assert "NOT results" in r.output and "*" in r.output
    assert "intra-lpips" in r.output and "noisy" in r.output.splitlines()[0]


def test_missing_inception_weights_exit_2_with_a_clear_message(monkeypatch, capsys, image_folders):
    from ipl.commands.cli import main

    same, _ = image_folders
    monkeypatch.setattr(sys, "argv", ["ipl", "eval", str(same), "--metrics", "fid", "--ref", str(same),
                                      "--device", "cpu", "--quiet"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "weights-inception-2015-12-05-6726825d.pth" in err and "hub" in err and "--inception-weights" in err


def test_unknown_metric_and_missing_target_are_user_errors(tmp_path, image_folders):
    same, _ = image_folders
    r = CliRunner().invoke(cli, ["eval", str(same), "--metrics", "fid,sharpness", "--quiet"])
    assert "unknown metric" in str(r.exception)
    r = CliRunner().invoke(cli, ["eval", str(same), "--metrics", "judge", "--quiet", "--device", "cpu"])
    assert "toy" in str(r.exception)
    r = CliRunner().invoke(cli, ["eval", str(same), "--metrics", "clip-score", "--quiet", "--device", "cpu"])
    assert "--target" in str(r.exception)          # a folder of images has no target text of its own
    r = CliRunner().invoke(cli, ["eval", str(same), "--metrics", "kid", "--quiet", "--device", "cpu"])
    assert "--ref" in str(r.exception)


def _toy_run(folder: Path, recorded_sha256: str = None) -> Path:
    """A run folder whose 'adapted' generator is the toy source itself (identity adaptation)."""
    folder.mkdir()
    shutil.copy(TOY_GENERATOR, folder / "generator.safetensors")
    target = "on a dark background"
    (folder / "config.json").write_text(json.dumps({
        "settings": {"source": "toy", "target_text": target, "clip": ["toy"], "method": "ipl"},
        "resolved": {"source_path": str(TOY_GENERATOR), "source_entry": "toy", "target_text": target,
                     "source_sha256": recorded_sha256},
        "status": "complete"}))
    return folder


def test_toy_run_judge_known_answers_for_an_identity_adaptation(tmp_path):
    """Adapted == source: the judge must see all content and diversity kept, and judge-FID must put the
    adapted samples exactly where the source samples are (whatever the toy generator's quality)."""
    _require_shipped(TOY_GENERATOR, TOY_JUDGE, TOY_CLIP)
    run = _toy_run(tmp_path / "toy-identity", recorded_sha256="0" * 64)   # as if trained from another file
    r = CliRunner().invoke(cli, ["eval", str(run), "--n", "48", "--batch", "48", "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    res = json.loads((run / "eval.json").read_text())          # default --out for a run folder
    assert res["metrics"] == ["judge", "judge-fid", "clip-score"]   # the toy defaults
    assert res["random_weights"] == [] and res["columns"][0]["n"] == 48
    col = res["columns"][0]
    judge = col["details"]["judge"]
    assert judge["content_kept"] == 1.0 and judge["diversity_kept"] == pytest.approx(1.0)
    assert judge["target_domain"] == "dark" and 0.0 <= judge["target_rate"] <= 1.0
    jf = col["details"]["judge-fid"]
    assert jf["adapted_vs_solid"] == pytest.approx(jf["source_vs_solid"], rel=1e-9)
    assert col["values"]["judge-fid"] == jf["adapted_vs_target"] > 0
    assert col["details"]["clip-score"]["clip_model"] == "toy"
    assert "judge:target_rate" in r.output and "judge-fid" in r.output
    # The source checkpoint differs from the one recorded at training: said in the table and the JSON.
    assert "changed since this run was trained" in col["notes"]["warning"] and "WARNING" in r.output
    assert len(col["notes"]["source_sha256"]) == 64
    clip_w = res["weights"]["clip"]
    assert clip_w["weights_path"] == str(TOY_CLIP) and len(clip_w["weights_sha256"]) == 64


def test_judge_features_separate_domains():
    """Judge-FID known answer on renders: two draws of one domain are close, two domains are far apart."""
    _require_shipped(TOY_JUDGE)
    from ipl.generators.toy.judge import load_judge
    from ipl.metrics.fid import frechet_distance
    from ipl.metrics.runner import JudgeFeatures, toy_renders

    jf = JudgeFeatures(load_judge())
    solid_a, solid_b = jf.embed(toy_renders("solid", 120, 64, 0)), jf.embed(toy_renders("solid", 120, 64, 1))
    dark = jf.embed(toy_renders("dark", 120, 64, 2))
    assert solid_a.shape[0] == 120 and not torch.equal(solid_a, solid_b)
    assert frechet_distance(solid_a, dark) > 10 * frechet_distance(solid_a, solid_b)
