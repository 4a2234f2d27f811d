"""The toy world's renderer and captions: deterministic, every domain distinct, labels consistent."""
import importlib
import itertools
import random
import sys
from pathlib import Path

import pytest
import torch

from ipl.generators.toy.captions import TARGET_TEXTS, ZERO_SHOT_PROMPTS, caption, domain_from_text
from ipl.generators.toy.render import (COLOUR_HUES, COLOURS, DEGRADATIONS, DOMAINS, STYLE_DOMAINS, colour_index,
                                   degrade, hue_from_u, render, render_dataset, sample_params)
from ipl.generators.toy.source import Z_DIM, scene_from_latent


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
    from ipl.generators.toy.render import shape_sdf

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


# The toy world's research tooling (builders, experiments, CLIP analysis): not installed, run as
# `python scripts/toy/NAME.py`, which puts that folder on sys.path; the scripts import analysis.py and augment.py
# from it by name, so the tests put it there too.
TOY_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "toy"


def _toy_path() -> None:
    if str(TOY_SCRIPTS) not in sys.path:
        sys.path.insert(0, str(TOY_SCRIPTS))


def _toy(name: str):
    """scripts/toy/NAME.py imported as the scripts import it (`analysis`, `augment`)."""
    _toy_path()
    return importlib.import_module(name)


def _script(name: str = "build_toy_clip"):
    """scripts/toy/NAME.py as a fresh module."""
    import importlib.util

    _toy_path()
    path = TOY_SCRIPTS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def test_fare_loss_is_zero_at_the_teacher_and_pgd_beats_random_noise():
    # The robust fine-tune's inner maximisation: with the student equal to the teacher and eps = 0 the loss is
    # exactly 0; PGD finds perturbations worse than random ones in the same ball, and a larger ball is worse.
    import copy

    build = _script()
    from ipl.generators.toy.clip_model import build_model, normalise

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


def _stand_in_clip(dark_axis: int):
    """A stand-in CLIP with embedding (100, -lightness, red - lightness, green - lightness) of the mean colour,
    whose text change from the source text to "on a dark background" is +1 on `dark_axis`, 0 elsewhere."""
    from ipl.generators.toy.captions import TARGET_TEXTS
    from ipl.generators.toy.clip_model import MEAN, STD

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def encode_image(self, x):
            rgb = (x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)).mean((2, 3))
            light = rgb.mean(1, keepdim=True)
            return torch.cat([100 * torch.ones_like(light), -light, rgb[:, :2] - light], 1)

        def encode_text(self, texts):
            out = torch.zeros(len(texts), 4)
            out[:, 0] = 100.0
            out[:, dark_axis] = torch.tensor([1.0 if t == TARGET_TEXTS["dark"] else -1.0 for t in texts])
            return out

    class Texts(list):
        def to(self, device):
            return self

    return StandIn(), Texts


def test_background_step_losses_known_answers():
    # With the stand-in CLIP (text change = darker), darkening must score 0, lightening 2 and every luminance-neutral tint 1
    # (orthogonal).
    background_step_losses = _toy("analysis").background_step_losses

    model, texts = _stand_in_clip(dark_axis=1)
    # step 0.02 keeps every moved background inside [0, 1] (no clamping, so tints stay luminance-neutral)
    out = background_step_losses(model, texts, n=4, hues=6, step=0.02)
    assert abs(out["darken"]) < 1e-3 and abs(out["lighten"] - 2) < 1e-3, out
    assert all(abs(v - 1) < 1e-3 for v in out["tints"].values()), out["tints"]


def test_background_descent_known_answers():
    # Where the text change is "darker", descent on the background colour darkens it without tinting it; where
    # the text change is "redder", it tints it red at about the same lightness.
    background_descent = _toy("analysis").background_descent

    model, texts = _stand_in_clip(dark_axis=1)
    # from 0.86-0.97 by at most 0.01 a step; the stand-in's unit-normalised changes are ~100x smaller than a
    # CLIP's (its constant first axis), so its linear zone is too (min_delta 1e-3 rather than 0.05)
    out = background_descent(model, texts, n=4, steps=40, lr=0.01, min_delta=1e-3)
    assert 0.3 < out["lightness"] < 0.7 and out["chroma"] < 0.02 and out["loss"] < 0.01, out
    model, texts = _stand_in_clip(dark_axis=2)
    out = background_descent(model, texts, n=4, steps=40, lr=0.01, min_delta=1e-3)
    assert out["chroma"] > 0.2 and 0.8 < out["lightness"] < 1.0 and out["loss"] < 0.1, out


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
    tint = _toy("augment").tint

    x = torch.full((64, 3, 8, 8), 0.5)
    y = tint(x, 0.1, torch.Generator().manual_seed(0))
    shift = (y - x) / 2                                            # [0, 1] units
    assert torch.allclose(shift.mean(1), torch.zeros(64, 8, 8), atol=1e-6)
    assert shift.abs().max() <= 0.1 + 1e-6 and shift.abs().amax((1, 2, 3)).max() > 0.08
    assert (shift.std((2, 3)) < 1e-6).all()                        # one cast per image


def test_soft_grey_captions_follow_lightness():
    # A mid-grey background is captioned `dark` with probability (0.86 - level) / 0.71: never at the light
    # range, always at the dark range, about half way between.
    import random

    build = _script()
    rng = random.Random(0)

    def dark_share(level: float, n: int = 400) -> float:
        caps = [build.grey_caption(level, 0, 0, rng, soft=True) for _ in range(n)]
        return sum(any(w in c for w in ("dark", "black", "night")) for c in caps) / n

    assert dark_share(0.86) == 0.0 and dark_share(0.15) == 1.0
    assert 0.4 < dark_share(0.505) < 0.6
    assert "grey" in build.grey_caption(0.5, 0, 0, rng)          # the binned captions stay the default


def _optimise(model, loss_fn, steps: int = 12, lr: float = 1e-3) -> list[float]:
    """Adam steps on the model's trainable weights minimising loss_fn(); the loss before each step."""
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_alignment_loss_falls_and_is_bounded():
    # The directional alignment loss is a mean of squared cosine errors (in [0, 4]) and a few optimiser steps
    # on the toy CLIP architecture lower it on a fixed batch.
    build = _script()
    from ipl.generators.toy.clip_model import build_model, tokenizer

    torch.manual_seed(0)
    model, tok = build_model(), tokenizer()
    variants = build.scene_variants(3, torch.Generator().manual_seed(5))
    assert variants.shape[:2] == (3, 7)
    losses = _optimise(model, lambda: build.alignment_loss(model, tok, variants, torch.Generator().manual_seed(1),
                                                            random.Random(2)))
    assert all(0.0 <= v <= 4.0 for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses


def test_oracle_reads_background_darkness_only():
    # The stage-2 diagnostic's stand-in for CLIP: a darker background is exactly the "dark" text direction, a
    # change of the shape alone is invisible to it.
    from ipl.method.losses import directional_loss

    oracle = _script("toy_oracle_adapt")
    p = sample_params(4, torch.Generator().manual_seed(2))
    light = render(p, "solid", background=torch.full((4, 3), 0.9))
    darker = render(p, "solid", background=torch.full((4, 3), 0.7))
    texts = oracle.oracle_text_features(["a solid shape", "on a dark background"])
    loss = directional_loss(oracle.oracle_image_features(light), oracle.oracle_image_features(darker),
                            texts[:1], texts[1:])
    assert loss.item() < 0.01
    same_frame = oracle.oracle_image_features(render(p, "pastel", background=torch.full((4, 3), 0.9)))
    assert torch.allclose(same_frame, oracle.oracle_image_features(light), atol=1e-6)


def test_gradient_alignment_known_answers_and_loss_falls():
    # Stand-in CLIP whose embedding reads the mean colour: the image gradient of "darker" is a uniform darkening
    # of every pixel, so its cosine with the change to `dark` (the background darkened, the shape kept) is
    # -sum(change) / (sqrt(N) |change|); every other target text has no text change, hence no gradient (0).
    gradient_alignment = _toy("analysis").gradient_alignment

    model, texts = _stand_in_clip(dark_axis=1)
    out = gradient_alignment(model, texts, n=4)
    p = sample_params(4, torch.Generator().manual_seed(0))
    change = (render(p, "dark") - render(p, "solid")).flatten(1)
    expected = (-change.sum(1) / (change.shape[1] ** 0.5 * change.norm(dim=1))).mean().item()
    assert out["dark"] == pytest.approx(expected, abs=1e-4) and 0.5 < expected < 1.0
    assert all(out[d] == 0 for d in ("pastel", "outlined", "striped", "dotted")), out

    # The training loss that shapes it (scripts/toy/build_toy_clip.py --grad-align-weight): 1 - cos in [0, 2],
    # lowered by a few optimiser steps of the first toy CLIP's ViT on a fixed batch (double backward).
    build = _script()
    from ipl.generators.toy.clip_model import build_model, tokenizer

    torch.manual_seed(0)
    model, tok = build_model(build.TOY_VIT_CONFIG), tokenizer()
    model.token_embedding.requires_grad_(False)
    variants = build.scene_variants(3, torch.Generator().manual_seed(5))
    losses = _optimise(model, lambda: build.gradient_alignment_loss(model, tok, variants,
                                                                     torch.Generator().manual_seed(1),
                                                                     random.Random(2)))
    assert all(0.0 <= v <= 2.0 for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    # Off the renders (noisy images, blends on the way to the domain): same bounds, a different value.
    off = build.gradient_alignment_loss(model, tok, variants, torch.Generator().manual_seed(1), random.Random(2),
                                        noise=0.3, path=0.7).item()
    assert 0.0 <= off <= 2.0 and abs(off - losses[-1]) > 1e-4


def test_build_toy_clip_with_a_resnet_config_loads_through_the_clip_path(tmp_path):
    # --config swaps the image tower (a vision_cfg with a list of layers is open_clip's ModifiedResNet, as in
    # OpenAI's RN CLIPs); the written clip_config.json + clip.safetensors load through `--clip CONFIG:WEIGHTS`
    # and give the same image features as the trained model.
    import json

    from open_clip.modified_resnet import ModifiedResNet
    from safetensors.torch import load_file

    from ipl.generators.toy.clip_model import TOY_CLIP_CONFIG, build_model, normalise
    from ipl.method.clip import load_clip

    config = dict(TOY_CLIP_CONFIG, vision_cfg={"image_size": 64, "layers": [1, 1, 1, 1], "width": 8,
                                              "head_width": 32})
    (tmp_path / "rn.json").write_text(json.dumps(config))
    out = tmp_path / "clip"
    build = _script()
    build.main(["--config", str(tmp_path / "rn.json"), "--max-steps", "2", "--batch", "8", "--bank", "1024",
                "--interp-weight", "0", "--out", str(out)])
    assert json.loads((out / "clip_config.json").read_text()) == config
    assert json.loads((out / "clip_build.json").read_text())["steps"] == 2
    clip = load_clip(f"{out / 'clip_config.json'}:{out / 'clip.safetensors'}")
    assert isinstance(clip.model.visual, ModifiedResNet)
    trained = build_model(config).eval()
    trained.load_state_dict(load_file(str(out / "clip.safetensors")))
    images = render(sample_params(4, torch.Generator().manual_seed(0)), "solid")
    with torch.no_grad():
        assert torch.allclose(clip.encode_images(images), trained.encode_image(normalise(images)), atol=1e-5)
    # --init continues that model with its own config (the clip_config.json next to the weights).
    build.main(["--init", str(out / "clip.safetensors"), "--max-steps", "1", "--batch", "8", "--bank", "1024",
                "--interp-weight", "0", "--out", str(tmp_path / "more")])
    assert json.loads((tmp_path / "more" / "clip_config.json").read_text()) == config
    with pytest.raises(SystemExit):
        build.main(["--config", str(tmp_path / "missing.json"), "--out", str(out)])


def test_mined_negatives_are_captioned_by_background_lightness_and_train_the_clip(tmp_path):
    # scripts/toy/mine_toy_negatives.py: the border frame's lightness decides `dark` vs `solid` (linear between the
    # domains' ranges, as --soft-grey), the scene comes from the latent; build_toy_clip --extra-bank mixes it in.
    import json

    from click.testing import CliRunner

    from ipl.generators.toy.render import SHAPES
    from ipl.commands.cli import cli

    mine = _script("mine_toy_negatives")
    p = sample_params(6, torch.Generator().manual_seed(0))
    mask = mine.background_mask(p)
    assert mask.shape == (6, 64, 64) and 0.5 < mask.float().mean() < 0.98
    assert torch.allclose(mine.background_lightness(render(p, "solid"), mask), 0.86 + 0.11 * p.bg, atol=1e-5)
    assert torch.allclose(mine.background_lightness(render(p, "dark"), mask), 0.03 + 0.12 * p.bg, atol=1e-5)
    # A darker shape does not move it (the shape and a 2-px margin are left out); a darker background does.
    shaded = render(p, "solid") - 0.5 * (~mask)[:, None].float()
    assert torch.allclose(mine.background_lightness(shaded, mask), 0.86 + 0.11 * p.bg, atol=1e-5)
    rng = random.Random(0)
    assert {mine.lightness_domain(0.9, rng) for _ in range(50)} == {"solid"}
    assert {mine.lightness_domain(0.1, rng) for _ in range(50)} == {"dark"}
    half = sum(mine.lightness_domain(0.505, rng) == "dark" for _ in range(2000)) / 2000
    assert abs(half - 0.5) < 0.05, half

    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["adapt", "--source", "toy", "--target", "on a dark background", "--method", "nada",
                                 "--iters", "1", "--out", str(run), "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    bank = mine.main([str(run), "--n", "8", "--out", str(tmp_path / "neg.pt")])
    assert bank["images"].shape == (8, 3, 64, 64) and bank["images"].dtype == torch.uint8
    # One step from the source: light backgrounds, so every caption is a solid scene with a shape and colour.
    assert len(bank["captions"]) == 8
    assert not any(w in t for t in bank["captions"] for w in ("dark", "black", "night")), bank["captions"]
    assert sum(any(s in t for s in SHAPES) for t in bank["captions"]) >= 4, bank["captions"]
    again = mine.main([str(run), "--n", "8", "--append", "--out", str(tmp_path / "neg.pt")])
    assert len(again["captions"]) == 16 and again["runs"] == [str(run), str(run)]
    # Bad input is refused before anything is written: a folder that is not a run, a file that is not a bank.
    (tmp_path / "not-a-bank.pt").write_bytes(b"junk")
    for argv in ([str(tmp_path), "--out", str(tmp_path / "x.pt")],
                 [str(run), "--append", "--out", str(tmp_path / "not-a-bank.pt")]):
        with pytest.raises(SystemExit):
            mine.main(argv)
    assert not (tmp_path / "x.pt").exists() and (tmp_path / "not-a-bank.pt").read_bytes() == b"junk"

    build = _script()
    build.main(["--extra-bank", str(tmp_path / "neg.pt"), "--extra-batch", "4", "--max-steps", "1", "--batch", "8",
                "--bank", "1024", "--interp-weight", "0", "--out", str(tmp_path / "clip")])
    info = json.loads((tmp_path / "clip" / "clip_build.json").read_text())
    assert info["extra_bank"] == str(tmp_path / "neg.pt") and info["steps"] == 1
    torch.save({"images": torch.zeros(2, 3, 64, 64)}, tmp_path / "bad.pt")
    with pytest.raises(SystemExit):
        build.main(["--extra-bank", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "clip")])


def test_content_variants_change_hue_or_shape_only():
    analysis = _toy("analysis")
    CONTENT_HUE_SHIFTS, content_variants = analysis.CONTENT_HUE_SHIFTS, analysis.content_variants

    p = sample_params(5, torch.Generator().manual_seed(4))
    out = content_variants(p)
    assert len(out) == len(CONTENT_HUE_SHIFTS) + 2
    for q, dh in zip(out, CONTENT_HUE_SHIFTS):
        assert torch.allclose((q.hue - p.hue) % 360, torch.full_like(p.hue, dh % 360), atol=1e-4)
        assert torch.equal(q.shape, p.shape) and torch.equal(q.cx, p.cx) and torch.equal(q.size, p.size)
    for q in out[len(CONTENT_HUE_SHIFTS):]:
        assert (q.shape != p.shape).all() and torch.equal(q.hue, p.hue) and torch.equal(q.cy, p.cy)


def test_content_selectivity_is_zero_for_a_clip_blind_to_content_and_the_loss_falls():
    # A stand-in CLIP that sees only the top-left 2x2 corner (always background: shapes keep >= 2.5 px from the
    # border and the corner is ~7 px from any shape) cannot tell a faithful change from a recoloured or reshaped
    # one: every lead is exactly 0, so it never wins.
    from ipl.generators.toy.clip_model import MEAN, STD

    content_selectivity = _toy("analysis").content_selectivity

    class CornerClip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def encode_image(self, x):
            rgb = (x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1))[:, :, :2, :2]
            return torch.cat([100 * torch.ones(len(x), 1), rgb.mean((2, 3))], 1)

        def encode_text(self, texts):
            return torch.stack([torch.tensor([100.0, float(len(t)), float(t.count("a")), 1.0]) for t in texts])

    class Texts(list):
        def to(self, device):
            return self

    out = content_selectivity(CornerClip(), Texts, n=6)
    assert set(out) == {*TARGET_TEXTS, "mean"}
    assert all(v == {"wins": 0.0, "margin": 0.0} for v in out.values()), out

    # The training loss (scripts/toy/build_toy_clip.py --content-weight): a hinge in [0, margin + 2], lowered by a
    # few optimiser steps of the toy CLIP architecture on a fixed draw.
    build = _script()
    from ipl.generators.toy.clip_model import build_model, tokenizer

    torch.manual_seed(0)
    model, tok = build_model(), tokenizer()
    model.token_embedding.requires_grad_(False)
    losses = _optimise(model, lambda: build.content_loss(model, tok, 4, torch.Generator().manual_seed(1),
                                                         random.Random(2), margin=0.5))
    assert all(0.0 <= v <= 2.5 for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses
