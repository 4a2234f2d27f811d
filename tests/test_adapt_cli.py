"""`ipl adapt` end to end on a tiny random StyleGAN2 + tiny random CLIP, and every bad input it must refuse."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ipl import generators
from ipl.commands.cli import cli
from ipl.download import sha256_file
from ipl.core.errors import IPLError
from tiny_world import tiny_world

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny random 16 px StyleGAN2 in our format and a tiny random CLIP config (random weights)."""
    world = tiny_world(tmp_path_factory.mktemp("world"))
    return {**world, "gen": Path(world["gen"])}


def base_args(world, out, **over):
    args = {"--source": str(world["gen"]), "--source-text": "a solid shape", "--target": "a striped shape",
            "--clip": world["clip"], "--iters-prompt": "2", "--batch-prompt": "4", "--iters": "4", "--batch": "2",
            "--layers": "1", "--layer-batch": "2", "--sample-every": "2", "--sample-n": "3",
            "--checkpoint-every": "2",
            "--out": str(out), "--device": "cpu"}
    args.update(over)
    flat = ["adapt"]
    for k, v in args.items():
        if v is not None:
            flat += [k, v]
    return flat + ["--quiet"]


def invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=True)


def test_whole_command_writes_a_trustworthy_run(world, tmp_path):
    out = tmp_path / "run"
    res = invoke(base_args(world, out))
    assert res.exit_code == 0, (res.output, res.exception)

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["status"] == "complete"
    assert cfg["settings"]["target_text"] == "a striped shape" and cfg["settings"]["iters"] == 4
    assert cfg["settings"]["lr"] == pytest.approx(0.0016) and cfg["settings"]["method"] == "ipl"
    assert cfg["resolved"]["source_sha256"] == sha256_file(world["gen"])
    assert {"torch", "open_clip", "ipl"} <= set(cfg["versions"])

    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    s1 = [r for r in log if r["stage"] == 1]
    s2 = [r for r in log if r["stage"] == 2]
    assert [r["it"] for r in s1] == [1, 2] and [r["it"] for r in s2] == [1, 2, 3, 4]
    for r in s2:
        assert {"dir_0", "total", "layers", "seconds", "mem_mb"} <= set(r) and len(r["layers"]) == 1
    assert all("contrastive" in r and "domain" in r for r in s1)

    for name in ("iter_000000.png", "iter_000002.png", "final.png", "latents.pt"):
        assert (out / "samples" / name).is_file(), name
    assert (out / "prompts" / "learner_0.safetensors").is_file() and (out / "prompts" / "learners.json").is_file()
    assert (out / "checkpoint.pt").is_file()

    # Adapted weights changed only in the layers that were unfrozen at some step.
    from ipl.generators.stylegan2.adapter import StyleGAN2Adapter
    src = generators.load(world["gen"])
    ada = generators.load(out / "generator.safetensors")
    unfrozen = {i for r in s2 for i in r["layers"]}
    assert cfg["settings"]["layer_map"] == "reference"
    touched = {id(p) for i in unfrozen for p in StyleGAN2Adapter(ada).layer_parameters(i, "reference")}
    sd_src = src.state_dict()
    changed = []
    for name, p in ada.named_parameters():
        same = torch.equal(p.detach(), sd_src[name])
        if id(p) not in touched:
            assert same, f"{name} changed although its layer was never unfrozen"
        elif not same:
            changed.append(name)
    assert changed, "nothing was adapted"
    assert torch.equal(ada.synthesis.b4.const, src.synthesis.b4.const)
    # The reference map reaches no ToRGB but the 4x4 one (to_rgb1, row 1; checked with the touched ones above).
    for block_a, block_s in zip(ada.synthesis.blocks()[1:], src.synthesis.blocks()[1:]):
        for p_a, p_s in zip(block_a.torgb.parameters(), block_s.torgb.parameters()):
            assert torch.equal(p_a, p_s), f"b{block_a.resolution}.torgb changed"

    # The source row of the final grid is exactly the source generator's output at the saved latents.
    from ipl.core.images import make_grid
    latents = torch.load(out / "samples" / "latents.pt")
    with torch.no_grad():
        src_imgs = StyleGAN2Adapter(src).render(latents)
        ada_imgs = StyleGAN2Adapter(ada).render(latents)
    png = np.asarray(Image.open(out / "samples" / "final.png").convert("RGB"))
    np.testing.assert_array_equal(png, make_grid([src_imgs, ada_imgs]))

    # The run folder loads for `ipl sample` / `ipl eval`.
    from ipl.run import load_run
    info = load_run(out)
    assert info.adapted.resolution == 16 and info.config["status"] == "complete"


def _bad(world, tmp_path, match, **over):
    out = tmp_path / "bad"
    res = invoke(base_args(world, out, **over))
    assert res.exit_code != 0
    assert isinstance(res.exception, IPLError), res.exception
    assert match in str(res.exception), str(res.exception)
    assert not out.exists(), "a refused run must not write anything"


def test_unknown_source_lists_known(world, tmp_path):
    _bad(world, tmp_path, "Known sources: toy, ffhq", **{"--source": "ffhqq"})


@pytest.mark.parametrize("target", ["", "   "])
def test_empty_target(world, tmp_path, target):
    _bad(world, tmp_path, "empty", **{"--target": target})


def test_same_source_and_target(world, tmp_path):
    _bad(world, tmp_path, "the same", **{"--target": "A solid  shape."})


@pytest.mark.parametrize("flag", ["--iters", "--iters-prompt"])
def test_non_positive_iterations(world, tmp_path, flag):
    _bad(world, tmp_path, "positive", **{flag: "0"})


def test_freeze_noise_keeps_the_noise_strengths(world, tmp_path):
    out = tmp_path / "frozen-noise"
    res = invoke(base_args(world, out, **{"--method": "nada", "--layers": "all", "--iters": "3", "--lr": "0.05",
                                          "--sample-every": "0"}) + ["--freeze-noise"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    src, ada = generators.load(world["gen"]), generators.load(out / "generator.safetensors")
    sd_src = src.state_dict()
    noise = [n for n, _ in ada.named_parameters() if n.endswith("noise_strength")]
    assert noise, "the test generator has noise inputs"
    for name, p in ada.named_parameters():
        if name in noise:
            assert torch.equal(p.detach(), sd_src[name]), f"{name} changed under --freeze-noise"
    assert any(not torch.equal(p.detach(), sd_src[n]) for n, p in ada.named_parameters() if n not in noise)
    assert json.loads((out / "config.json").read_text())["settings"]["freeze_noise"] is True


def test_length_term_needs_a_ratio(world, tmp_path):
    _bad(world, tmp_path, "--length-ratio", **{"--length-weight": "1"})
    _bad(world, tmp_path, "--length-weight must be >= 0", **{"--length-weight": "-1", "--length-ratio": "0.1"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu(world, tmp_path):
    _bad(world, tmp_path, "no CUDA GPU", **{"--device": "cuda"})


def test_existing_run_is_not_overwritten(world, tmp_path):
    out = tmp_path / "bad"
    out.mkdir()
    (out / "config.json").write_text('{"settings": {}, "mine": 1}')
    res = invoke(base_args(world, out))
    assert res.exit_code != 0 and "already holds a run" in str(res.exception)
    assert (out / "config.json").read_text() == '{"settings": {}, "mine": 1}'
    assert sorted(os.listdir(out)) == ["config.json"]


def test_console_script_exit_code_and_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ipl.commands.cli", "adapt", "--source", "nope", "--target", "x",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "unknown source model 'nope'" in proc.stderr and "ffhq" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_help_documents_defaults():
    res = invoke(["adapt", "--help"])
    assert res.exit_code == 0
    for text in ("--iters-prompt", "300", "--layers", "--precision", "--resume", "--sample-every", "0.0016"):
        assert text in res.output, text


def test_file_of_targets_makes_one_run_each(world, tmp_path):
    targets = tmp_path / "targets.txt"
    targets.write_text("# two domains\na striped shape\n\na dotted shape\n")
    out = tmp_path / "many"
    args = base_args(world, out, **{"--target": None, "--method": "nada", "--iters": "1", "--layers": "all",
                                    "--sample-every": "0"}) + ["--target", f"@{targets}"]
    res = invoke(args)
    assert res.exit_code == 0, (res.output, res.exception)
    stem = world["gen"].stem.replace("_", "-")
    for slug in ("a-striped-shape", "a-dotted-shape"):
        cfg = json.loads((out / f"{stem}-{slug}" / "config.json").read_text())
        assert cfg["status"] == "complete" and cfg["resolved"]["layers"] == "all"
        assert (out / f"{stem}-{slug}" / "generator.safetensors").is_file()
