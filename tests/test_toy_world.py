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
