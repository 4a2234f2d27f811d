"""Paired augmented views for the CLIP losses, and a stage-2 step that uses them."""
import math

import torch

from ipl.method.augment import paired_views
from ipl.method.prompts import PromptLearner
from ipl.method.stage2 import Stage2Settings, Stage2Trainer
from test_adapt_fakes import FakeLayeredGenerator
from tiny_clip import tiny_clip  # noqa: F401  (fixture)


def test_views_are_paired_view_major_and_seeded():
    a = torch.randn(3, 3, 16, 16)
    b = a * 2.0
    va, vb = paired_views(a, b, 4, generator=torch.Generator().manual_seed(0))
    assert va.shape == vb.shape == (12, 3, 16, 16)
    # Same crop and flip for a and b: b's views are exactly twice a's.
    torch.testing.assert_close(vb, va * 2.0)
    # Deterministic for a seeded generator, different for another seed.
    va2, _ = paired_views(a, b, 4, generator=torch.Generator().manual_seed(0))
    va3, _ = paired_views(a, b, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(va, va2) and not torch.equal(va, va3)
    # View-major: rows k*N..(k+1)*N-1 are one view of images 0..N-1 (a constant image stays constant).
    c = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 16, 16).contiguous()
    vc, _ = paired_views(c, c, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(vc.mean(dim=(1, 2, 3)), torch.tensor([0.0, 1.0, 2.0] * 2))


def test_views_pass_gradients():
    a = torch.randn(2, 3, 16, 16, requires_grad=True)
    va, _ = paired_views(a, a.detach(), 3, generator=torch.Generator().manual_seed(0), min_scale=0.5)
    va.square().sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_stage2_step_with_augmented_views(tiny_clip):
    G = FakeLayeredGenerator(n_layers=4)
    torch.manual_seed(0)
    learners = [PromptLearner(G.code_dim, n_ctx=2, ctx_dim=tiny_clip.ctx_dim)]
    s = Stage2Settings(method="ipl", layers=None, augment_views=3, lr=0.01)
    tr = Stage2Trainer(G, [tiny_clip], "a solid shape", "a striped shape", learners, s)
    before = [p.detach().clone() for p in tr.G_t.trainable_parameters()]
    for _ in range(2):
        rec = tr.step()
        assert math.isfinite(rec["dir_0"])
    after = tr.G_t.trainable_parameters()
    assert any(not torch.equal(x, y) for x, y in zip(before, after)), "no parameter moved"
