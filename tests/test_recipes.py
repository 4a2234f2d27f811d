"""Method recipes and the layering of defaults (flag > source > recipe > AdaptConfig), and `--noise random|fixed`."""
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import ipl.run
from ipl import generators
from ipl.commands.cli import cli
from ipl.core.config import METHOD_RECIPES, AdaptConfig, layered_defaults
from ipl.core.errors import IPLError
from ipl.generators.stylegan2.adapter import StyleGAN2Adapter
from ipl.generators.stylegan2.network import Generator
from ipl.method.ema import EMA
from ipl.method.noise import training_noise
from ipl.registry import run_defaults_for
from tiny_clip import write_tiny_clip_files

NADA = METHOD_RECIPES["nada"]


def _tiny_generator(seed: int = 1, noise_strength: float = 0.3) -> Generator:
    """A random 16 px StyleGAN2 whose noise inputs count (a fresh network's noise strengths are 0)."""
    torch.manual_seed(seed)
    G = Generator(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8})
    with torch.no_grad():
        for layer in G.synthesis.conv_layers():
            layer.noise_strength.fill_(noise_strength)
    return G


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipes")
    gen = generators.save(_tiny_generator(), root / "g.safetensors")
    cfg, _ = write_tiny_clip_files(root / "clip", seed=1)
    return {"gen": str(gen), "clip": f"{cfg}:none"}


def _args(world, out, *extra):
    return ["adapt", "--source", world["gen"], "--source-text", "a solid shape", "--target", "a dotted shape",
            "--clip", world["clip"], "--iters-prompt", "2", "--batch-prompt", "4", "--layer-batch", "2",
            "--sample-n", "2", "--sample-every", "0", "--seed", "3", "--device", "cpu", "--out", str(out),
            "--quiet", *extra]


@pytest.fixture
def captured(monkeypatch):
    """The AdaptConfigs `ipl adapt` would run (prepare and run_adapt replaced: nothing is loaded or written)."""
    seen = []
    monkeypatch.setattr(ipl.run, "prepare", lambda cfg, **kw: {"out": Path(cfg.out or "unused"), "source_sha256": "0" * 64})
    monkeypatch.setattr(ipl.run, "run_adapt", lambda cfg, **kw: seen.append(cfg) or Path("unused"))
    return seen


def _adapt(captured, *argv) -> AdaptConfig:
    res = CliRunner().invoke(cli, ["adapt", "--target", "a dotted shape", "--device", "cpu", "--quiet", *argv])
    assert res.exit_code == 0, (res.output, res.exception)
    return captured[-1]


# ---------------------------------------------------------------------------------------------- the layering
def test_layered_defaults_flag_over_source_over_recipe():
    values, filled = layered_defaults("nada", {"iters": 600, "clip": ["toy"]}, {"lr"}, "source:toy")
    assert values == {**{k: v for k, v in NADA.items() if k != "lr"}, "iters": 600, "clip": ["toy"]}
    assert filled["lr"] == "flag" and filled["iters"] == "source:toy" and filled["clip"] == "source:toy"
    assert filled["ema_decay"] == filled["layers"] == "recipe:nada"
    assert layered_defaults("ipl", {}, set()) == ({}, {})


def test_nada_recipe_fills_the_settings_no_flag_gives(captured):
    cfg = _adapt(captured, "--source", "ffhq", "--method", "nada")
    assert (cfg.layers, cfg.layer_every, cfg.lr, cfg.batch, cfg.iters, cfg.ema_decay) == ("all", 1, 0.002 * 0.8, 2, 301, 0.0)
    assert all(cfg.filled_by[k] == "recipe:nada" for k in NADA)
    assert cfg.filled_by["method"] == "flag" and cfg.filled_by["clip"] == "source:ffhq"
    ipl_cfg = _adapt(captured, "--source", "ffhq")  # IPL: AdaptConfig's defaults, nothing from a recipe
    assert (ipl_cfg.layers, ipl_cfg.lr, ipl_cfg.ema_decay) == (None, AdaptConfig().lr, AdaptConfig().ema_decay)
    assert not any(v.startswith("recipe:") for v in ipl_cfg.filled_by.values())


def test_a_flag_wins_over_the_recipe(captured):
    cfg = _adapt(captured, "--source", "ffhq", "--method", "nada", "--lr", "0.01", "--layers", "12",
                 "--ema-decay", "0.99", "--iters", "5")
    assert (cfg.lr, cfg.layers, cfg.ema_decay, cfg.iters, cfg.batch) == (0.01, 12, 0.99, 5, 2)
    assert {cfg.filled_by[k] for k in ("lr", "layers", "ema_decay", "iters")} == {"flag"}
    assert cfg.filled_by["batch"] == "recipe:nada"


def test_a_sources_run_defaults_win_over_the_recipe(captured):
    toy = run_defaults_for("toy")
    cfg = _adapt(captured, "--source", "toy", "--method", "nada")
    assert (cfg.iters, cfg.layer_every, cfg.noise) == (toy["iters"], toy["layer_every"], "fixed")
    assert cfg.filled_by["iters"] == cfg.filled_by["noise"] == cfg.filled_by["clip"] == "source:toy"
    assert (cfg.lr, cfg.ema_decay, cfg.layers) == (0.002 * 0.8, 0.0, "all")  # the toy says nothing about these
    assert cfg.filled_by["lr"] == "recipe:nada"
    cfg = _adapt(captured, "--source", "toy", "--method", "nada", "--iters", "7", "--noise", "random")
    assert (cfg.iters, cfg.noise) == (7, "random") and cfg.filled_by["iters"] == cfg.filled_by["noise"] == "flag"
    ddpm = run_defaults_for("toy-ddpm")  # a diffusion source's stage-2 lr, not NADA's StyleGAN one
    cfg = _adapt(captured, "--source", "toy-ddpm", "--method", "nada")
    assert cfg.lr == ddpm["lr"] and cfg.filled_by["lr"] == "source:toy-ddpm"


# ---------------------------------------------------------------------------------------------- whole runs
def test_nada_run_records_provenance_skips_the_probe_and_saves_g_t(world, tmp_path, monkeypatch):
    import ipl.method.stage2 as stage2

    def no_probe(*a, **k):
        raise AssertionError("the layer probe ran although every layer is trained")

    monkeypatch.setattr(stage2, "select_layers", no_probe)
    out = tmp_path / "nada"
    res = CliRunner().invoke(cli, _args(world, out, "--method", "nada", "--iters", "2", "--checkpoint-every", "1"))
    assert res.exit_code == 0, (res.output, res.exception)
    config = json.loads((out / "config.json").read_text())
    s = config["settings"]
    assert (s["lr"], s["ema_decay"], s["layers"], s["layer_every"], s["iters"]) == (0.002 * 0.8, 0.0, "all", 1, 2)
    assert s["filled_by"]["lr"] == "recipe:nada" and s["filled_by"]["iters"] == "flag"
    assert s["filled_by"]["source_text"] == "flag" and "noise" not in s["filled_by"]  # AdaptConfig's: random
    assert config["resolved"]["layers"] == "all"
    assert all(json.loads(l)["layers"] == "all" for l in (out / "log.jsonl").read_text().splitlines())
    # No EMA: the saved generator is G_t after its last step, bit for bit.
    trained = StyleGAN2Adapter(_tiny_generator())
    state = torch.load(out / "checkpoint.pt", weights_only=True)["trainer"]
    trained.load_state_dict(state["G_t"])
    saved = generators.load_adaptable(str(out / "generator.safetensors"))
    for (name, a), (_, b) in zip(trained.named_parameters(), saved.named_parameters()):
        assert torch.equal(a, b), name
    # --resume compares settings, not where they came from; a run saved before --noise existed had fixed noise.
    s_old = {k: v for k, v in s.items() if k != "noise"}
    (out / "config.json").write_text(json.dumps({**config, "settings": s_old}))
    cfg = AdaptConfig.from_dict({**s, "filled_by": {}})
    with pytest.raises(IPLError, match="noise: saved 'fixed', now 'random'"):
        ipl.run.prepare(cfg, resume=True, allow_download=False, progress=False)
    ipl.run.prepare(AdaptConfig.from_dict({**s, "noise": "fixed"}), resume=True, allow_download=False, progress=False)


def test_ema_decay_zero_copies_the_model_exactly():
    model, shadow = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    with torch.no_grad():
        shadow.weight.fill_(1e20)  # where a + (b - a) would not give b
    EMA(model, shadow, decay=0.0).update()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), shadow.parameters()))


def test_random_noise_is_seeded_and_matters(world, tmp_path):
    runs = {}
    for name, extra in (("a", []), ("b", []), ("fixed", ["--noise", "fixed"])):
        out = tmp_path / name
        res = CliRunner().invoke(cli, _args(world, out, "--iters", "3", "--layers", "2", *extra))
        assert res.exit_code == 0, (res.output, res.exception)
        runs[name] = (load_file(str(out / "generator.safetensors")),
                      load_file(str(out / "prompts" / "learner_0.safetensors")))
    for part in (0, 1):  # the adapted generator and the stage-1 prompt learner
        a, b, fixed = (runs[n][part] for n in ("a", "b", "fixed"))
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], fixed[k]) for k in a)


# ---------------------------------------------------------------------------------------------- the renders
def _noisy_adapter() -> StyleGAN2Adapter:
    return StyleGAN2Adapter(_tiny_generator(2, noise_strength=1.0))


def test_random_noise_differs_per_render_and_fixed_does_not():
    g = _noisy_adapter()
    w = g.sample_latents(2, torch.Generator().manual_seed(0))
    const = g.render(w)
    with training_noise([g], "fixed", torch.Generator().manual_seed(5)):
        assert torch.equal(g.render(w), const) and torch.equal(g.render(w), const)
    with training_noise([g], "random", torch.Generator().manual_seed(5)):
        first, second = g.render(w), g.render(w)
        probe = g.render_layers(g.lift(w))
    assert not torch.equal(first, second) and not torch.equal(first, const) and not torch.equal(probe, first)
    assert torch.equal(g.render(w), const)  # back to the stored noise set (grids, `ipl sample`)
    # Seeded by the run's generator, not the global RNG.
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        with training_noise([g], "random", torch.Generator().manual_seed(5)):
            assert torch.equal(g.render(w), first)
    # G_s and G_t draw independent noise for the same latents (as the references: randomize_noise in both calls).
    g_t = g.copy()
    with training_noise([g, g_t], "random", torch.Generator().manual_seed(5)):
        assert not torch.equal(g.render(w), g_t.render(w))
