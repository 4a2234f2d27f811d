"""The toy world's renderer and captions: deterministic, every domain distinct, labels consistent."""
import itertools

import pytest
import torch

from generators.toy.captions import TARGET_TEXTS, ZERO_SHOT_PROMPTS, caption, domain_from_text
from generators.toy.render import (COLOUR_HUES, COLOURS, DEGRADATIONS, DOMAINS, STYLE_DOMAINS, colour_index,
                                   degrade, hue_from_u, render, render_dataset, sample_params)
from generators.toy.source import Z_DIM, scene_from_latent


def test_render_is_deterministic():
    a = render(sample_params(16, torch.Generator().manual_seed(3)), "striped")
    b = render(sample_params(16, torch.Generator().manual_seed(3)), "striped")
    c = render(sample_params(16, torch.Generator().manual_seed(4)), "striped")
    assert a.shape == (16, 3, 64, 64)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.02
    x1, l1 = render_dataset(32, torch.Generator().manual_seed(5))
    x2, l2 = render_dataset(32, torch.Generator().manual_seed(5))
    assert torch.equal(x1, x2) and all(torch.equal(l1[k], l2[k]) for k in l1)
    assert x1.min() >= -1 and x1.max() <= 1


def test_domains_are_distinct_for_the_same_scene():
    p = sample_params(32, torch.Generator().manual_seed(0))
    imgs = {d: render(p, d) for d in STYLE_DOMAINS}
    for a, b in itertools.combinations(STYLE_DOMAINS, 2):
        # Every scene differs between every pair of domains (not just on average).
        per_image = (imgs[a] - imgs[b]).abs().mean((1, 2, 3))
        assert per_image.min() > 0.005, (a, b, per_image.min())
    # Dark: the background flips; the shape's own pixels keep their colour.
    corner = imgs["dark"][:, :, :2, :2].mean()
    assert corner < -0.6 and imgs["solid"][:, :, :2, :2].mean() > 0.6
    # Pastel is lighter and less saturated than solid inside the shape.
    from generators.toy.render import shape_sdf

    inside = (shape_sdf(p) < -1)[:, None].expand(-1, 3, -1, -1)
    sat = lambda x: (x.amax(1) - x.amin(1))[inside[:, 0]].mean()  # noqa: E731
    assert sat(imgs["pastel"]) < 0.6 * sat(imgs["solid"])
    # Outlined: dark pixels appear that solid does not have.
    assert (imgs["outlined"] < -0.7).float().mean() > (imgs["solid"] < -0.7).float().mean() + 0.01


def test_degradations_change_images_and_are_labelled():
    x = render(sample_params(10, torch.Generator().manual_seed(1)), "solid")
    kinds = torch.arange(len(DEGRADATIONS)).repeat(2)
    y = degrade(x, kinds, torch.Generator().manual_seed(2))
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert ((y - x).abs().mean((1, 2, 3)) > 0.01).all()
    blank = y[kinds == DEGRADATIONS.index("blank")]
    assert blank.std((2, 3)).max() < 0.05
    _, labels = render_dataset(400, torch.Generator().manual_seed(0))
    deg = labels["degradation"] >= 0
    assert torch.equal(deg, labels["domain"] == DOMAINS.index("degraded"))
    assert 0.07 < deg.float().mean() < 0.22


def test_colour_names_and_hue_staircase():
    hues = torch.tensor(COLOUR_HUES)
    assert torch.equal(colour_index(hues), torch.arange(len(COLOURS)))
    u = torch.arange(len(COLOURS), dtype=torch.float32) / len(COLOURS)
    assert torch.allclose(hue_from_u(u), hues, atol=1e-3)
    # Smooth: no jump larger than a few degrees between neighbouring u.
    dense = hue_from_u(torch.linspace(0, 0.999, 4000))
    step = (dense[1:] - dense[:-1]).remainder(360)
    assert torch.minimum(step, 360 - step).max() < 5.0


def test_latent_to_scene_map_is_smooth_and_uses_the_label_for_shape():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, Z_DIM, generator=g)
    c = torch.nn.functional.one_hot(torch.arange(64) % 3, 3).float()
    p = scene_from_latent(z, c)
    assert torch.equal(p.shape, torch.arange(64) % 3)
    q = scene_from_latent(z + 1e-3 * torch.randn(64, Z_DIM, generator=g), c)
    for f in ("cx", "cy", "size"):
        assert (getattr(p, f) - getattr(q, f)).abs().max() < 1e-2
    # The mapping network normalises z, so the scene must not depend on |z|.
    r = scene_from_latent(3 * z, c)
    assert torch.allclose(p.hue, r.hue, atol=1e-3) and torch.allclose(p.cx, r.cx, atol=1e-5)


def test_captions_and_target_texts():
    import random

    rng = random.Random(0)
    caps = [caption(d, 0, 1, -1, rng) for d in range(len(STYLE_DOMAINS)) for _ in range(5)]
    assert all(isinstance(c, str) and c for c in caps) and len(set(caps)) > 15
    deg_caps = {caption(DOMAINS.index("degraded"), 0, 0, DEGRADATIONS.index("blurred"), rng) for _ in range(20)}
    assert any("blur" in c for c in deg_caps)
    for domain, text in TARGET_TEXTS.items():
        assert domain_from_text(text) == domain
        assert domain_from_text(domain) == domain
    assert domain_from_text("a solid shape") == "solid"
    assert tuple(ZERO_SHOT_PROMPTS) == DOMAINS
    with pytest.raises(ValueError):
        domain_from_text("a werewolf")


def test_fare_loss_is_zero_at_the_teacher_and_pgd_beats_random_noise():
    # The robust fine-tune's inner maximisation: with the student equal to the teacher and eps = 0 the loss is
    # exactly 0; PGD finds perturbations worse than random ones in the same ball, and a larger ball is worse.
    import copy
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "build_toy_clip.py"
    spec = importlib.util.spec_from_file_location("build_toy_clip", path)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    from generators.toy.clip_model import build_model, normalise

    torch.manual_seed(0)
    model = build_model().eval()
    teacher = copy.deepcopy(model).requires_grad_(False)
    images = render(sample_params(6, torch.Generator().manual_seed(3)), "solid")
    assert build.fare_loss(model, teacher, images, eps=0.0, steps=2).item() == 0.0
    eps = 2 * 4 / 255
    with torch.no_grad():
        target = teacher.encode_image(normalise(images))
        noise = (torch.rand_like(images) * 2 - 1).sign() * eps
        random_loss = (model.encode_image(normalise((images + noise).clamp(-1, 1))) - target).pow(2).sum(-1).mean()
    pgd = build.fare_loss(model, teacher, images, eps=eps, steps=5)
    assert pgd.requires_grad
    assert pgd.item() > 2 * random_loss.item()
    assert build.fare_loss(model, teacher, images, eps=2 * eps, steps=5).item() > pgd.item()


def test_background_step_losses_known_answers():
    # A stand-in CLIP whose image embedding is (100, -mean lightness, red - lightness, green - lightness) and whose
    # text change from the source text to "on a dark background" is +1 on the second axis: darkening must
    # score 0, lightening 2 and every luminance-neutral tint 1 (orthogonal).
    from generators.toy.captions import TARGET_TEXTS
    from generators.toy.clip_model import MEAN, STD, background_step_losses

    class Texts(list):
        def to(self, device):
            return self

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def encode_image(self, x):
            rgb = (x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)).mean((2, 3))
            light = rgb.mean(1, keepdim=True)
            # a large constant first axis makes the unit normalisation nearly a uniform scale
            return torch.cat([100 * torch.ones_like(light), -light, rgb[:, :2] - light], 1)

        def encode_text(self, texts):
            return torch.tensor([[100.0, 1.0 if t == TARGET_TEXTS["dark"] else -1.0, 0.0, 0.0] for t in texts])

    # step 0.02 keeps every moved background inside [0, 1] (no clamping, so tints stay luminance-neutral)
    out = background_step_losses(StandIn(), Texts, n=4, hues=6, step=0.02)
    assert abs(out["darken"]) < 1e-3 and abs(out["lighten"] - 2) < 1e-3, out
    assert all(abs(v - 1) < 1e-3 for v in out["tints"].values()), out["tints"]


def test_render_background_override():
    # A given background colour replaces the domain's grey outside the shape and leaves the shape as it was.
    p = sample_params(5, torch.Generator().manual_seed(4))
    colour = torch.tensor([[0.2, 0.5, 0.9]]).expand(5, 3)
    plain, coloured = render(p, "solid"), render(p, "solid", background=colour)
    corner = (coloured[:, :, 0, 0] + 1) / 2
    assert torch.allclose(corner, colour, atol=1e-6)
    inside = (plain - coloured).abs().amax(1) < 1e-6
    assert inside.float().mean(dim=(1, 2)).min() > 0.02          # the shape's pixels did not change
    # the domain's own style is kept: a pastel shape stays pastel on the given background
    assert torch.allclose((render(p, "pastel", background=colour)[:, :, 0, 0] + 1) / 2, colour, atol=1e-6)
    assert not torch.allclose(render(p, "pastel", background=colour), coloured)
    with pytest.raises(AssertionError):
        render(p, "solid", background=colour[:2])


def test_tint_is_a_luminance_neutral_colour_cast():
    from generators.toy.augment import tint

    x = torch.full((64, 3, 8, 8), 0.5)
    y = tint(x, 0.1, torch.Generator().manual_seed(0))
    shift = (y - x) / 2                                            # [0, 1] units
    assert torch.allclose(shift.mean(1), torch.zeros(64, 8, 8), atol=1e-6)
    assert shift.abs().max() <= 0.1 + 1e-6 and shift.abs().amax((1, 2, 3)).max() > 0.08
    assert (shift.std((2, 3)) < 1e-6).all()                        # one cast per image
