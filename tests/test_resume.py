"""--resume after a kill continues to exactly the result of an uninterrupted run with the same seed."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from ipl import generators
from ipl.generators.stylegan2.network import Generator
from ipl.commands.cli import cli
from ipl.method.stage2 import Stage2Trainer
from tiny_clip import write_tiny_clip_files


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    torch.manual_seed(1)
    G = Generator(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8})
    with torch.no_grad():  # noise that counts from the first render (a fresh network's strengths are 0)
        for layer in G.synthesis.conv_layers():
            layer.noise_strength.fill_(0.3)
    gen = generators.save(G, root / "g.safetensors")
    cfg, _ = write_tiny_clip_files(root / "clip", seed=1)
    return {"gen": str(gen), "clip": f"{cfg}:none"}


def _args(world, out, *extra):
    return ["adapt", "--source", world["gen"], "--source-text", "a solid shape", "--target", "a dotted shape",
            "--clip", world["clip"], "--iters-prompt", "2", "--batch-prompt", "4", "--iters", "4", "--layers", "2",
            "--layer-batch", "2", "--sample-n", "2", "--sample-every", "0", "--checkpoint-every", "2",
            "--seed", "7", "--device", "cpu", "--out", str(out), "--quiet", *extra]


def _stage2(out):
    return [json.loads(l) for l in (Path(out) / "log.jsonl").read_text().splitlines()
            if json.loads(l)["stage"] == 2]


@pytest.mark.parametrize("noise", ["random", "fixed"])
def test_kill_then_resume_equals_uninterrupted(world, tmp_path, monkeypatch, noise):
    # noise random: every render draws fresh noise from the run's seeded stream, saved in checkpoint.pt.
    full, cut = tmp_path / "full", tmp_path / "cut"

    def args(out, *extra):
        return _args(world, out, "--noise", noise, *extra)

    assert CliRunner().invoke(cli, args(full)).exit_code == 0

    real_step = Stage2Trainer.step

    def dying_step(self):
        if self.iteration == 3:  # killed during iteration 4; last checkpoint is at 2
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Stage2Trainer, "step", dying_step)
    res = CliRunner().invoke(cli, args(cut))
    assert res.exit_code != 0  # click turns the KeyboardInterrupt into Abort
    assert not (cut / "generator.safetensors").exists()
    assert json.loads((cut / "config.json").read_text())["status"] == "interrupted"
    assert torch.load(cut / "checkpoint.pt", weights_only=False)["trainer"]["iteration"] == 2
    monkeypatch.setattr(Stage2Trainer, "step", real_step)

    # Without --resume the folder is refused; with it, the run completes.
    refused = CliRunner().invoke(cli, args(cut))
    assert refused.exit_code != 0 and "--resume" in str(refused.exception)
    changed = CliRunner().invoke(cli, args(cut, "--resume", "--lr", "0.1"))
    assert changed.exit_code != 0 and "lr" in str(changed.exception)
    res = CliRunner().invoke(cli, args(cut, "--resume"))
    assert res.exit_code == 0, (res.output, res.exception)

    a, b = load_file(str(full / "generator.safetensors")), load_file(str(cut / "generator.safetensors"))
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la, lb = _stage2(full), _stage2(cut)
    assert [r["it"] for r in lb] == [1, 2, 3, 4]
    assert [(r["total"], r["layers"]) for r in la] == [(r["total"], r["layers"]) for r in lb]
    assert json.loads((cut / "config.json").read_text())["status"] == "complete"
