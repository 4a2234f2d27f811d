"""Reproduce the reference implementations' stored outputs from their checkpoints (max abs error <= 1e-4),
also after a round trip through our own format."""
from __future__ import annotations

import pytest
import torch

from ipl import generators
from ipl.generators.stylegan2.network import style_mix

ATOL = 1e-4


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def check_rosinality(G, io) -> None:
    noise = io["noise"]
    with torch.no_grad():
        for T in io["truncations"]:
            ws = G.mapping(io["z"], None, truncation_psi=T)
            assert _max_err(ws, io[f"latent_trunc{T}"]) <= ATOL
            assert _max_err(G.synthesis(ws, noise=noise), io[f"out_trunc{T}"]) <= ATOL
        # W+ input: each of the 10 rows is a different w.
        assert _max_err(G.synthesis(io["wplus"], noise=noise), io["out_wplus"]) <= ATOL
        # Style mixing at inject_index: rows < 3 from a, the rest from b, both truncated first.
        wa = G.mapping(io["z_mix_a"], None, truncation_psi=0.7)
        wb = G.mapping(io["z_mix_b"], None, truncation_psi=0.7)
        mixed = style_mix(wa, wb, int(io["inject_index"]))
        assert _max_err(G.synthesis(mixed, noise=noise), io["out_mix_trunc0.7"]) <= ATOL
        # noise_mode='const' uses the checkpoint's stored noise buffers.
        assert _max_err(G(io["z"], truncation_psi=1.0, noise_mode="const"), io["out_buffer_noise"]) <= ATOL


def check_nvidia(G, io) -> None:
    c = io["c"] if io["c"].numel() else None
    with torch.no_grad():
        assert _max_err(G.w_avg, io["w_avg"]) == 0
        for T in io["truncations"]:
            assert _max_err(G.mapping(io["z"], c, truncation_psi=T), io[f"ws_trunc{T}"]) <= ATOL
            assert _max_err(G(io["z"], c, truncation_psi=T, noise_mode="const"), io[f"out_trunc{T}"]) <= ATOL
        assert _max_err(G.synthesis(io["ws"], noise_mode="const"), io["out_synthesis_ws"]) <= ATOL


CASES = [
    ("rosinality_sg2_64.pt", "rosinality_sg2_64_io.pt", check_rosinality),
    ("nvidia_sg2ada_64.pkl", "nvidia_sg2ada_64_io.pt", check_nvidia),
    ("nvidia_sg2ada_64_cond_clamp.pkl", "nvidia_sg2ada_64_cond_clamp_io.pt", check_nvidia),
]


@pytest.mark.parametrize("ckpt,io_name,check", CASES, ids=[c[0] for c in CASES])
def test_reference_outputs_and_round_trip(fixtures_dir, tmp_path, ckpt, io_name, check):
    io = torch.load(fixtures_dir / io_name, weights_only=True)
    G = generators.load(fixtures_dir / ckpt)
    assert (G.z_dim, G.w_dim, G.num_ws, G.img_resolution) == (64, 64, 10, 64)
    check(G, io)

    # Any format -> ours -> identical outputs (bitwise, hence the reference outputs too).
    path = generators.save(G, tmp_path / "g.safetensors", metadata={"note": ckpt})
    H = generators.load(path)
    assert H.metadata["note"] == ckpt
    assert H.config == G.config
    sd_g, sd_h = G.state_dict(), H.state_dict()
    assert sd_g.keys() == sd_h.keys() and all(torch.equal(sd_g[k], sd_h[k]) for k in sd_g)
    z = io["z"][:2]
    c = G.sample_labels(2, torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(G(z, c, truncation_psi=0.5), H(z, c, truncation_psi=0.5))


def test_conv_clamp_is_exercised(fixtures_dir):
    """Disabling the clamp must break parity on the cond_clamp fixture (so the test above really checks it)."""
    io = torch.load(fixtures_dir / "nvidia_sg2ada_64_cond_clamp_io.pt", weights_only=True)
    G = generators.load(fixtures_dir / "nvidia_sg2ada_64_cond_clamp.pkl")
    assert G.config["conv_clamp"] == 256.0 and G.c_dim == 4
    for module in G.modules():
        if hasattr(module, "conv_clamp"):
            module.conv_clamp = None
    with torch.no_grad():
        assert _max_err(G.synthesis(io["ws"]), io["out_synthesis_ws"]) > 0.5


def test_rosinality_training_copy_loads_identically(fixtures_dir, tmp_path):
    """A checkpoint with only 'g' (no 'g_ema') still loads, with a warning."""
    ckpt = torch.load(fixtures_dir / "rosinality_sg2_64.pt", weights_only=True)
    torch.save({"g": ckpt["g"], "latent_avg": ckpt["latent_avg"]}, tmp_path / "g_only.pt")
    with pytest.warns(UserWarning, match="'g'"):
        G = generators.load(tmp_path / "g_only.pt")
    H = generators.load(fixtures_dir / "rosinality_sg2_64.pt")  # its 'g' equals 'g_ema' in this fixture
    sd_g, sd_h = G.state_dict(), H.state_dict()
    assert all(torch.equal(sd_g[k], sd_h[k]) for k in sd_g)
