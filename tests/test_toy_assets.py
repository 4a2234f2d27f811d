"""The shipped toy assets load through the project's own paths and meet their targets on small fixed samples."""
from pathlib import Path

import pytest
import torch

from ipl.generators.toy.render import COLOURS, DOMAINS, SHAPES, STYLE_DOMAINS, degrade, render, sample_params

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
    from ipl.generators.toy.judge import load_judge

    judge = load_judge()
    images, labels, p = _fresh_renders(24, seed=777)
    pred = judge.classify(images)
    assert (pred["domain"] == labels).float().mean() >= 0.95
    clean = labels < DOMAINS.index("degraded")
    n = clean.sum()
    assert (pred["shape"][clean] == p.shape.repeat(len(STYLE_DOMAINS))).float().mean() >= 0.95, n
    assert (pred["colour"][clean] == p.colour.repeat(len(STYLE_DOMAINS))).float().mean() >= 0.9


def test_judge_report_known_answers():
    from ipl.generators.toy.judge import judge_report

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
    from ipl.method.clip import load_clip

    from ipl.generators.toy.judge import clip_zero_shot_domain

    clip = load_clip("toy")
    images, labels, _ = _fresh_renders(20, seed=4242)
    pred = clip_zero_shot_domain(clip, images)
    acc = (pred == labels).float().mean().item()
    assert acc >= 0.95, acc


def test_toy_clip_follows_gradual_changes():
    # The shipped toy CLIP must tell a generator which way to go from its first, small steps: the image change
    # of a 30% blend from solid toward each domain points along that domain's text direction (loss < 1), and the
    # full change does so clearly. (The first toy CLIP gave 0.99 and, at a 10% blend, 1.22 for `dark`:
    # backwards; see scripts/toy/build_toy_clip.py, interpolation loss.)
    from test_toy_world import _toy

    from ipl.generators.toy.clip_model import load_toy_clip

    path_losses = _toy("analysis").path_losses

    model, tok = load_toy_clip()
    paths = path_losses(model, tok, n=32)
    for domain, row in paths.items():
        assert row["t=1.0"] < 0.5, (domain, row)
        assert row["t=0.3"] < 0.95 and row["t=0.1"] < 1.0, (domain, row)


def _generator_judged(n: int = 96, seed: int = 99) -> dict:
    """Judged shape/colour/domain rates of the shipped generator on fixed latents."""
    from ipl import generators
    from ipl.generators.toy.judge import load_judge
    from ipl.generators.toy.source import GENERATOR_PATH, scene_from_latent

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


def test_toy_clip_diagnostics_match_the_record():
    # delta_ratio (the length term's ratio, also the registry's toy default), the image-gradient alignment and
    # the content selectivity (scripts/toy/analysis.py), recomputed on the shipped CLIP, equal what
    # assets/toy/clip_build.json records.
    import json

    from test_toy_world import _toy

    from ipl.generators.toy.clip_model import load_toy_clip
    from ipl.registry import run_defaults_for

    analysis = _toy("analysis")
    content_selectivity, delta_ratio = analysis.content_selectivity, analysis.delta_ratio
    gradient_alignment = analysis.gradient_alignment
    records = Path(__file__).resolve().parents[1] / "assets" / "toy"   # build records (not installed)
    record = json.loads((records / "clip_build.json").read_text())["measured_after_build"]
    model, tok = load_toy_clip()
    assert delta_ratio(model, tok) == pytest.approx(record["delta_ratio"], abs=2e-3)
    assert gradient_alignment(model, tok) == pytest.approx(record["gradient_alignment"], abs=2e-3)
    assert run_defaults_for("toy")["length_ratio"] == pytest.approx(record["delta_ratio"]["mean"], abs=1e-3)
    # Every domain's image change has a positive projection on its text change. (The first toy CLIP, a ViT,
    # had a modality gap, ratios 0.08-0.10; this ResNet one a small one, 0.60-0.86.)
    assert all(0.3 < v < 2.0 for v in record["delta_ratio"].values()), record["delta_ratio"]
    # The directional loss prefers a scene keeping its colour and shape (round 5's CLIP: wins 0.88, margin 0.05).
    selectivity = content_selectivity(model, tok)
    assert set(selectivity) == set(record["content_selectivity"])
    for domain, row in selectivity.items():
        assert row == pytest.approx(record["content_selectivity"][domain], abs=2e-3), domain
    assert selectivity["mean"]["wins"] >= 0.9 and selectivity["mean"]["margin"] >= 0.1, selectivity


def test_toy_generator_meets_issue_target():
    # Issue 8: the judge finds the intended shape and colour in >= 90% of samples, and they look like `solid`
    # renders (measured on 600 samples at build time: shape 1.00, colour 0.92, both 0.92, judged solid 1.00;
    # chance would be 1/3, 1/6, 1/18).
    r = _generator_judged()
    assert r["both"] >= 0.9 and r["solid"] >= 0.95, r


def test_toy_adapt_and_eval_through_the_cli(tmp_path):
    # The README's first command at a reduced iteration count: a complete run folder, then the judge's numbers.
    import json

    from click.testing import CliRunner

    from ipl.commands.cli import cli

    out = tmp_path / "toy-dark"
    r = CliRunner().invoke(cli, ["adapt", "--source", "toy", "--target", "on a dark background", "--out", str(out),
                                 "--iters-prompt", "4", "--batch-prompt", "4", "--iters", "4", "--device", "cpu",
                                 "--quiet"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == "complete" and config["settings"]["clip"] == ["toy"]
    assert config["resolved"]["source_text"] == "a solid shape"
    for name in ("generator.safetensors", "checkpoint.pt", "log.jsonl", "samples/final.png", "prompts"):
        assert (out / name).exists(), name
    r = CliRunner().invoke(cli, ["eval", str(out), "--metrics", "judge", "--n", "64", "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    judge = json.loads((out / "eval.json").read_text())["columns"][0]["details"]["judge"]
    assert judge["n"] == 64 and judge["target_domain"] == "dark"
    # Four small steps from a sharp source: the content survives and nothing is judged broken.
    assert judge["content_kept"] >= 0.9 and judge["diversity_kept"] >= 0.9 and judge["degraded_rate"] <= 0.05, judge
    assert 0.0 <= judge["target_rate"] <= 1.0 and 0.0 <= judge["clip_judge_agreement"] <= 1.0
    # scripts/toy/toy_direction_check.py on the same run (CLIP side, no judge): the faithful change toward `dark`
    # points along NADA's direction and along IPL's per-image ones (cos ~0.9 with the shipped CLIP; a sign or
    # pairing error gives <= 0), and after 4 prompt iterations IPL's directions are still close to NADA's.
    from test_toy_world import _script

    report = _script("toy_direction_check").main([str(out), "--n", "16", "--out", str(tmp_path / "dir.json")])
    assert report == json.loads((tmp_path / "dir.json").read_text())
    assert report["target_domain"] == "dark" and set(report) >= {"nada", "ipl"}
    for name in ("nada", "ipl"):
        assert 0.0 <= report[name]["wins"] <= 1.0 and report[name]["cos_faithful"] > 0.5, report
    assert report["ipl"]["cos_with_nada"] > 0.8 and 0.0 <= report["ipl"]["spread"] < 0.5, report
    # The run used the toy defaults' length term: toward `dark` the faithful change goes past its goal (reach
    # ~1.4 on 128 latents), for both methods alike, as both are held to the template change's length.
    assert report["nada"]["reach"] > 1.0 and abs(report["ipl"]["reach"] - report["nada"]["reach"]) < 0.1, report
    with pytest.raises(SystemExit) as e:
        _script("toy_direction_check").main([str(tmp_path)])
    assert e.value.code == 2


def test_toy_benchmark_script_writes_table_json_and_grids(tmp_path):
    # scripts/toy/toy_benchmark.py end to end at a tiny size, two runs at once: one row per (target, method), in order.
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "scripts" / "toy" / "toy_benchmark.py"
    spec = importlib.util.spec_from_file_location("toy_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench"
    bench.main(["--targets", "dark", "--methods", "ipl,nada", "--n", "16", "--jobs", "2", "--out", str(out), "--",
                "--iters-prompt", "2", "--batch-prompt", "2", "--iters", "2"])
    result = json.loads((out / "benchmark.json").read_text())
    assert [(r["target"], r["method"]) for r in result["rows"]] == [("dark", "ipl"), ("dark", "nada")]
    assert all(r["judge"]["n"] == 16 and "--iters" in r["adapt_command"] for r in result["rows"])
    assert result["machine"]["threads_per_job"] >= 1
    table = (out / "benchmark.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| dark | ipl |")
    from PIL import Image

    grids = Image.open(out / "grids.png")
    assert grids.height > 2 * Image.open(out / "dark-ipl" / "samples" / "final.png").height


def test_toy_run_defaults_apply_and_flags_override_them(tmp_path):
    # The toy registry defaults (chosen on `dark`): the length term with the shipped CLIP's ratio and frozen noise
    # strengths; a flag given on the command line wins (--train-noise, --length-weight 0).
    import json

    from click.testing import CliRunner

    from ipl.commands.cli import cli
    from ipl.registry import run_defaults_for

    defaults = run_defaults_for("toy")
    settings = {}
    for name, extra in (("default", []), ("override", ["--train-noise", "--length-weight", "0"])):
        out = tmp_path / name
        r = CliRunner().invoke(cli, ["adapt", "--source", "toy", "--target", "on a dark background", "--method", "nada",
                                     "--iters", "1", "--out", str(out), "--device", "cpu", "--quiet", *extra])
        assert r.exit_code == 0, r.output + repr(r.exception)
        settings[name] = json.loads((out / "config.json").read_text())["settings"]
    assert defaults["freeze_noise"] is True and defaults["length_weight"] == 1.0 and defaults["augment_views"] == 4
    assert settings["default"]["augment_views"] == 4
    assert settings["default"]["freeze_noise"] is True and settings["default"]["length_weight"] == 1.0
    assert settings["default"]["length_ratio"] == defaults["length_ratio"]
    assert settings["override"]["freeze_noise"] is False and settings["override"]["length_weight"] == 0.0
