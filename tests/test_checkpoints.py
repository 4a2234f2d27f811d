"""Checkpoint safety and bad-input errors: malicious pickles never run; every broken file gets one clear error."""
from __future__ import annotations

import builtins
import os
import pickle
import shutil
import sys
import types

import pytest
import torch

from ipl import generators
from ipl.generators.stylegan2.checkpoints import sniff_format
from ipl.core.errors import CheckpointError, IPLError, UnsafePickleError


# --- malicious payloads -------------------------------------------------------------------------------------

class _Payload:
    """Pickles as `func(*args)`: what an attacker's __reduce__ would run on load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _write_pickle(path, obj, protocol=4):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    return path


def _payloads(marker):
    cmd = f"touch {marker}"
    return {
        "os.system": _Payload(os.system, cmd),
        "eval": _Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
    }


@pytest.mark.parametrize("kind", ["os.system", "eval", "builtins.exec"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_code_running_pickle_is_refused_and_never_runs(tmp_path, kind, protocol):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[kind]
    expected_name = {"os.system": "system", "eval": "builtins.eval", "builtins.exec": "builtins.exec"}[kind]
    path = _write_pickle(tmp_path / "evil.pkl", {"G_ema": payload, "x": 1}, protocol)
    with pytest.raises(UnsafePickleError, match=expected_name.replace(".", r"\.")) as info:
        generators.load(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_arbitrary_module_import_is_refused(tmp_path, monkeypatch):
    """A pickle naming a global in a module with import-time side effects: the module is never imported."""
    marker = tmp_path / "imported"
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "ipl_evil_module_xyz.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef f(*a):\n    open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(mod_dir))
    import ipl_evil_module_xyz  # build the pickle with the real function ...

    path = _write_pickle(tmp_path / "evil.pkl", {"G_ema": _Payload(ipl_evil_module_xyz.f, 1)})
    marker.unlink()
    del sys.modules["ipl_evil_module_xyz"]  # ... then forget the module
    with pytest.raises(UnsafePickleError, match=r"ipl_evil_module_xyz\.f"):
        generators.load(path)
    assert not marker.exists() and "ipl_evil_module_xyz" not in sys.modules


def test_malicious_torch_zip_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": _payloads(marker)["os.system"]}, path)
    assert sniff_format(path) == "torch"
    with pytest.raises(UnsafePickleError, match="system"):
        generators.load(path)
    assert not marker.exists()


# --- fake NVIDIA / TensorFlow pickles (built with stand-in modules, loaded without them) --------------------

@pytest.fixture
def fake_nvidia(monkeypatch):
    """Stand-in torch_utils.persistence / dnnlib modules so tests can write NVIDIA-shaped pickles."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        return meta

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence
    tflib_network = types.ModuleType("dnnlib.tflib.network")

    class Network:
        def __init__(self, name):
            self.name = name

    Network.__module__ = "dnnlib.tflib.network"
    Network.__qualname__ = "Network"
    tflib_network.Network = Network
    for name, mod in {"torch_utils": torch_utils, "torch_utils.persistence": persistence,
                      "dnnlib": types.ModuleType("dnnlib"), "dnnlib.tflib": types.ModuleType("dnnlib.tflib"),
                      "dnnlib.tflib.network": tflib_network}.items():
        monkeypatch.setitem(sys.modules, name, mod)

    def record(class_name, modules=None, params=None):
        meta = {"type": "class", "version": 6, "module_src": "# omitted\n", "class_name": class_name,
                "state": {"training": False, "_parameters": params or {}, "_buffers": {},
                          "_modules": modules or {}, "_init_kwargs": {}}}
        return _Payload(_reconstruct_persistent_obj, meta)

    return types.SimpleNamespace(record=record, Network=Network)


def test_stylegan3_pickle_says_not_supported(tmp_path, fake_nvidia):
    rec = fake_nvidia.record
    synthesis = rec("SynthesisNetwork", {"input": rec("SynthesisInput"), "L0_36_512": rec("SynthesisLayer")})
    G = rec("Generator", {"mapping": rec("MappingNetwork"), "synthesis": synthesis})
    path = _write_pickle(tmp_path / "sg3.pkl", {"G": G, "D": rec("Discriminator"), "G_ema": G})
    with pytest.raises(CheckpointError, match="StyleGAN3.*not supported yet"):
        generators.load(path)


def test_tensorflow_pickle_is_read_by_the_tf_loader(tmp_path, fake_nvidia):
    """A TF network pickle goes to the TensorFlow reader (tests/test_nvidia_tf.py), which names what is wrong."""
    net = fake_nvidia.Network("G")
    path = _write_pickle(tmp_path / "tf.pkl", (net, net, net), protocol=2)
    with pytest.raises(CheckpointError, match=r"Gs\.version: expected 3 or 4"):
        generators.load(path)
    # A TF network hidden inside a PyTorch network pickle is still refused.
    path = _write_pickle(tmp_path / "mixed.pkl", {"G_ema": fake_nvidia.record("Generator"), "x": net})
    with pytest.raises(CheckpointError, match="TensorFlow network object"):
        generators.load(path)


def test_discriminator_only_files(tmp_path, fake_nvidia):
    path = _write_pickle(tmp_path / "d.pkl", {"D": fake_nvidia.record("Discriminator")})
    with pytest.raises(CheckpointError, match="only a discriminator"):
        generators.load(path)
    torch.save({"d": {"convs.0.0.weight": torch.zeros(1)}}, tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match="only a discriminator") as info:
        generators.load(tmp_path / "d.pt")
    assert str(tmp_path / "d.pt") in str(info.value)


# --- broken files -------------------------------------------------------------------------------------------

def test_missing_empty_and_garbage(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        generators.load(tmp_path / "nope.pt")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        generators.load(tmp_path / "empty.pkl")
    (tmp_path / "junk.pt").write_bytes(os.urandom(1000).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    with pytest.raises(CheckpointError, match="unrecognised"):
        generators.load(tmp_path / "junk.pt")


@pytest.mark.parametrize("name", ["rosinality_sg2_64.pt", "nvidia_sg2ada_64.pkl"])
def test_truncated_and_corrupt(tmp_path, fixtures_dir, name):
    data = (fixtures_dir / name).read_bytes()
    truncated = tmp_path / f"trunc_{name}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        generators.load(truncated)
    assert str(truncated) in str(info.value)
    corrupt = tmp_path / f"corrupt_{name}"
    mid = len(data) // 3
    corrupt.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid: mid + 4096]) + data[mid + 4096:])
    with pytest.raises(CheckpointError) as info:
        generators.load(corrupt)
    assert str(corrupt) in str(info.value)


def test_wrong_keys_and_shape_mismatch(tmp_path, fixtures_dir):
    ckpt = torch.load(fixtures_dir / "rosinality_sg2_64.pt", weights_only=True)
    sd = dict(ckpt["g_ema"])
    del sd["convs.3.noise.weight"]
    torch.save({"g_ema": sd, "latent_avg": ckpt["latent_avg"]}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"convs\.3\.noise\.weight"):
        generators.load(tmp_path / "missing.pt")

    sd = dict(ckpt["g_ema"])
    sd["convs.2.conv.modulation.weight"] = torch.zeros(5, 64)
    torch.save({"g_ema": sd, "latent_avg": ckpt["latent_avg"]}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="shape") as info:
        generators.load(tmp_path / "shape.pt")
    assert "shape.pt" in str(info.value)

    torch.save({"weights": sd}, tmp_path / "nokeys.pt")
    with pytest.raises(CheckpointError, match="g_ema"):
        generators.load(tmp_path / "nokeys.pt")

    torch.save({"g_ema": sd, "latent_avg": torch.zeros(3)}, tmp_path / "avg.pt")
    with pytest.raises(CheckpointError, match="latent_avg"):
        generators.load(tmp_path / "avg.pt")


def test_native_format_errors(tmp_path, fixtures_dir):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"ipl.format": "something"})
    with pytest.raises(CheckpointError, match="not an ipl StyleGAN2 generator"):
        generators.load(tmp_path / "other.safetensors")
    G = generators.load(fixtures_dir / "nvidia_sg2ada_64.pkl")
    path = generators.save(G, tmp_path / "g.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        generators.load(tmp_path / "cut.safetensors")
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic writer left no temporary file behind


def test_cuda_without_gpu_says_so(fixtures_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(IPLError, match="no CUDA GPU"):
        generators.load(fixtures_dir / "rosinality_sg2_64.pt", device="cuda")


def test_format_detected_by_content_not_name(tmp_path, fixtures_dir):
    """A .pkl renamed .pt and a .pt renamed .pkl still load."""
    shutil.copy(fixtures_dir / "nvidia_sg2ada_64.pkl", tmp_path / "model.pt")
    shutil.copy(fixtures_dir / "rosinality_sg2_64.pt", tmp_path / "model.pkl")
    assert sniff_format(tmp_path / "model.pt") == "pickle"
    assert sniff_format(tmp_path / "model.pkl") == "torch"
    assert generators.load(tmp_path / "model.pt").config["truncation_style"] == "lerp"
    assert generators.load(tmp_path / "model.pkl").config["truncation_style"] == "affine"


def test_rosinality_variants_args_namespace_and_legacy_torch_format(tmp_path, fixtures_dir):
    """Real training checkpoints carry argparse 'args'; old ones use torch's legacy (non-zip) format."""
    import argparse

    ckpt = torch.load(fixtures_dir / "rosinality_sg2_64.pt", weights_only=True)
    ref = generators.load(fixtures_dir / "rosinality_sg2_64.pt").state_dict()
    ckpt["args"] = argparse.Namespace(size=64, n_mlp=2, channel_multiplier=1)
    torch.save(ckpt, tmp_path / "args.pt")
    torch.save(ckpt, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert sniff_format(tmp_path / "legacy.pt") == "torch"
    for name in ("args.pt", "legacy.pt"):
        sd = generators.load(tmp_path / name).state_dict()
        assert all(torch.equal(sd[k], ref[k]) for k in ref), name


def test_load_adaptable_from_folder(tmp_path, fixtures_dir):
    G = generators.load(fixtures_dir / "nvidia_sg2ada_64_cond_clamp.pkl")
    generators.save(G, tmp_path / "generator.safetensors", metadata={"target": "x"})
    A = generators.load_adaptable(tmp_path)
    assert A.G.c_dim == 4 and A.G.metadata["target"] == "x"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no generator file"):
        generators.load_adaptable(tmp_path / "empty")
