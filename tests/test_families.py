"""Generator families as plugins: the family table, claims by content, one registry, declared capabilities."""
from __future__ import annotations

import ast
import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from ipl import generators
from ipl.core.config import AdaptConfig
from ipl.core.errors import CheckpointError, IPLError
from ipl.core.family import GeneratorFamily, SourceEntry
from ipl.method.stage2 import Stage2Settings, Stage2Trainer
from ipl.registry import REGISTRY, get_source, run_defaults_for
from test_adapt_fakes import FakeLayeredGenerator

REPO = Path(__file__).resolve().parent.parent
CONFIG_FIELDS = {f.name for f in dataclasses.fields(AdaptConfig)}


def test_the_registry_is_every_family_entry_once_with_valid_run_defaults():
    from_families = [e for f in generators.FAMILIES for e in f.entries()]
    assert sorted(e.name for e in from_families) == sorted(REGISTRY)
    assert {e.family for e in REGISTRY.values()} == {f.name for f in generators.FAMILIES}
    for entry in REGISTRY.values():
        assert set(entry.run_defaults) <= CONFIG_FIELDS, (entry.name, set(entry.run_defaults) - CONFIG_FIELDS)
        assert generators.family_named(entry.family).name == entry.family
    # Readable entries are listed first, in family-table order.
    readable = [e.readable for e in REGISTRY.values()]
    assert readable == sorted(readable, reverse=True)
    assert list(REGISTRY)[:2] == ["toy", "ffhq"]


def test_a_source_resolves_to_its_family_by_content(tmp_path, fixtures_dir):
    from ipl.generators.diffusion import TOY_DDPM_DIR
    from ipl.generators.toy.source import GENERATOR_PATH

    assert generators.family_for_path(GENERATOR_PATH).name == "toy"
    assert generators.family_for_path(TOY_DDPM_DIR).name == "diffusion"
    # A copy of the toy generator under another name is a plain ipl-format StyleGAN2 file, whatever its suffix.
    shutil.copy(GENERATOR_PATH, tmp_path / "model.pt")
    assert generators.family_for_path(tmp_path / "model.pt").name == "stylegan2"
    assert generators.family_for_path(fixtures_dir / "rosinality_sg2_64.pt").name == "stylegan2"
    # The StyleGAN2 reader is the fallback: a file that is nothing it knows gets its clear error on load.
    (tmp_path / "junk.pkl").write_bytes(b"not a checkpoint")
    assert generators.family_for_path(tmp_path / "junk.pkl").name == "stylegan2"
    with pytest.raises(CheckpointError, match="unrecognised file content"):
        generators.load_adaptable(tmp_path / "junk.pkl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="folder has no generator file any family reads"):
        generators.family_for_path(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        generators.family_for_path(tmp_path / "missing.pt")


def test_run_defaults_come_from_the_family_that_reads_the_source():
    from ipl.generators.diffusion import TOY_DDPM_DIR
    from ipl.generators.toy.source import GENERATOR_PATH

    assert run_defaults_for("toy") == get_source("toy").run_defaults
    assert run_defaults_for(str(GENERATOR_PATH)) == get_source("toy").run_defaults
    assert run_defaults_for(str(TOY_DDPM_DIR)) == get_source("toy-ddpm").run_defaults
    assert run_defaults_for("ffhq") == {}


class _FakeFamily(GeneratorFamily):
    """A fourth family: claims `*.fake` files, loads them as the fake layered generator."""

    name = "fake"

    def entries(self):
        return [SourceEntry(name="fake-src", family="fake", url=None, format="fake", resolution=16,
                            source_text="a thing", layers=2, run_defaults={"iters": 3})]

    def claims(self, path):
        return path.suffix == ".fake"

    def load(self, path, device="cpu"):
        return FakeLayeredGenerator(seed=int(path.read_text()))


def test_a_fourth_family_is_one_line_in_the_table(tmp_path, monkeypatch):
    import ipl.registry

    monkeypatch.setattr(generators, "FAMILIES", generators.FAMILIES + (_FakeFamily(),))
    (tmp_path / "g.fake").write_text("3")
    gen = generators.load_adaptable(tmp_path / "g.fake")
    assert isinstance(gen, FakeLayeredGenerator)
    torch.testing.assert_close(gen.const, FakeLayeredGenerator(seed=3).const)
    assert ipl.registry._collect()["fake-src"].run_defaults == {"iters": 3}


def test_optional_capabilities_have_declared_defaults():
    g = FakeLayeredGenerator()
    assert g.noise_parameters() == [] and g.extra_losses(None, None) == {} and g.stage2_trainer is None
    assert g.metadata == {} and g.num_classes == 0 and not g.latents_from_pool and g.export_formats == ()
    g.configure({})  # no options: nothing to refuse
    with pytest.raises(IPLError, match="apply to diffusion sources only"):
        g.configure({"t0": "300"})
    with pytest.raises(IPLError, match="--steps applies to diffusion models only"):
        g.sample_seeds([0], steps=3)
    with pytest.raises(IPLError, match="unconditional"):
        g.seed_latents([0], class_idx=0)
    with pytest.raises(IPLError, match="cannot be exported"):
        g.export("x.pt", "rosinality")
    with pytest.raises(IPLError, match="diffusion runs only"):
        g.edit_images(g, torch.zeros(1, 3, 16, 16))
    # Seeded sampling is per seed: a batch of seeds equals the seeds one by one.
    torch.testing.assert_close(g.seed_latents([4, 5]), torch.cat([g.seed_latents([4]), g.seed_latents([5])]),
                               rtol=0, atol=0)
    torch.testing.assert_close(g.sample_seeds([4, 5]), torch.cat([g.sample_seeds([4]), g.sample_seeds([5])]),
                               rtol=1e-4, atol=1e-4)
    settings = Stage2Settings(method="nada", freeze_noise=True)
    with pytest.raises(IPLError, match="no noise inputs"):
        Stage2Trainer(g, [], "a", "b", None, settings)


def test_stage2_defaults_are_the_run_configs():
    cfg, s = AdaptConfig(), Stage2Settings()
    shared = {f.name for f in dataclasses.fields(Stage2Settings)} & CONFIG_FIELDS - {"layers", "truncation",
                                                                                    "length_ratio"}
    assert shared and all(getattr(s, n) == getattr(cfg, n) for n in shared)
    cfg = AdaptConfig(iters=7, lr=0.1, length_ratio=0.5, layer_every=2)
    s = Stage2Settings.from_config(cfg, layers=3, truncation=0.7)
    assert (s.iters, s.lr, s.length_ratio, s.layer_every, s.layers, s.truncation) == (7, 0.1, 0.5, 2, 3, 0.7)


# The method and the product talk to generators through declared members only.
LAYERS = ["ipl/run.py", "ipl/registry.py", "ipl/download.py", "ipl/__init__.py", "ipl/method", "ipl/commands",
          "ipl/metrics"]
PROBE_FREE = sorted(str(p.relative_to(REPO)) for rel in LAYERS for p in
                    ([REPO / rel] if rel.endswith(".py") else (REPO / rel).glob("*.py")))
HOOKS = {"configure", "set_code_encoder", "attach_source", "stage2_trainer", "extra_losses", "noise_parameters",
         "noise_mode", "G", "metadata", "is_diffusion_checkpoint", "is_diffusion_source"}


def test_the_probe_check_covers_the_layers():
    assert len(PROBE_FREE) > 20 and "ipl/method/stage2.py" in PROBE_FREE and "ipl/commands/sample.py" in PROBE_FREE


@pytest.mark.parametrize("rel", PROBE_FREE)
def test_no_attribute_probing_in_the_method_and_product(rel):
    tree = ast.parse((REPO / rel).read_text(encoding="utf-8"))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    # (hasattr on open_clip's two model classes in prompts.py is not about generators.)
    probes = [n.lineno for n in calls if n.func.id in ("hasattr", "getattr") and len(n.args) >= 2
              and isinstance(n.args[1], ast.Constant) and n.args[1].value in HOOKS]
    assert not probes, f"{rel}: hasattr()/getattr() of a generator hook at lines {probes}"
