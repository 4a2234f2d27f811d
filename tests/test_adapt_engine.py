"""Stage-2 engine on a fake layered generator and the tiny random CLIP: freezing, EMA, NaN guard, hooks."""
import math

import pytest
import torch

from ipl.method.ema import EMA
from ipl.core.errors import IPLError
from ipl.method.prompts import PromptLearner
from ipl.method.stage2 import NonFiniteLossError, Stage2Settings, Stage2Trainer
from test_adapt_fakes import FakeLayeredGenerator
from tiny_clip import tiny_clip  # noqa: F401  (fixture)


def _trainer(clip, method="ipl", layers=2, **kw):
    G = FakeLayeredGenerator(n_layers=5)
    learners = None
    if method == "ipl":
        torch.manual_seed(0)
        learners = [PromptLearner(G.code_dim, n_ctx=2, ctx_dim=clip.ctx_dim)]
    s = Stage2Settings(method=method, layers=layers, layer_batch=4, **kw)
    return G, Stage2Trainer(G, [clip], "a solid shape", "a striped shape", learners, s)


def test_only_chosen_layers_change(tiny_clip):
    G, tr = _trainer(tiny_clip, lr=0.01)
    src = {k: v.clone() for k, v in G.state_dict().items()}
    chosen = set()
    for _ in range(3):
        rec = tr.step()
        assert len(rec["layers"]) == 2 and math.isfinite(rec["total"])
        assert {"dir_0", "total", "seconds", "mem_mb", "probe_s"} <= set(rec)
        chosen |= set(rec["layers"])
    assert chosen != set(range(5)), "test needs a layer that was never chosen"
    touched = {id(p) for i in chosen for p in tr.G_t.layer_parameters(i)}
    names_touched = {n for n, p in tr.G_t.named_parameters() if id(p) in touched}
    for model in (tr.G_t, tr.G_ema):
        for name, v in model.state_dict().items():
            if name in names_touched:
                continue
            assert torch.equal(v, src[name]), f"{name} changed but its layer was never unfrozen"
    changed = [n for n in names_touched if not torch.equal(tr.G_t.state_dict()[n], src[n])]
    assert changed, "no unfrozen parameter moved"
    for name, v in G.state_dict().items():  # the source is never touched
        assert torch.equal(v, src[name])


def test_first_step_gradient_bounded(tiny_clip):
    # G_t == G_s at step 1: the image direction is 0; loss must be finite and the update bounded.
    G, tr = _trainer(tiny_clip, method="nada", layers=None, lr=1e-3)
    before = [p.detach().clone() for p in tr.params]
    rec = tr.step()
    assert rec["layers"] == "all" and math.isfinite(rec["total"]) and abs(rec["total"] - 1.0) < 1e-3
    step = max((p - b).abs().max().item() for p, b in zip(tr.params, before))
    assert 0 < step <= 1e-3 * 1.01  # Adam with beta1=0 moves at most ~lr per entry


def test_nada_loss_falls(tiny_clip):
    G, tr = _trainer(tiny_clip, method="nada", layers=None, lr=0.02, batch=4)
    losses = [tr.step()["total"] for _ in range(10)]
    assert sum(losses[-3:]) / 3 < losses[1] - 0.1, losses


def test_non_finite_loss_raises(tiny_clip):
    G, tr = _trainer(tiny_clip, method="nada", layers=None)
    tr.G_t.extra_losses = lambda latents, images_t: {"l1": images_t.sum() * float("nan")}
    snapshot = {k: v.clone() for k, v in tr.G_t.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="l1"):
        tr.step()
    for k, v in tr.G_t.state_dict().items():  # no update was applied
        assert torch.equal(v, snapshot[k])


def test_extra_losses_are_added_and_logged(tiny_clip):
    G, tr = _trainer(tiny_clip, method="nada", layers=None)
    tr.G_t.extra_losses = lambda latents, images_t: {"l1": 0.5 * images_t.abs().mean()}
    rec = tr.step()
    assert rec["total"] == pytest.approx(rec["dir_0"] * tiny_clip.weight + rec["l1"], rel=1e-5)


def test_length_term_is_added_logged_and_needs_a_ratio(tiny_clip):
    G, tr = _trainer(tiny_clip, method="nada", layers=None, length_weight=0.5, length_ratio=0.1)
    rec = tr.step()
    assert rec["len_0"] == pytest.approx(1.0, abs=1e-3)  # G_t == G_s: no change yet, the hinge is at 1
    assert rec["total"] == pytest.approx(tiny_clip.weight * (rec["dir_0"] + 0.5 * rec["len_0"]), rel=1e-5)
    rec = tr.step()
    assert rec["total"] == pytest.approx(tiny_clip.weight * (rec["dir_0"] + 0.5 * rec["len_0"]), rel=1e-5)
    _, plain = _trainer(tiny_clip, method="nada", layers=None)
    assert "len_0" not in plain.step()  # off by default, as NADA and IPL
    with pytest.raises(IPLError, match="length ratio"):
        _trainer(tiny_clip, method="nada", layers=None, length_weight=1.0)
    with pytest.raises(IPLError, match="no noise inputs"):  # the fake generator has none
        _trainer(tiny_clip, method="nada", layers=None, freeze_noise=True)


def test_length_goal_is_the_template_change_for_both_methods(tiny_clip):
    # IPL's per-image text changes have lengths of their own; the length term's goal must be the template
    # change's (as for NADA), the length the ratio was measured on, so both methods ask for the same change.
    from ipl.method.losses import length_loss
    from ipl.method.templates import template_features

    t_src, t_tgt = (template_features(tiny_clip, t).reshape(1, -1) for t in ("a solid shape", "a striped shape"))
    for method in ("nada", "ipl"):
        G, tr = _trainer(tiny_clip, method=method, layers=None, length_weight=1.0, length_ratio=0.1)
        assert torch.equal(tr.template_src[0], t_src) and torch.equal(tr.template_tgt[0], t_tgt)
    # The IPL trainer's own per-image prompts, and image features that moved by some random amount.
    p_src, p_tgt = tr._text_features(0, G.sample_latents(2, generator=torch.Generator().manual_seed(1)))
    assert p_src.shape == (2, t_src.shape[1])
    torch.manual_seed(1)
    src_img = torch.randn(2, t_src.shape[1])
    tgt_img = src_img + 0.05 * torch.randn(2, t_src.shape[1])
    terms = {}
    loss = tr.clip_loss(0, src_img, tgt_img, p_src, p_tgt, terms)
    want = length_loss(src_img, tgt_img, p_src, p_tgt, 0.1, reference=(t_src, t_tgt))
    assert terms["len_0"].item() == pytest.approx(want.item(), rel=1e-6)
    own = length_loss(src_img, tgt_img, p_src, p_tgt, 0.1).item()  # the goal from the prompts' own length
    assert abs(terms["len_0"].item() - own) > 1e-3, (terms["len_0"].item(), own)
    assert loss.item() == pytest.approx(tiny_clip.weight * (terms["dir_0"] + terms["len_0"]).item(), rel=1e-6)


def test_ema_lerp_keeps_unchanged_exact():
    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    b.load_state_dict(a.state_dict())
    ema = EMA(a, b, decay=0.99)
    with torch.no_grad():
        a.weight.add_(1.0)
    ema.update()
    assert torch.equal(b.bias, a.bias)  # unchanged parameter: bit-identical
    torch.testing.assert_close(b.weight, a.weight - 0.99, rtol=0, atol=1e-6)


def test_layer_every_reuses_the_probe(tiny_clip, monkeypatch):
    import ipl.method.stage2 as stage2
    calls = []
    real = stage2.select_layers
    monkeypatch.setattr(stage2, "select_layers", lambda *a, **k: calls.append(1) or real(*a, **k))
    G, tr = _trainer(tiny_clip, method="nada", layers=2, layer_every=2)
    recs = [tr.step() for _ in range(3)]
    assert len(calls) == 2 and recs[0]["layers"] == recs[1]["layers"]
