"""The shipped toy assets load through the project's own paths and meet their targets on small fixed samples."""
import pytest
import torch

from generators.toy.render import COLOURS, DOMAINS, SHAPES, STYLE_DOMAINS, degrade, render, sample_params

torch.set_num_threads(min(2, torch.get_num_threads()))


def _fresh_renders(per_domain: int, seed: int):
    """Renders of every style domain plus degraded ones, labelled by domain (never seen in training)."""
    g = torch.Generator().manual_seed(seed)
    p = sample_params(per_domain, g)
    images = [render(p, d) for d in STYLE_DOMAINS]
    kinds = torch.arange(per_domain) % 5
    images.append(degrade(render(p, "solid"), kinds, g))
    labels = torch.arange(len(DOMAINS)).repeat_interleave(per_domain)
    return torch.cat(images), labels, p


def test_judge_classifies_fresh_renders():
    from generators.toy.judge import load_judge

    judge = load_judge()
    images, labels, p = _fresh_renders(24, seed=777)
    pred = judge.classify(images)
    assert (pred["domain"] == labels).float().mean() >= 0.95
    clean = labels < DOMAINS.index("degraded")
    n = clean.sum()
    assert (pred["shape"][clean] == p.shape.repeat(len(STYLE_DOMAINS))).float().mean() >= 0.95, n
    assert (pred["colour"][clean] == p.colour.repeat(len(STYLE_DOMAINS))).float().mean() >= 0.9


def test_judge_report_known_answers():
    from generators.toy.judge import judge_report

    g = torch.Generator().manual_seed(5)
    p = sample_params(96, g)
    solid = render(p, "solid")
    dark = render(p, "dark")
    r = judge_report(solid, dark, "on a dark background")
    assert r["target_domain"] == "dark" and r["n"] == 96
    assert r["target_rate"] >= 0.95 and r["content_kept"] >= 0.9
    assert 0.9 <= r["diversity_kept"] <= 1.1
    # A washed-out "adaptation": nothing reaches the target, the judge calls it degraded.
    faded = degrade(solid, torch.full((96,), 1), g)
    r = judge_report(solid, faded, "dark")
    assert r["target_rate"] <= 0.05 and r["degraded_rate"] >= 0.8  # measured 0.84 (faded is the hardest kind)
    # Collapse to one image: diversity gone.
    r = judge_report(solid, dark[:1].expand(96, -1, -1, -1).contiguous(), "dark")
    assert r["diversity_kept"] < 0.2


def test_toy_clip_zero_shot_domain_accuracy():
    from ipl.clip import load_clip

    from generators.toy.judge import clip_zero_shot_domain

    clip = load_clip("toy")
    images, labels, _ = _fresh_renders(20, seed=4242)
    pred = clip_zero_shot_domain(clip, images)
    acc = (pred == labels).float().mean().item()
    assert acc >= 0.95, acc


def _generator_judged(n: int = 96, seed: int = 99) -> dict:
    """Judged shape/colour/domain rates of the shipped generator on fixed latents."""
    import generators
    from generators.toy.judge import load_judge
    from generators.toy.source import GENERATOR_PATH, scene_from_latent

    G = generators.load(GENERATOR_PATH)
    assert (G.c_dim, G.img_resolution) == (3, 64)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=g)
    c = torch.nn.functional.one_hot(torch.arange(n) % 3, 3).float()
    with torch.no_grad():
        images = G(z, c, noise_mode="const")
    pred = load_judge().classify(images)
    p = scene_from_latent(z, c)
    return {"shape": (pred["shape"] == p.shape).float().mean().item(),
            "colour": (pred["colour"] == p.colour).float().mean().item(),
            "both": ((pred["shape"] == p.shape) & (pred["colour"] == p.colour)).float().mean().item(),
            "solid": (pred["domain"] == DOMAINS.index("solid")).float().mean().item()}


def test_toy_generator_renders_intended_shape_and_colour_mostly():
    # Floor of what the shipped generator reaches (measured on 600 samples: shape 0.87, colour 0.82,
    # both 0.72, judged solid 0.74); chance would be 1/3, 1/6, 1/18.
    r = _generator_judged()
    assert r["shape"] >= 0.75 and r["colour"] >= 0.7 and r["both"] >= 0.6 and r["solid"] >= 0.6, r


@pytest.mark.xfail(strict=True, reason="issue 8 target (>= 0.9 shape and colour) not reached yet: the shipped "
                                       "generator had only ~55 CPU-minutes of training; rebuild it longer")
def test_toy_generator_meets_issue_target():
    r = _generator_judged()
    assert r["both"] >= 0.9 and r["solid"] >= 0.9, r
