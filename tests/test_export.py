"""`ipl export --format rosinality`: the .pt has rosinality's exact keys and loads back to identical images."""
import json

import pytest
import torch
from click.testing import CliRunner

from ipl import generators
from ipl.generators.stylegan2.network import Generator
from ipl.commands.cli import cli
from ipl.generators.stylegan2.export import export_rosinality, rosinality_state


def _tiny_generator(seed=0):
    torch.manual_seed(seed)
    G = Generator(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8})
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.1 * torch.randn_like(p))
        G.mapping.w_avg.normal_()
    return G.eval()


def _images(G, seed=3, psi=0.7):
    z = torch.randn(4, G.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return G(z, None, truncation_psi=psi, noise_mode="const")


def test_fixture_roundtrip_reproduces_rosinality_state_exactly(fixtures_dir):
    ckpt = fixtures_dir / "rosinality_sg2_64.pt"
    ref = torch.load(ckpt, map_location="cpu", weights_only=True)
    G = generators.load(ckpt)
    ours = rosinality_state(G)
    assert set(ours) == set(ref["g_ema"]), set(ours) ^ set(ref["g_ema"])
    for k, v in ref["g_ema"].items():
        assert ours[k].shape == v.shape, k
        torch.testing.assert_close(ours[k], v.float(), rtol=0, atol=1e-7, msg=k)


def test_export_loads_back_with_identical_images(tmp_path):
    G = _tiny_generator()
    path = export_rosinality(G, tmp_path / "g.pt", {"target_text": "x"})
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt) >= {"g_ema", "latent_avg"}
    G2 = generators.load(path)
    torch.testing.assert_close(_images(G2), _images(G), rtol=0, atol=1e-5)


def test_export_cli_on_run_folder(tmp_path):
    G = _tiny_generator(seed=1)
    run = tmp_path / "run"
    run.mkdir()
    generators.save(G, run / "generator.safetensors")
    (run / "config.json").write_text(json.dumps({
        "settings": {"source": "x.pt", "target_text": "sketch", "method": "ipl"},
        "resolved": {"source_path": str(tmp_path / "missing.pt")}, "status": "complete"}))
    res = CliRunner().invoke(cli, ["export", str(run), "--format", "rosinality"])
    assert res.exit_code == 0, res.output
    out = run / "generator_rosinality.pt"
    assert out.is_file()
    torch.testing.assert_close(_images(generators.load(out)), _images(G), rtol=0, atol=1e-5)
    bad = CliRunner().invoke(cli, ["export", str(tmp_path)])
    assert bad.exit_code != 0 and "not an ipl run folder" in str(bad.exception)
