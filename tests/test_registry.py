"""The registry of source models and `ipl models list|info|download`."""
import json

import pytest
from click.testing import CliRunner

from ipl.commands.cli import cli
from ipl.core.config import default_layers
from ipl.core.errors import IPLError
from ipl.registry import REGISTRY, cache_path, get_source


def test_known_sources_and_defaults():
    for name in ("ffhq", "afhqdog", "afhqcat", "afhqwild", "metfaces", "toy"):
        assert name in REGISTRY
    ffhq = get_source("FFHQ")
    assert ffhq.resolution == 1024 and ffhq.source_text == "photo" and ffhq.truncation == 1.0
    assert ffhq.url == "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/ffhq.pkl"
    assert ffhq.layers == 12 == default_layers(1024)  # IPL: floor(2/3 * 18)
    assert get_source("afhqdog").layers == 10 and default_layers(256) == 9
    assert get_source("church").readable and get_source("church").format == "nvidia-tf-pkl"
    toy = get_source("toy")
    assert toy.url is None and toy.clip == ("toy",) and toy.source_text == "a solid shape"
    assert str(cache_path(toy)).endswith("assets/toy/generator.safetensors")


def test_unknown_source_lists_names():
    with pytest.raises(IPLError, match="Known sources: toy, ffhq"):
        get_source("nope")


def test_cache_respects_ipl_home(tmp_path, monkeypatch):
    monkeypatch.setenv("IPL_HOME", str(tmp_path))
    assert cache_path(get_source("ffhq")) == tmp_path / "models" / "ffhq.pkl"


def test_models_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("IPL_HOME", str(tmp_path))
    monkeypatch.setenv("IPL_OFFLINE", "1")
    r = CliRunner().invoke(cli, ["models", "list"])
    assert r.exit_code == 0 and "ffhq" in r.output and "church" in r.output
    r = CliRunner().invoke(cli, ["models", "list", "--json"])
    assert {d["name"] for d in json.loads(r.output)} == set(REGISTRY)
    r = CliRunner().invoke(cli, ["models", "info", "afhqdog"])
    info = json.loads(r.output)
    assert info["resolution"] == 512 and info["path"] == str(tmp_path / "models" / "afhqdog.pkl")
    r = CliRunner().invoke(cli, ["models", "download", "ffhq"])
    assert r.exit_code != 0 and "ffhq.pkl" in str(r.exception)
    assert not (tmp_path / "models" / "ffhq.pkl").exists()


def test_registry_run_defaults_apply_unless_flag_given(monkeypatch):
    import ipl.run
    seen = []

    def fake_prepare(cfg, **kw):
        seen.append(cfg)
        raise IPLError("stop here")

    monkeypatch.setattr(ipl.run, "prepare", fake_prepare)
    toy = get_source("toy")
    CliRunner().invoke(cli, ["adapt", "--source", "toy", "--target", "on a dark background"])
    CliRunner().invoke(cli, ["adapt", "--source", "toy", "--target", "striped", "--iters", "7"])
    assert seen[0].iters == toy.run_defaults["iters"] and seen[0].clip == ["toy"]
    assert seen[0].source_text == "a solid shape"
    assert seen[1].iters == 7 and seen[1].iters_prompt == toy.run_defaults["iters_prompt"]
