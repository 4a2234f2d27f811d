"""Known answers for the IPL / NADA losses, and the vanishing-difference pitfall (DESIGN section 9)."""
import math

import pytest
import torch

from ipl.method.losses import (contrastive_loss, directional_loss, domain_regularizer, global_clip_loss, length_loss,
                        safe_direction, weighted_sum)


def test_contrastive_known_answers():
    B, D = 4, 8
    eye = torch.eye(B, D)
    # Perfect matches with a large scale: loss -> 0.  Identical features everywhere: loss = log(B).
    assert contrastive_loss(eye * 3, eye * 0.5, logit_scale=100.0).item() == pytest.approx(0.0, abs=1e-6)
    same = torch.ones(B, D)
    assert contrastive_loss(same, same, 100.0).item() == pytest.approx(math.log(B), rel=1e-6)
    # Two images, cos = 1 on the diagonal and 0 off it, scale s: CE = log(1 + e^-s) both ways.
    s = 2.0
    assert contrastive_loss(torch.eye(2, 3), torch.eye(2, 3), s).item() == pytest.approx(math.log1p(math.exp(-s)))
    # Symmetric: swapping images and texts gives the same loss.
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    assert contrastive_loss(a, b, 10.0).item() == pytest.approx(contrastive_loss(b, a, 10.0).item(), rel=1e-6)


def test_domain_regularizer_known_answers():
    t = torch.tensor([1.0, 0.0, 0.0])
    p = torch.tensor([[2.0, 0, 0], [0, 5.0, 0], [-1.0, 0, 0]])
    assert domain_regularizer(p, t).item() == pytest.approx((0 + 1 + 2) / 3)
    assert domain_regularizer(p[:1], t[None]).item() == pytest.approx(0.0)


def test_directional_known_answers():
    src = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    tgt = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 4.0]])
    # Text moves x -> y: image 0 moves the same way (loss 0), image 1 moves x -> z (cos 1/2).
    s_txt, t_txt = torch.tensor([[3.0, 0, 0]]), torch.tensor([[0, 2.0, 0]])
    assert directional_loss(src, tgt, s_txt, t_txt).item() == pytest.approx((0 + 0.5) / 2, abs=1e-6)
    # Per-image text directions (IPL) equal to each image's own move: loss 0; reversed: loss 2.
    assert directional_loss(src, tgt, src, tgt).item() == pytest.approx(0.0, abs=1e-6)
    assert directional_loss(src, tgt, tgt, src).item() == pytest.approx(2.0, abs=1e-6)
    # A shared [1, D] direction equals the same direction repeated per image; [D] works too.
    a = directional_loss(src, tgt, s_txt, t_txt)
    b = directional_loss(src, tgt, s_txt.expand(2, 3), t_txt.expand(2, 3))
    c = directional_loss(src, tgt, s_txt[0], t_txt[0])
    assert a.item() == pytest.approx(b.item()) and a.item() == pytest.approx(c.item())


def test_length_known_answers():
    # Unit features; the text moves x -> y, |dT| = sqrt(2). ratio 0.1: the goal is a projection of 0.1 sqrt(2).
    s_txt, t_txt = torch.tensor([[1.0, 0, 0]]), torch.tensor([[0, 1.0, 0]])
    goal = 0.1 * math.sqrt(2)
    src = torch.tensor([[0.0, 0, 1.0]]).expand(4, 3)
    # Image features rotated from z toward the text direction by an angle a (projection sin a): no change,
    # half the goal, the goal, twice the goal.
    tgt = torch.stack([torch.tensor([0.0, 0, 1.0])] + [
        torch.cat([torch.tensor([-1.0, 1.0]) / math.sqrt(2) * math.sin(a), torch.tensor([math.cos(a)])])
        for a in (math.asin(goal / 2), math.asin(goal), math.asin(2 * goal))])
    per = [length_loss(src[:1], tgt[i:i + 1], s_txt, t_txt, ratio=0.1).item() for i in range(4)]
    assert per == pytest.approx([1.0, 0.5, 0.0, 0.0], abs=1e-5)  # a hinge: no pull once the goal is reached
    assert length_loss(src, tgt, s_txt, t_txt, ratio=0.1).item() == pytest.approx(1.5 / 4, abs=1e-5)
    # A change orthogonal to the text direction does not count; a backward one costs more than none.
    assert length_loss(src[:1], torch.tensor([[0.3, 0.3, 1.0]]), s_txt, t_txt, 0.1).item() == pytest.approx(1.0)
    assert length_loss(src[:1], torch.tensor([[goal, -goal, 1.0]]), s_txt, t_txt, 0.1).item() > 1.5
    # Per-image text directions (IPL) give the same as the shared one when they are equal.
    assert length_loss(src, tgt, s_txt.expand(4, 3), t_txt.expand(4, 3), 0.1).item() == pytest.approx(
        length_loss(src, tgt, s_txt, t_txt, 0.1).item())
    # A reference text change sets the goal's length; the direction stays the text change's own. Here the
    # reference x -> -x is sqrt(2) times longer (|dT_ref| = 2), so the change reaching the old goal is at 1/sqrt(2).
    ref = (torch.tensor([[1.0, 0, 0]]), torch.tensor([[-1.0, 0, 0]]))
    got = [length_loss(src[:1], tgt[i:i + 1], s_txt, t_txt, 0.1, reference=ref).item() for i in range(4)]
    assert got == pytest.approx([1.0, 1 - 0.5 / math.sqrt(2), 1 - 1 / math.sqrt(2), 0.0], abs=1e-5)
    # The reference being the text change itself changes nothing; its length alone counts, not its direction.
    assert length_loss(src, tgt, s_txt, t_txt, 0.1, reference=(s_txt, t_txt)).item() == pytest.approx(
        length_loss(src, tgt, s_txt, t_txt, 0.1).item())
    turned = (torch.tensor([[0, 0, 1.0]]), torch.tensor([[1.0, 0, 0]]))  # as long as dT, orthogonal to it
    assert length_loss(src, tgt, s_txt, t_txt, 0.1, reference=turned).item() == pytest.approx(
        length_loss(src, tgt, s_txt, t_txt, 0.1).item())


def test_directional_finite_when_images_equal():
    # First stage-2 step: G_t == G_s, so the image difference is exactly zero.
    torch.manual_seed(0)
    src = torch.randn(4, 16) * 10  # unnormalised CLIP-like features
    tgt = src.clone().requires_grad_(True)
    s_txt, t_txt = torch.randn(4, 16), torch.randn(4, 16)
    loss = directional_loss(src, tgt, s_txt, t_txt)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(1.0)
    loss.backward()
    g = tgt.grad
    assert torch.isfinite(g).all()
    # Bounded by 1/min_image_delta / |feature| / B, and not zero: the first step still moves G_t.
    bound = 1e3 / src.norm(dim=-1).min().item() / 4
    assert 0 < g.norm(dim=-1).max().item() <= bound * 1.01
    # And the gradient points the right way: one small step along -grad lowers the loss.
    with torch.no_grad():
        step = tgt - 1e-3 * g / g.norm()
    assert directional_loss(src, step, s_txt, t_txt).item() < 1.0
    # Beyond the small floor the loss is the plain cosine formula.
    tgt2 = src + torch.randn(4, 16) * 3
    ni = lambda x: x / x.norm(dim=-1, keepdim=True)
    di, dt = ni(ni(tgt2) - ni(src)), ni(ni(t_txt) - ni(s_txt))
    assert directional_loss(src, tgt2, s_txt, t_txt).item() == pytest.approx((1 - (di * dt).sum(-1)).mean().item(),
                                                                           rel=1e-5)


def test_safe_direction_is_continuous_and_unit_above_floor():
    v = torch.tensor([[3.0, 4.0]])
    torch.testing.assert_close(safe_direction(v, 1e-3), v / 5)
    torch.testing.assert_close(safe_direction(v * 1e-6, 1e-3), v * 1e-6 / 1e-3)
    assert safe_direction(torch.zeros(1, 2), 1e-3).abs().max() == 0


def test_global_clip_loss_and_weighted_sum():
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert global_clip_loss(img, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.5)
    assert global_clip_loss(img, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(1 - math.sqrt(0.5))
    assert weighted_sum([torch.tensor(1.0), torch.tensor(3.0)], [0.5, 2.0]).item() == pytest.approx(6.5)
