"""NVIDIA's original TensorFlow StyleGAN2 pickles, read without TensorFlow and without running anything in them.

The fixture `nvidia_tf_sg2_64.pkl` and its reference outputs (from NVIDIA's own TF->PyTorch converter) are
described in tests/data/fixtures/README_tf.md.
"""
from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil
import sys
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ipl import generators
from ipl.commands.cli import cli
from ipl.core.errors import CheckpointError, UnsafePickleError
from ipl.generators.stylegan2.checkpoints import pickle_format, sniff_format
from ipl.generators.stylegan2.nvidia_tf import TFNetworkRecord, TFUnpickler
from ipl.generators.stylegan2.safe_pickle import safe_load_pickle

FIXTURE = "nvidia_tf_sg2_64.pkl"
ATOL = 1e-4


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    return torch.load(fixtures_dir / "nvidia_tf_sg2_64_io.pt", weights_only=True)


@pytest.fixture(scope="module")
def loaded(fixtures_dir):
    return generators.load(fixtures_dir / FIXTURE)


def _max_err(a, b):
    return (a - b).abs().max().item()


# --- the reference outputs ---------------------------------------------------------------------------------

def test_fixture_matches_nvidia_converter(loaded, reference):
    G = loaded
    assert G.metadata["converted_from"]["format"] == "nvidia-tf-pkl"
    assert (G.z_dim, G.w_dim, G.img_resolution, G.num_ws) == (64, 64, 64, 10)
    assert G.config["mapping_layers"] == 8  # absent from static_kwargs: the TF default
    assert {int(k): v for k, v in G.config["channels"].items()} == {r: c for r, c in reference["channels"]}
    assert torch.equal(G.mapping.w_avg, reference["w_avg"])
    with torch.no_grad():
        for T in reference["truncations"]:
            ws = G.mapping(reference["z"], None, truncation_psi=T)
            assert _max_err(ws, reference[f"ws_trunc{T}"]) <= ATOL
            out = G(reference["z"], None, truncation_psi=T, noise_mode="const")
            assert _max_err(out, reference[f"out_trunc{T}"]) <= ATOL, T
        ws = reference["ws"]
        assert not torch.equal(ws[:, 0], ws[:, 1])  # a different w in every row: the row routing is tested
        assert _max_err(G.synthesis(ws, noise_mode="const"), reference["out_synthesis_ws"]) <= ATOL


def test_stored_noise_is_routed_like_tf(loaded, reference):
    shapes = [tuple(s) for s in loaded.noise_shapes()]
    assert len(shapes) == len(reference["noise"]) == 9
    noise = [n for n in reference["noise"]]
    with torch.no_grad():
        explicit = loaded(reference["z"], None, noise=noise)
        const = loaded(reference["z"], None, noise_mode="const")
    assert torch.equal(explicit, const)


# --- TF-format pickles written in the tests (a stand-in dnnlib.tflib.network module) -----------------------

@pytest.fixture
def tf_writer(monkeypatch, fixtures_dir):
    """Read the fixture into plain records; write (mutated) copies back in NVIDIA's TF pickle layout."""
    mod = types.ModuleType("dnnlib.tflib.network")

    class Network:
        pass

    Network.__module__ = "dnnlib.tflib.network"
    Network.__qualname__ = "Network"
    mod.Network = Network
    for name, m in {"dnnlib": types.ModuleType("dnnlib"), "dnnlib.tflib": types.ModuleType("dnnlib.tflib"),
                    "dnnlib.tflib.network": mod}.items():
        monkeypatch.setitem(sys.modules, name, m)

    def to_network(rec):
        net = Network()
        state = dict(rec.state)
        state["components"] = {k: to_network(v) for k, v in state["components"].items()}
        net.__dict__.update(state)
        return net

    def read():
        data = safe_load_pickle(fixtures_dir / FIXTURE, unpickler=TFUnpickler)
        return [to_network(rec) for rec in data]

    def write(path, nets, protocol=4):
        with open(path, "wb") as fh:
            pickle.dump(tuple(nets) if isinstance(nets, list) else nets, fh, protocol=protocol)
        return path

    return types.SimpleNamespace(read=read, write=write, Network=Network)


def _set_var(net, name, value):
    net.variables = [(k, value if k == name else v) for k, v in net.variables]


class _Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_gs_is_read_not_the_training_snapshot(tmp_path, tf_writer, loaded, reference):
    G, D, Gs = tf_writer.read()
    swapped = generators.load(tf_writer.write(tmp_path / "swapped.pkl", [Gs, D, G]))
    with torch.no_grad():
        out = swapped(reference["z"], None, noise_mode="const")
    assert _max_err(out, reference["out_trunc1.0"]) > 1e-2


def test_zero_d_variables_as_arrays_or_scalars(tmp_path, tf_writer, loaded, reference):
    nets = tf_writer.read()
    syn = nets[2].components["synthesis"]
    scalars = [k for k, v in syn.variables if isinstance(v, np.generic)]
    assert scalars and all(k.endswith("noise_strength") for k in scalars)  # the fixture stores numpy scalars
    syn.variables = [(k, np.array(v) if isinstance(v, np.generic) else v) for k, v in syn.variables]
    nets[2].variables = [(k, np.array(v) if isinstance(v, np.generic) else v) for k, v in nets[2].variables]
    G = generators.load(tf_writer.write(tmp_path / "arrays.pkl", nets))
    for (k, a), (_, b) in zip(G.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_protocol_3_reads_the_same(tmp_path, tf_writer, loaded):
    G = generators.load(tf_writer.write(tmp_path / "p3.pkl", tf_writer.read(), protocol=3))
    for (k, a), (_, b) in zip(G.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_detected_by_content_not_name(tmp_path, fixtures_dir):
    shutil.copy(fixtures_dir / FIXTURE, tmp_path / "model.pt")
    assert sniff_format(tmp_path / "model.pt") == "pickle"
    assert pickle_format(tmp_path / "model.pt") == "nvidia-tf-pkl"
    assert pickle_format(fixtures_dir / "nvidia_sg2ada_64.pkl") == "nvidia-pkl"
    assert generators.load(tmp_path / "model.pt").img_resolution == 64
    assert generators.family_for_path(tmp_path / "model.pt").name == "stylegan2"


# --- hostile and broken files ------------------------------------------------------------------------------

def _marker_payloads(marker):
    return {"os.system": (_Payload(os.system, f"touch {marker}"), "system"),
            "eval": (_Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"), r"builtins\.eval"),
            "exec": (_Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"), r"builtins\.exec")}


@pytest.mark.parametrize("kind", ["os.system", "eval", "exec"])
def test_payload_in_a_variable_is_refused(tmp_path, tf_writer, kind):
    marker = tmp_path / "pwned"
    payload, name = _marker_payloads(marker)[kind]
    nets = tf_writer.read()
    _set_var(nets[2].components["synthesis"], "4x4/Conv/noise_strength", payload)
    path = tf_writer.write(tmp_path / "evil.pkl", nets)
    with pytest.raises(UnsafePickleError, match=name) as info:
        generators.load(path)
    assert str(path) in str(info.value) and "Nothing from the file was executed" in str(info.value)
    assert not marker.exists()


def test_build_module_src_is_never_run(tmp_path, tf_writer, loaded):
    marker = tmp_path / "pwned"
    nets = tf_writer.read()
    for net in (nets[2], nets[2].components["synthesis"], nets[2].components["mapping"]):
        net.build_module_src = f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n"
    G = generators.load(tf_writer.write(tmp_path / "src.pkl", nets))
    assert not marker.exists()
    assert torch.equal(G.synthesis.b64.torgb.weight, loaded.synthesis.b64.torgb.weight)
    # The source given as a payload object instead of a string: refused before anything runs.
    nets[2].build_module_src = _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()")
    with pytest.raises(UnsafePickleError, match=r"builtins\.exec"):
        generators.load(tf_writer.write(tmp_path / "src2.pkl", nets))
    assert not marker.exists()


@pytest.mark.parametrize("extra", ["function", "ordered_dict", "fifth_element"])
def test_extra_global_is_refused(tmp_path, tf_writer, extra):
    import collections

    marker = tmp_path / "pwned"
    nets = tf_writer.read()
    if extra == "function":  # a bare reference to a dangerous function, stored in the state
        nets[2].static_kwargs = dict(nets[2].static_kwargs, hook=os.system)
        name = "system"
    elif extra == "ordered_dict":  # allowed in PyTorch network pickles, not in TF ones
        nets[2].static_kwargs = collections.OrderedDict(nets[2].static_kwargs)
        name = r"collections\.OrderedDict"
    else:
        nets = tuple(nets) + (_Payload(os.system, f"touch {marker}"),)
        name = "system"
    path = tf_writer.write(tmp_path / "extra.pkl", nets)
    with pytest.raises(UnsafePickleError, match=name) as info:
        generators.load(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_truncated_and_corrupt(tmp_path, fixtures_dir):
    data = (fixtures_dir / FIXTURE).read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 40):
        path = tmp_path / f"trunc{cut}.pkl"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
            generators.load(path)
        assert str(path) in str(info.value)
    # A pickle has no checksum (flipped bytes inside an array only change values; registry downloads are
    # SHA-checked): damaged structure is what the loader can see.
    path = tmp_path / "corrupt.pkl"
    path.write_bytes(data[:11] + bytes(b ^ 0xFF for b in data[11:75]) + data[75:])
    with pytest.raises(CheckpointError) as info:
        generators.load(path)
    assert str(path) in str(info.value)


def test_stylegan2_ada_tf_pickle_is_refused_clearly(tmp_path, tf_writer):
    nets = tf_writer.read()
    for net in nets:
        net.__dict__.update(version=5, input_shapes=[[None, 64], [None, 0]], output_shapes=[[None, 3, 64, 64]],
                            input_names=["latents_in", "labels_in"], output_names=["images_out"])
    path = tf_writer.write(tmp_path / "ada_tf.pkl", nets, protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(CheckpointError, match=r"Gs\.version: expected 3 or 4 .*got 5.*StyleGAN2-ADA") as info:
        generators.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("case", ["not_a_tuple", "label_size", "architecture", "unknown_kwarg", "resolution",
                                  "missing_variable", "extra_variable", "int_variable", "stylegan1", "version"])
def test_bad_fields_name_the_field(tmp_path, tf_writer, case):
    nets = tf_writer.read()
    gs, syn = nets[2], nets[2].components["synthesis"]
    expected = {
        "not_a_tuple": r"top level: expected a tuple \(G, D, Gs\)",
        "label_size": r"Gs\.static_kwargs\.label_size: expected 0 .*got 10",
        "architecture": r"Gs\.static_kwargs\.architecture: expected 'skip'.*got 'resnet'",
        "unknown_kwarg": r"Gs\.static_kwargs: expected only StyleGAN2 .*got the unknown key 'conv_clamp'",
        "resolution": r"Gs\.static_kwargs\.resolution: expected 64 .*got 128",
        "missing_variable": r"Gs\.components\.synthesis: has no variable '32x32/Conv1/bias'",
        "extra_variable": r"Gs\.components\.synthesis\.variables: expected only the variables .*got 64x64/Skip/weight",
        "int_variable": r"Gs\.components\.synthesis/4x4/Conv/bias: expected a floating-point numpy array",
        "stylegan1": r"Gs\.components\.synthesis\.build_func_name: expected 'G_synthesis_stylegan2'.*StyleGAN v1",
        "version": r"Gs\.version: expected 3 or 4 .*got 7",
    }[case]
    if case == "not_a_tuple":
        nets = {"Gs": gs}
    elif case in ("label_size", "architecture", "resolution"):
        value = {"label_size": 10, "architecture": "resnet", "resolution": 128}[case]
        gs.static_kwargs = dict(gs.static_kwargs, **{case: value})
    elif case == "unknown_kwarg":
        gs.static_kwargs = dict(gs.static_kwargs, conv_clamp=256)
    elif case == "missing_variable":
        syn.variables = [(k, v) for k, v in syn.variables if k != "32x32/Conv1/bias"]
    elif case == "extra_variable":
        syn.variables = list(syn.variables) + [("64x64/Skip/weight", np.zeros((1, 1, 3, 3), np.float32))]
    elif case == "int_variable":
        _set_var(syn, "4x4/Conv/bias", np.zeros(32, np.int32))
    elif case == "stylegan1":
        syn.build_func_name = "G_synthesis"
    else:
        gs.version = 7
    path = tf_writer.write(tmp_path / f"{case}.pkl", nets)
    with pytest.raises(CheckpointError, match=expected) as info:
        generators.load(path)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize("field", ["version", "build_func_name", "architecture", "components", "variables"])
def test_arrays_where_values_are_expected_give_one_clear_error(tmp_path, tf_writer, field):
    """numpy arrays are the one non-plain type the allow-list admits: in any field they are one CheckpointError."""
    nets = tf_writer.read()
    arr = np.zeros(3, np.float32)
    if field == "architecture":
        nets[2].static_kwargs = dict(nets[2].static_kwargs, architecture=arr)
    else:
        setattr(nets[2], field, arr)
    path = tf_writer.write(tmp_path / f"{field}.pkl", nets)
    with pytest.raises(CheckpointError, match=f"{field}: expected") as info:
        generators.load(path)
    assert str(info.value).startswith(str(path))


def test_records_hold_no_behaviour():
    rec = TFNetworkRecord()
    rec.__setstate__({"version": 4})
    assert rec.state == {"version": 4}


# --- the product: registry, sample, adapt, export -------------------------------------------------------------

def test_registry_entries_are_readable():
    from ipl.registry import get_source

    for name in ("tf-ffhq", "church", "car", "cat", "horse"):
        entry = get_source(name)
        assert entry.readable and entry.format == "nvidia-tf-pkl", name


def test_download_sample_adapt_export_church(tmp_path, monkeypatch, fixtures_dir, loaded, reference):
    """`ipl models download church` (from a mirror holding the fixture), then sample, adapt and export it."""
    from tiny_clip import write_tiny_clip_files

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(fixtures_dir / FIXTURE, mirror / "church.pkl")
    monkeypatch.setenv("IPL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IPL_MIRROR", mirror.as_uri())
    monkeypatch.delenv("IPL_OFFLINE", raising=False)  # the download is a file:// copy from the mirror
    runner = CliRunner()
    res = runner.invoke(cli, ["models", "download", "church", "--quiet"])
    assert res.exit_code == 0, (res.output, res.exception)
    cached = tmp_path / "home" / "models" / "church.pkl"
    assert cached.read_bytes() == (fixtures_dir / FIXTURE).read_bytes()

    res = runner.invoke(cli, ["sample", "church", "--seeds", "0-1", "--out", str(tmp_path / "grid.png")])
    assert res.exit_code == 0, (res.output, res.exception)
    assert (tmp_path / "grid.png").is_file()

    cfg_path, _ = write_tiny_clip_files(tmp_path / "clip")
    out = tmp_path / "run"
    args = ["adapt", "--source", "church", "--target", "a ghost church", "--clip", f"{cfg_path}:none",
            "--iters-prompt", "1", "--batch-prompt", "2", "--iters", "1", "--batch", "2", "--layers", "1",
            "--layer-batch", "2", "--sample-every", "1", "--sample-n", "2", "--out", str(out), "--device", "cpu",
            "--quiet"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, (res.output, res.exception)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["status"] == "complete"

    res = runner.invoke(cli, ["export", str(out), "--format", "rosinality", "--source", "--out",
                              str(tmp_path / "church_rosinality.pt")])
    assert res.exit_code == 0, (res.output, res.exception)
    exported = generators.load(tmp_path / "church_rosinality.pt")
    with torch.no_grad():
        z = reference["z"]
        a = exported(z, None, truncation_psi=0.7, noise_mode="const")
        b = loaded(z, None, truncation_psi=0.7, noise_mode="const")
    assert _max_err(a, b) <= ATOL
    assert _max_err(b, reference["out_trunc0.7"]) <= ATOL
