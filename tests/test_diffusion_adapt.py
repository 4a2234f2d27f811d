"""`ipl adapt` end to end on a tiny random diffusers UNet (IPL and the lean trainer), resume, run loading."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from ipl.generators import diffusion
from ipl.commands.cli import cli
from ipl.method.stage2 import Stage2Trainer
from test_diffusion import tiny_unet
from tiny_clip import write_tiny_clip_files

OPTS = ["t0=200", "inversion_steps=5", "generation_steps=2", "sample_steps=3", "n_sources=4", "pool_batch=4"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A diffusers folder with a tiny random 16 px UNet, and a tiny random CLIP (random weights: no numbers)."""
    root = tmp_path_factory.mktemp("dworld")
    tiny_unet().save_pretrained(str(root / "ddpm"))
    cfg_path, _ = write_tiny_clip_files(root / "clip")
    return {"root": root, "ddpm": root / "ddpm", "clip": f"{cfg_path}:none"}


def adapt_args(world, out, *extra):
    args = ["adapt", "--source", str(world["ddpm"]), "--source-text", "a solid shape",
            "--target", "a striped shape", "--clip", world["clip"], "--iters-prompt", "2", "--batch-prompt", "4",
            "--iters", "4", "--batch", "2", "--lr", "1e-3", "--sample-every", "2", "--sample-n", "2",
            "--checkpoint-every", "2", "--out", str(out), "--device", "cpu", "--quiet"]
    for o in OPTS:
        args += ["--diffusion", o]
    return args + list(extra)


def invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=True)


def unet_state(path: Path) -> dict:
    return load_file(str(path))


def test_adapt_diffusers_folder_end_to_end_and_resume(world, tmp_path, monkeypatch):
    out = tmp_path / "run"
    res = invoke(adapt_args(world, out))
    assert res.exit_code == 0, (res.output, res.exception)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["status"] == "complete" and cfg["settings"]["diffusion"]["t0"] == "200"
    assert cfg["resolved"]["code_dim"] == 32  # the tiny CLIP's embedding: codes are CLIP image features
    records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    stage2 = [r for r in records if r["stage"] == 2]
    assert len(stage2) == 4 and all("l1" in r and "dir_0" in r for r in stage2)
    assert (out / "samples" / "final.png").is_file() and (out / "prompts" / "learners.json").is_file()

    # The saved generator is an adapted diffusion model whose UNet moved away from the source.
    adapted = diffusion.load(out / "generator.safetensors")
    assert adapted.role == "adapted" and adapted.config.t0 == 200 and adapted.config.generation_steps == 2
    src_state = tiny_unet().state_dict()
    moved = sum(float((adapted.unet.state_dict()[k] - v).abs().sum()) for k, v in src_state.items())
    assert moved > 0

    # The run loads: the adapted model shares the source's pool and renders its latents.
    from ipl.run import load_run

    info = load_run(out)
    lat = info.adapted.sample_latents(2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert info.adapted.render(lat).shape == (2, 3, 16, 16)
    assert info.source.role == "source"

    # Sampling the run: from noise (source over adapted) and editing real images (input over result).
    from PIL import Image

    from ipl.commands.cli import cli
    from ipl.generators.diffusion.sampling import edit_images

    res = CliRunner().invoke(cli, ["sample", str(out), "--n", "2", "--steps", "3", "--source-too",
                                              "--out", str(tmp_path / "grid.png"), "--outdir", str(tmp_path / "s")])
    assert res.exit_code == 0, (res.output, res.exception)
    assert Image.open(tmp_path / "grid.png").size[1] > Image.open(tmp_path / "grid.png").size[0] / 2
    assert sorted(p.name for p in (tmp_path / "s" / "adapted").iterdir()) == ["seed0000.png", "seed0001.png"]
    (tmp_path / "real").mkdir()
    for i in range(2):
        Image.new("RGB", (16, 16), (200, 40 * i, 10)).save(tmp_path / "real" / f"{i}.png")
    res = CliRunner().invoke(cli, ["sample", str(out), "--edit", str(tmp_path / "real"),
                                              "--outdir", str(tmp_path / "e")])
    assert res.exit_code == 0, (res.output, res.exception)
    assert len(list((tmp_path / "e" / "edited").iterdir())) == 2
    # Editing with an unchanged copy of the source reconstructs the input (the DDIM round trip).
    img = torch.rand(1, 3, 16, 16) * 2 - 1
    rec = edit_images(info.source, info.source.copy(), img)
    assert (rec - img).abs().mean() < (img.abs().mean() / 2)

    # Resume: interrupt a second identical run after 2 iterations (checkpoint at 2), resume, same weights.
    out2 = tmp_path / "run2"
    real_step = Stage2Trainer.step

    def step_then_stop(self):
        if self.iteration == 2:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Stage2Trainer, "step", step_then_stop)
    res = invoke(adapt_args(world, out2))
    assert res.exit_code != 0 and not (out2 / "generator.safetensors").exists()
    monkeypatch.setattr(Stage2Trainer, "step", real_step)
    res = invoke(adapt_args(world, out2, "--resume"))
    assert res.exit_code == 0, (res.output, res.exception)
    a, b = unet_state(out / "generator.safetensors"), unet_state(out2 / "generator.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_lean_trainer_takes_an_optimiser_step_per_ddim_step(world, tmp_path):
    out = tmp_path / "lean"
    res = invoke(adapt_args(world, out, "--method", "nada", "--iters", "2", "--diffusion", "lean=true"))
    assert res.exit_code == 0, (res.output, res.exception)
    stage2 = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    stage2 = [r for r in stage2 if r["stage"] == 2]
    assert len(stage2) == 2 and all(r["opt_steps"] == 2 and "l1_mean" in r for r in stage2)
    assert diffusion.load(out / "generator.safetensors").config.lean is True


def test_adapt_refuses_bad_diffusion_input(world, tmp_path):
    res = invoke(adapt_args(world, tmp_path / "a", "--diffusion", "nonsense=1"))
    assert res.exit_code != 0 and "unknown diffusion option" in str(res.exception)
    res = invoke(adapt_args(world, tmp_path / "b", "--diffusion", "t0"))
    assert res.exit_code != 0 and "KEY=VALUE" in str(res.exception)
    res = invoke(adapt_args(world, tmp_path / "c", "--source-images", str(tmp_path / "missing")))
    assert res.exit_code != 0 and "not a folder" in str(res.exception)
    res = invoke(adapt_args(world, tmp_path / "d", "--freeze-noise"))  # StyleGAN2 noise strengths only
    assert res.exit_code != 0 and "no noise inputs" in str(res.exception)
    assert not (tmp_path / "d" / "prompts").exists(), "refused before stage 1"
    assert not (tmp_path / "a" / "generator.safetensors").exists()
