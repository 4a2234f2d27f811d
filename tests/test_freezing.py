"""Adaptive layer freezing: picks the layers a W+ probe step moves most; touches nothing else."""
import torch

from ipl.method.freezing import parameters_of_layers, select_layers
from test_adapt_fakes import FakeLayeredGenerator
from tiny_clip import tiny_clip  # noqa: F401  (fixture)


def _probe(n=8, seed=1):
    return torch.Generator().manual_seed(seed)


def test_select_layers_matches_manual_sgd_step(tiny_clip):
    G = FakeLayeredGenerator(n_layers=5).requires_grad_(False)
    lat = G.sample_latents(8, generator=_probe())
    feat = tiny_clip.encode_texts(["a red square"])
    chosen = select_layers(G, [tiny_clip], [feat], 2, lat, lr=0.01)
    # Manual: one SGD step on W+, rank layers by mean |change|.
    from ipl.method.losses import global_clip_loss
    wp = G.lift(lat).detach().requires_grad_(True)
    opt = torch.optim.SGD([wp], lr=0.01)
    loss = global_clip_loss(tiny_clip.encode_images(G.render_layers(wp)), feat)
    loss.backward()
    before = wp.detach().clone()
    opt.step()
    moved = (wp.detach() - before).abs().mean(dim=(0, 2))
    assert chosen == sorted(torch.topk(moved, 2).indices.tolist())
    assert len(chosen) == 2 and all(p.grad is None for p in G.parameters())


def test_dominant_layer_is_chosen(tiny_clip):
    # Layer 3's modulation is 30x stronger: its W+ row has by far the largest gradient.
    G = FakeLayeredGenerator(n_layers=5, layer_gain=[0.03, 0.03, 0.03, 1.0, 0.03]).requires_grad_(False)
    lat = G.sample_latents(8, generator=_probe())
    chosen = select_layers(G, [tiny_clip], [tiny_clip.encode_texts(["a blue circle"])], 1, lat)
    assert chosen == [3]


def test_all_layers_when_k_none_or_large(tiny_clip):
    G = FakeLayeredGenerator(n_layers=3)
    lat = G.sample_latents(2, generator=_probe())
    f = [tiny_clip.encode_texts(["x"])]
    assert select_layers(G, [tiny_clip], f, None, lat) == [0, 1, 2]
    assert select_layers(G, [tiny_clip], f, 3, lat) == [0, 1, 2]


def test_parameters_of_layers_respects_allowed():
    G = FakeLayeredGenerator(n_layers=3)
    allowed = G.trainable_parameters()
    ps = parameters_of_layers(G, [0, 2], allowed)
    ids = {id(p) for p in ps}
    assert ids == {id(p) for i in (0, 2) for p in G.layer_parameters(i)}
    assert id(G.const) not in ids
    assert parameters_of_layers(G, [1], allowed[:0]) == []
