"""`--layer-map`: which parameters unfreezing W+ row i trains ('reference' = the NADA and IPL trainers' map).

The expected lists are written from the reference trainers' indexing (ZSSGAN.determine_opt_layers in
rinongal/StyleGAN-nada and Picsart-AI-Research/IPL-Zero-Shot-Generative-Model-Adaptation): the probe ranks the
n_latent W+ rows and row i picks entry i of rosinality's [conv1, to_rgb1] + convs, and the trainer then unfreezes
every parameter of that module. rosinality's StyledConv holds conv.weight, conv.modulation.{weight,bias},
noise.weight, activate.bias; its ToRGB conv.weight, conv.modulation.{weight,bias}, bias.
"""
import math

import pytest
import torch

from ipl import generators
from ipl.core.errors import IPLError
from ipl.generators.stylegan2.adapter import StyleGAN2Adapter
from ipl.generators.stylegan2.export import rosinality_state
from ipl.generators.stylegan2.network import Generator
from ipl.method import stage2
from ipl.method.freezing import parameters_of_layers, select_layers
from ipl.method.stage2 import Stage2Settings, Stage2Trainer
from tiny_clip import tiny_clip  # noqa: F401  (fixture)

STYLED_CONV = ("conv.weight", "conv.modulation.weight", "conv.modulation.bias", "noise.weight", "activate.bias")
TO_RGB = ("conv.weight", "conv.modulation.weight", "conv.modulation.bias", "bias")


def reference_rows(resolution: int) -> list[str]:
    """Row i -> the rosinality module the reference trainers unfreeze: [conv1, to_rgb1] + convs, indexed by i."""
    log_size = int(math.log2(resolution))
    n_latent = log_size * 2 - 2                      # rosinality Generator.n_latent
    convs = [f"convs.{j}" for j in range((log_size - 2) * 2)]  # two StyledConvs per resolution 8..R
    rows = ["conv1", "to_rgb1"] + convs
    assert len(rows) == n_latent
    return rows


def rosinality_params(module: str) -> list[str]:
    return [f"{module}.{p}" for p in (TO_RGB if "rgb" in module else STYLED_CONV)]


def tiny(resolution: int, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    channels = {2 ** i: 4 for i in range(2, int(math.log2(resolution)) + 1)}
    return Generator(z_dim=8, w_dim=8, img_resolution=resolution, mapping_layers=1, channels=channels)


def tagged(G: Generator) -> dict[int, int]:
    """Fill parameter k of G with the value k + 1; returns {id(parameter): k + 1}."""
    tags = {}
    with torch.no_grad():
        for k, p in enumerate(G.parameters()):
            p.fill_(k + 1)
            tags[id(p)] = k + 1
    return tags


def our_module_names(G: Generator) -> dict[int, str]:
    """id(parameter) -> the name of the synthesis module (layer) it belongs to."""
    out = {}
    for name, module in G.named_modules():
        if name.count(".") == 2 and name.startswith("synthesis.b"):  # synthesis.bR.conv0 / conv1 / torgb
            for p in module.parameters():
                out[id(p)] = name
    return out


def test_reference_map_is_the_reference_trainers_indexing_at_1024():
    G = tiny(1024)
    A = StyleGAN2Adapter(G)
    assert A.num_layers() == G.num_ws == 18
    tags = tagged(G)
    ros = rosinality_state(G)  # our parameters under rosinality's names (the exporter the fixtures test)
    rows = reference_rows(1024)
    for i, module in enumerate(rows):
        expected = {int(ros[key].flatten()[0]) for key in rosinality_params(module)}
        got = {tags[id(p)] for p in A.layer_parameters(i, "reference")}
        assert got == expected, f"row {i} ({module})"
        assert len(expected) == len(rosinality_params(module))  # every parameter of the module, nothing else
    names = our_module_names(G)
    by_row = [sorted({names[id(p)] for p in A.layer_parameters(i)}) for i in range(G.num_ws)]
    assert by_row[0] == ["synthesis.b4.conv1"] and by_row[1] == ["synthesis.b4.torgb"]
    assert by_row[2] == ["synthesis.b8.conv0"] and by_row[3] == ["synthesis.b8.conv1"]
    assert by_row[16] == ["synthesis.b1024.conv0"] and by_row[17] == ["synthesis.b1024.conv1"]
    # One module per row, each once: every convolution, the 4x4 ToRGB, nothing else.
    flat = [n for row in by_row for n in row]
    assert len(flat) == len(set(flat)) == 18 and not any("torgb" in n for n in flat[2:])


@pytest.mark.parametrize("ckpt", ["rosinality_sg2_64.pt", "nvidia_sg2ada_64.pkl", "ours"])
def test_reference_map_for_every_checkpoint_format(fixtures_dir, tmp_path, ckpt):
    """rosinality, NVIDIA and our own files load into one network; the map picks the same modules for all."""
    if ckpt == "ours":
        path = generators.save(generators.load(fixtures_dir / "rosinality_sg2_64.pt"), tmp_path / "g.safetensors")
    else:
        path = fixtures_dir / ckpt
    G = generators.load(path)
    A = StyleGAN2Adapter(G)
    rows = reference_rows(64)
    assert A.num_layers() == len(rows) == 10
    names = our_module_names(G)
    ours = {"conv1": "synthesis.b4.conv1", "to_rgb1": "synthesis.b4.torgb"}
    ours.update({f"convs.{2 * k + j}": f"synthesis.b{8 * 2 ** k}.conv{j}" for k in range(4) for j in (0, 1)})
    for i, module in enumerate(rows):
        assert {names[id(p)] for p in A.layer_parameters(i)} == {ours[module]}, f"row {i}"
    if ckpt.startswith("rosinality"):  # and the tensors are the very ones of the file's module
        sd = torch.load(path, weights_only=True)["g_ema"]
        for i, module in enumerate(rows):
            file_values = sorted(sd[k].flatten().tolist() for k in rosinality_params(module))
            got = sorted(p.detach().flatten().tolist() for p in A.layer_parameters(i))
            assert file_values == got, f"row {i} ({module})"


def test_no_row_trains_nothing_except_semantic_last_row():
    A = StyleGAN2Adapter(tiny(64))
    allowed = A.trainable_parameters()
    n = A.num_layers()
    for i in range(n):
        assert parameters_of_layers(A, [i], allowed, "reference"), f"reference row {i} is empty"
    for i in range(n - 1):
        assert parameters_of_layers(A, [i], allowed, "semantic"), f"semantic row {i} is empty"
    # The last row modulates only the last ToRGB, which the semantic map never trains: it never competes.
    assert parameters_of_layers(A, [n - 1], allowed, "semantic") == []
    assert select_layers(A, [], [], None, None, allowed=allowed, layer_map="semantic") == list(range(n - 1))
    assert select_layers(A, [], [], None, None, allowed=allowed, layer_map="reference") == list(range(n))
    with pytest.raises(IPLError, match="layer map"):
        A.layer_parameters(0, "nonsense")


def _trainer(A, clip, layer_map, layers, **kw):
    s = Stage2Settings(method="nada", layers=layers, layer_map=layer_map, layer_batch=2, **kw)
    return Stage2Trainer(A, [clip], "a solid shape", "a striped shape", None, s)


@pytest.mark.parametrize("layers", [None, 18])
def test_no_freezing_trains_what_the_reference_unfreezes(tiny_clip, layers):
    """k = n_latent (NADA's --auto_layer_k 18 recipe) or 'all': conv1, to_rgb1 and every conv; not the constant
    input, the mapping network, nor any other ToRGB."""
    G = tiny(1024)
    tr = _trainer(StyleGAN2Adapter(G), tiny_clip, "reference", layers)
    syn = tr.G_t.G.synthesis
    expected = {id(p) for m in [syn.b4.conv1, syn.b4.torgb] + syn.conv_layers()[1:] for p in m.parameters()}
    assert {id(p) for p in tr.params} == expected
    assert [p for p in tr.params] == parameters_of_layers(tr.G_t, range(18), tr.params, "reference")
    semantic = _trainer(StyleGAN2Adapter(G), tiny_clip, "semantic", layers)
    syn = semantic.G_t.G.synthesis
    assert {id(p) for p in semantic.params} == {id(p) for m in syn.conv_layers() for p in m.parameters()}


@pytest.mark.parametrize("layer_map,trained", [("reference", "b4.torgb"), ("semantic", "b8.conv0")])
def test_a_step_trains_the_mapped_module_only(tiny_clip, monkeypatch, layer_map, trained):
    """Row 1 picked: the reference trains to_rgb1 (b4.torgb); the semantic map the convolution row 1 modulates."""
    A = StyleGAN2Adapter(tiny(16))
    src = {k: v.clone() for k, v in A.state_dict().items()}
    monkeypatch.setattr(stage2, "select_layers", lambda *a, **k: [1])
    tr = _trainer(A, tiny_clip, layer_map, 1, lr=0.01)
    for _ in range(2):
        assert tr.step()["layers"] == [1]
    changed = {k for k, v in tr.G_t.state_dict().items() if not torch.equal(v, src[k])}
    assert changed and all(k.startswith(f"G.synthesis.{trained}.") for k in changed), sorted(changed)


class _StubClip:
    """encode_images: mean colour through a fixed projection (enough for a probe's gradient)."""
    weight = 1.0

    def __init__(self):
        self.proj = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))

    def encode_images(self, images):
        return images.mean(dim=(2, 3)) @ self.proj


def test_semantic_never_picks_a_row_with_nothing_to_train():
    G = tiny(16)
    with torch.no_grad():  # the last row (only the last ToRGB reads it) moves most in the probe
        G.synthesis.b16.torgb.affine.weight.mul_(1000)
    A = StyleGAN2Adapter(G).requires_grad_(False)
    n = A.num_layers()
    clip, feat = _StubClip(), torch.randn(1, 4, generator=torch.Generator().manual_seed(1))
    lat = A.sample_latents(4, torch.Generator().manual_seed(2))
    allowed = A.trainable_parameters()
    # The probe ranks the last row first: the reference map trains it (convs[-1] = b16.conv1).
    assert select_layers(A, [clip], [feat], 1, lat, allowed=allowed, layer_map="reference") == [n - 1]
    for k in (1, 3):
        chosen = select_layers(A, [clip], [feat], k, lat, allowed=allowed, layer_map="semantic")
        assert len(chosen) == k and n - 1 not in chosen
        names = our_module_names(G)
        modules = {names[id(p)] for p in parameters_of_layers(A, chosen, allowed, "semantic")}
        assert len(modules) == k, modules  # k real layers are trained


def test_cli_flag_is_recorded_and_checked(tmp_path):
    import json

    from click.testing import CliRunner

    from ipl.commands.cli import cli
    from ipl.core.config import AdaptConfig
    from tiny_clip import write_tiny_clip_files

    with pytest.raises(IPLError, match="--layer-map"):
        AdaptConfig(target_text="x", layer_map="rows").validate()
    torch.manual_seed(0)
    G = Generator(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2, channels={4: 16, 8: 16, 16: 8})
    gen = generators.save(G, tmp_path / "g.safetensors")
    cfg_path, _ = write_tiny_clip_files(tmp_path / "clip")
    args = ["adapt", "--source", str(gen), "--source-text", "a solid shape", "--target", "a striped shape",
            "--clip", f"{cfg_path}:none", "--method", "nada", "--iters", "3", "--layers", "1", "--layer-every", "1",
            "--layer-batch", "2", "--sample-every", "0", "--sample-n", "2", "--device", "cpu", "--quiet"]
    bad = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "bad"), "--layer-map", "rows"])
    assert bad.exit_code == 2 and not (tmp_path / "bad").exists()
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, args + ["--out", str(out), "--layer-map", "semantic"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert json.loads((out / "config.json").read_text())["settings"]["layer_map"] == "semantic"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    picked = [r["layers"] for r in log if r["stage"] == 2]
    assert len(picked) == 3 and all(len(p) == 1 and p[0] != G.num_ws - 1 for p in picked)
