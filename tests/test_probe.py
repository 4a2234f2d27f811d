"""`--probe grad`: layers ranked by the W+ gradient of stage 2's own backward (no extra probe pass)."""
from __future__ import annotations

import json

import pytest
import torch

from ipl import generators
from ipl.core.config import AdaptConfig
from ipl.core.errors import IPLError
from ipl.generators.stylegan2.adapter import StyleGAN2Adapter
from ipl.generators.stylegan2.network import Generator
from ipl.method import stage2
from ipl.method.freezing import rank_layers, row_scores
from ipl.method.stage2 import Stage2Settings, Stage2Trainer
from tiny_clip import tiny_clip  # noqa: F401  (fixture)


def _adapter(res: int = 16) -> StyleGAN2Adapter:
    torch.manual_seed(0)
    G = Generator(z_dim=8, w_dim=8, img_resolution=res, mapping_layers=2, channel_base=64, channel_max=8).eval()
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith(("noise_strength", ".bias")):
                p.add_(0.3 * torch.randn_like(p))
    return StyleGAN2Adapter(G)


def _trainer(clip, probe: str, layers: int = 2, **kw) -> Stage2Trainer:
    kw = {"layer_every": 1, **kw}
    s = Stage2Settings(method="nada", layers=layers, layer_batch=2, probe=probe, lr=0.01, **kw)
    return Stage2Trainer(_adapter(), [clip], "a solid shape", "a striped shape", None, s)


def test_rank_layers_takes_the_top_scores_among_rows_that_train_something():
    A = _adapter()
    n = A.num_layers()
    scores = torch.arange(n, dtype=torch.float32)  # the last row scores highest
    allowed = A.trainable_parameters()
    assert rank_layers(A, scores, 2, allowed, "reference") == [n - 2, n - 1]
    # The semantic map's last row trains nothing: it never competes.
    assert rank_layers(A, scores, 2, allowed, "semantic") == [n - 3, n - 2]
    assert rank_layers(A, scores, None, allowed, "reference") == list(range(n))
    grad = torch.zeros(3, n, 5)
    grad[:, 1] = -2.0
    grad[0, 3] = 9.0
    assert torch.equal(row_scores(grad), torch.tensor([0, 2.0, 0, 3.0] + [0] * (n - 4)))


def test_grad_probe_ranks_by_the_training_backward(tiny_clip, monkeypatch):
    ref, grad = _trainer(tiny_clip, "reference"), _trainer(tiny_clip, "grad")
    r1, g1 = ref.step(), grad.step()
    # Step 1: no training pass yet, so the grad probe's first pick is the reference probe's (same draws), and
    # rendering from a W+ leaf gives the very images (and loss) render(w) gives.
    assert g1["layers"] == r1["layers"] and g1["total"] == r1["total"]
    scores = grad.probe_scores
    assert scores is not None and scores.shape == (grad.G_t.num_layers(),) and bool((scores > 0).all())
    # Step 2 ranks by exactly those scores, with no probe pass (select_layers is never called).
    monkeypatch.setattr(stage2, "select_layers", lambda *a, **k: pytest.fail("the grad probe ran a probe pass"))
    expected = rank_layers(grad.G_t, scores, 2, grad.params, "reference")
    rng_before = grad.rng.get_state()
    assert grad.step()["layers"] == expected
    # No probe latents were drawn: only the training batch's (a reference step draws layer_batch more).
    probe_draw = torch.Generator().set_state(rng_before)
    grad.G_t.sample_latents(2, generator=probe_draw)
    assert torch.equal(probe_draw.get_state(), grad.rng.get_state())
    # The scores restart at each pick: now those of step 2's backward only.
    assert grad.probe_scores is not None and not torch.equal(grad.probe_scores, scores)


def test_grad_probe_resumes_bit_exact(tiny_clip):
    full = _trainer(tiny_clip, "grad", layer_every=2)
    for _ in range(4):
        full.step()
    first = _trainer(tiny_clip, "grad", layer_every=2)
    for _ in range(3):
        first.step()
    state = first.state_dict()
    assert state["probe_scores"] is not None  # mid-way between two picks: the scores so far are saved
    second = _trainer(tiny_clip, "grad", layer_every=2)
    second.load_state_dict(state)
    rec = second.step()
    assert rec["layers"] == full.current_layers
    for (name, a), b in zip(full.G_t.state_dict().items(), second.G_t.state_dict().values()):
        assert torch.equal(a, b), name


def test_probe_setting_is_checked_and_recorded(tmp_path):
    from click.testing import CliRunner

    from ipl.commands.cli import cli
    from tiny_clip import write_tiny_clip_files

    with pytest.raises(IPLError, match="--probe"):
        AdaptConfig(target_text="x", probe="cheap").validate()
    torch.manual_seed(0)
    G = Generator(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8})
    gen = generators.save(G, tmp_path / "g.safetensors")
    cfg_path, _ = write_tiny_clip_files(tmp_path / "clip")
    args = ["adapt", "--source", str(gen), "--source-text", "a solid shape", "--target", "a striped shape",
            "--clip", f"{cfg_path}:none", "--method", "nada", "--iters", "3", "--layers", "2", "--layer-every", "1",
            "--layer-batch", "2", "--sample-every", "0", "--sample-n", "2", "--device", "cpu", "--quiet"]
    bad = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "bad"), "--probe", "cheap"])
    assert bad.exit_code == 2 and not (tmp_path / "bad").exists()
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, args + ["--out", str(out), "--probe", "grad"])
    assert res.exit_code == 0, (res.output, res.exception)
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["probe"] == "grad" and settings["filled_by"]["probe"] == "flag"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    picked = [r for r in log if r["stage"] == 2]
    assert len(picked) == 3 and all(len(r["layers"]) == 2 for r in picked)
    # Probe time after the first step: ranking only, no pass through G_t and CLIP.
    assert max(r["probe_s"] for r in picked[1:]) < picked[0]["probe_s"]
