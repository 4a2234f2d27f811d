"""Behaviour of our StyleGAN2 network on tiny random configs: shapes, inputs, noise, truncation, layers, grads."""
from __future__ import annotations

import pytest
import torch

from ipl.generators.stylegan2.adapter import StyleGAN2Adapter
from ipl.generators.stylegan2.network import Generator, channel_table, style_mix


def tiny(resolution: int = 16, c_dim: int = 0, **kw) -> Generator:
    torch.manual_seed(0)
    G = Generator(z_dim=8, w_dim=8, c_dim=c_dim, img_resolution=resolution, mapping_layers=2, channel_base=64,
                  channel_max=8, **kw).eval()
    with torch.no_grad():  # non-trivial noise strengths and biases so noise/bias paths matter
        for name, p in G.named_parameters():
            if name.endswith(("noise_strength", ".bias")):
                p.add_(0.3 * torch.randn_like(p))
    return G


@pytest.mark.parametrize("resolution", [4, 8, 32])
def test_shapes_and_num_ws(resolution):
    G = tiny(resolution)
    assert G.num_ws == 2 * (resolution.bit_length() - 1) - 2
    z = torch.randn(2, 8)
    with torch.no_grad():
        ws = G.mapping(z)
        img = G.synthesis(ws)
    assert ws.shape == (2, G.num_ws, 8) and img.shape == (2, 3, resolution, resolution)
    assert len(G.layer_groups()) == G.num_ws and len(G.noise_shapes()) == G.num_ws - 1


def test_channel_tables():
    # rosinality config-f (multiplier 2) and NVIDIA's base/max table agree at 1024 px.
    assert channel_table(1024, channel_multiplier=2) == channel_table(1024, 32768, 512)
    assert channel_table(256, channel_multiplier=2) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}
    assert channel_table(64, 2048, 64) == {4: 64, 8: 64, 16: 64, 32: 64, 64: 32}
    with pytest.raises(AssertionError):
        Generator(img_resolution=48)


def test_w_and_wplus_inputs_agree_and_rows_matter():
    G = tiny()
    z = torch.randn(2, 8)
    with torch.no_grad():
        w = G.mapping(z)[:, 0]
        wplus = w.unsqueeze(1).repeat(1, G.num_ws, 1)
        a = G.synthesis(w)
        assert torch.equal(a, G.synthesis(wplus))
        # Changing one W+ row changes the image; style_mix takes rows < index from the first code.
        w2 = G.mapping(torch.randn(2, 8))
        mixed = style_mix(wplus, w2, 3)
        assert torch.equal(mixed[:, :3], wplus[:, :3]) and torch.equal(mixed[:, 3:], w2[:, 3:])
        assert (G.synthesis(mixed) - a).abs().max() > 1e-3


def test_truncation():
    G = tiny()
    with torch.no_grad():
        G.estimate_w_avg(256)
        z = torch.randn(3, 8)
        w1 = G.mapping(z, truncation_psi=1.0)
        assert torch.allclose(G.mapping(z, truncation_psi=0.0), G.w_avg.expand_as(w1))
        half = G.mapping(z, truncation_psi=0.5)
        assert torch.allclose(half, (w1 + G.w_avg) / 2, atol=1e-6)
        # mean of mapped w over many z is close to w_avg
        w_many = G.mapping(torch.randn(2048, 8))[:, 0]
        assert (w_many.mean(0) - G.w_avg).abs().max() < 0.1 * w_many.std(0).max()


def test_noise_modes_and_explicit_noise():
    G = tiny()
    z = torch.randn(2, 8)
    with torch.no_grad():
        ws = G.mapping(z)
        const1, const2 = G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const")
        assert torch.equal(const1, const2)
        r1, r2 = G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random")
        assert (r1 - r2).abs().max() > 1e-4
        none = G.synthesis(ws, noise_mode="none")
        zeros = [torch.zeros(s) for s in G.noise_shapes()]
        assert torch.allclose(G.synthesis(ws, noise=zeros), none, atol=1e-6)
        stored = [layer.noise_const for layer in G.synthesis.conv_layers()]
        assert torch.allclose(G.synthesis(ws, noise=stored), const1, atol=1e-6)
        with pytest.raises(ValueError, match="one per conv layer"):
            G.synthesis(ws, noise=stored[:-1])


def test_conditional_mapping_uses_labels():
    G = tiny(c_dim=3)
    z = torch.randn(2, 8)
    c0 = torch.nn.functional.one_hot(torch.tensor([0, 0]), 3).float()
    c1 = torch.nn.functional.one_hot(torch.tensor([1, 1]), 3).float()
    with torch.no_grad():
        assert (G.mapping(z, c0) - G.mapping(z, c1)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="conditional"):
        G.mapping(z)


def test_fused_and_plain_modconv_agree():
    G = tiny(conv_clamp=0.5)
    z = torch.randn(3, 8)
    with torch.no_grad():
        a = G(z)
        G.set_fused_modconv(False)
        b = G(z)
    assert torch.allclose(a, b, atol=1e-5)


def test_conv_clamp_bounds_activations():
    G = tiny(conv_clamp=0.05)
    with torch.no_grad():
        img = G(torch.randn(2, 8))
    # Each ToRGB output is clamped to +-0.05; the skip sum of 3 upsampled layers stays within 3 * 0.05.
    assert img.abs().max() <= 3 * 0.05 + 1e-6


def test_gradients_reach_every_parameter_and_training_reduces_loss():
    G = tiny(8, c_dim=3).train()
    target = torch.rand(4, 3, 8, 8) * 2 - 1
    z = torch.randn(4, 8)
    c = G.sample_labels(4, torch.Generator().manual_seed(0))
    params = list(G.parameters())
    loss0 = (G(z, c, noise_mode="const") - target).square().mean()
    loss0.backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        loss = (G(z, c, noise_mode="const") - target).square().mean()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * loss0.item()


def test_layer_groups_follow_w_rows():
    """layer_groups()[i] holds exactly the layers whose affine reads W+ row i, and every synthesis
    parameter except the const input belongs to one group."""
    G = tiny(16)
    groups = G.layer_groups()
    const = G.synthesis.b4.const
    all_ids = set().union(*[{id(p) for p in g} for g in groups])
    assert all_ids == {id(p) for p in G.synthesis.parameters()} - {id(const)}
    assert sum(len(g) for g in groups) == len(all_ids)  # no parameter in two groups

    seen: dict[int, torch.Tensor] = {}
    affines = {id(m.affine.weight): m.affine for m in G.synthesis.modules() if hasattr(m, "affine")}
    hooks = [a.register_forward_hook(lambda mod, inp, out, k=k: seen.__setitem__(k, inp[0].detach()))
             for k, a in affines.items()]
    ws = torch.arange(G.num_ws, dtype=torch.float32)[None, :, None].repeat(1, 1, 8)  # row i filled with i
    with torch.no_grad():
        G.synthesis(ws)
    for h in hooks:
        h.remove()
    for i, group in enumerate(groups):
        readers = [id(p) for p in group if id(p) in affines]
        assert readers, f"row {i} drives no layer"
        for k in readers:
            assert torch.all(seen[k] == i), f"an affine in group {i} read row {seen[k][0, 0].item()}"


def test_adapter_contract():
    G = tiny(8, c_dim=3)
    A = StyleGAN2Adapter(G)
    gen = torch.Generator().manual_seed(0)
    lat = A.sample_latents(5, gen)
    assert lat.shape == (5, 8) and A.code_dim == 8 and A.resolution == 8
    assert torch.equal(A.codes(lat), lat)
    lat2 = A.sample_latents(5, torch.Generator().manual_seed(0))
    assert torch.equal(lat, lat2)
    with torch.no_grad():
        assert torch.equal(A.render(lat), A.render_layers(A.lift(lat)))
    assert A.num_layers() == G.num_ws and A.lift(lat).shape == (5, G.num_ws, 8)
    trainable = {id(p) for p in A.trainable_parameters()}
    assert id(G.synthesis.b4.const) not in trainable
    assert not trainable & {id(p) for p in G.mapping.parameters()}
    # Only the 4x4 ToRGB (NADA's and IPL's to_rgb1, their probe's row 1) may train by default; the others stay frozen.
    to_rgb1 = {id(p) for p in G.synthesis.b4.torgb.parameters()}
    torgb = {id(p) for b in G.synthesis.blocks() for p in b.torgb.parameters()}
    assert to_rgb1 <= trainable and not trainable & (torgb - to_rgb1)
    convs = {id(p) for layer in G.synthesis.conv_layers() for p in layer.parameters()}
    assert convs <= trainable
    with_rgb = {id(p) for p in StyleGAN2Adapter(G, train_torgb=True).trainable_parameters()}
    assert with_rgb == trainable | torgb
    # 8 px: rows 0..3. Reference: [b4.conv1, b4.torgb, b8.conv0, b8.conv1]; semantic: the convolutions a row
    # modulates (row 2: b8.conv1), no ToRGB.
    assert [id(p) for p in A.layer_parameters(2)] == [id(p) for p in G.synthesis.b8.conv0.parameters()]
    assert [id(p) for p in A.layer_parameters(2, "semantic")] == [id(p) for p in G.synthesis.b8.conv1.parameters()]
    assert [id(p) for p in A.layer_parameters(1, "semantic")] == [id(p) for p in G.synthesis.b8.conv0.parameters()]
    assert A.layer_parameters(3, "semantic") == []
    B = A.copy()
    assert B.G is not A.G and torch.equal(B.G.synthesis.b4.const, A.G.synthesis.b4.const)


def test_impl_ref_matches_auto():
    G = tiny()
    z = torch.randn(2, 8)
    with torch.no_grad():
        a = G(z)
        b = G.set_impl("ref")(z)
    assert torch.equal(a, b)


def test_fp16_prenormalisation_keeps_demodulated_result():
    """The fp16 rescaling of weight and styles is cancelled by demodulation (checked in float64 maths)."""
    from ipl.generators.stylegan2.network import modulated_conv2d

    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    weight = torch.randn(5, 4, 3, 3, dtype=torch.float64) * 50
    styles = torch.randn(2, 4, dtype=torch.float64) * 30
    ref = modulated_conv2d(x, weight, styles, padding=1)
    scaled_w = weight * (1 / 6 / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
    scaled_s = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    assert torch.allclose(modulated_conv2d(x, scaled_w, scaled_s, padding=1), ref, atol=1e-9)
    if torch.cuda.is_available():  # the real fp16 path
        out = modulated_conv2d(x.half().cuda(), weight.half().cuda(), styles.half().cuda(), padding=1)
        assert torch.isfinite(out).all() and torch.allclose(out.double().cpu(), ref, atol=5e-2)
