"""Hostile or odd checkpoints (issue 19): each gets one CheckpointError naming the file and the field, never a
traceback, and the architecture is refused before anything is allocated.

Every probe starts from a real file (the reference fixtures in tests/data/fixtures/, or a tiny generator saved in
our formats), changes one thing, and loads the result:

* NVIDIA .pkl: the fixture is unpickled with stand-ins for NVIDIA's persistence/EasyDict globals (as
  tests/test_checkpoints.py crafts NVIDIA-style pickles), its G_ema `_init_kwargs` or buffers changed, and
  pickled again with the same globals;
* rosinality .pt: `torch.load(weights_only=True)`, a tensor changed, `torch.save`;
* ipl .safetensors (StyleGAN2 and diffusion): the header JSON rewritten in place, the tensor data untouched.
"""
from __future__ import annotations

import copy
import json
import math
import pickle
import struct
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from ipl import generators
from ipl.core.errors import CheckpointError

# --- NVIDIA pickles: read the fixture with stand-in globals, write it back with the same ones ------------------


def _reconstruct_persistent_obj(meta):
    return _Persistent(meta)


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
_reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"


class _Persistent:
    """One NVIDIA persistent object: pickles as _reconstruct_persistent_obj(meta), like the original."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return _reconstruct_persistent_obj, (self.meta,)

    @property
    def state(self):
        return self.meta["state"]

    def child(self, *names):
        node = self
        for name in names:
            node = node.state["_modules"][name]
        return node


class EasyDict(dict):
    pass


EasyDict.__module__ = "dnnlib.util"
EasyDict.__qualname__ = "EasyDict"


class _FixtureReader(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
            return _reconstruct_persistent_obj
        if (module, name) == ("dnnlib.util", "EasyDict"):
            return EasyDict
        return super().find_class(module, name)  # torch / numpy / collections: the fixture is trusted


def _write_nvidia(path: Path, data) -> Path:
    """pickle.dump with torch_utils.persistence / dnnlib.util importable for the duration (then removed)."""
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    torch_utils = types.ModuleType("torch_utils")
    torch_utils.persistence = persistence
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.util = util
    fake = {"torch_utils": torch_utils, "torch_utils.persistence": persistence, "dnnlib": dnnlib, "dnnlib.util": util}
    saved = {name: sys.modules.get(name) for name in fake}
    sys.modules.update(fake)
    try:
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=4)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return path


@pytest.fixture(scope="module")
def nvidia_snapshot(fixtures_dir):
    with open(fixtures_dir / "nvidia_sg2ada_64.pkl", "rb") as fh:
        return _FixtureReader(fh).load()


def _kwargs(G):
    return G.state["_init_kwargs"]


def _set(key, value, group=None):
    def mutate(G):
        (_kwargs(G)[group] if group else _kwargs(G))[key] = value
    return mutate


def _top_level_clamp(G):
    """The stylegan3 repo's layout: synthesis kwargs at the top level."""
    _kwargs(G)["synthesis_kwargs"].pop("conv_clamp")
    _kwargs(G)["conv_clamp"] = "256"


def _filter(value):
    def mutate(G):
        G.child("synthesis", "b4").state["_buffers"]["resample_filter"] = value
    return mutate


def _replace_kwargs(value):
    def mutate(G):
        G.state["_init_kwargs"] = value
    return mutate


KW = "G_ema._init_kwargs"
SYN = f"{KW}.synthesis_kwargs"
NVIDIA_PROBES = [
    ("z_dim-string", _set("z_dim", "64"), f"{KW}.z_dim"),
    ("z_dim-1e10", _set("z_dim", 1e10), f"{KW}.z_dim"),
    ("z_dim-huge-int", _set("z_dim", 10 ** 10), f"{KW}.z_dim"),
    ("z_dim-negative", _set("z_dim", -64), f"{KW}.z_dim"),
    ("z_dim-list", _set("z_dim", [64]), f"{KW}.z_dim"),
    ("z_dim-missing", lambda G: _kwargs(G).pop("z_dim"), f"{KW}.z_dim"),
    ("c_dim-negative", _set("c_dim", -1), f"{KW}.c_dim"),
    ("c_dim-bool", _set("c_dim", True), f"{KW}.c_dim"),
    ("img_resolution-string", _set("img_resolution", "abc"), f"{KW}.img_resolution"),
    ("img_resolution-not-power-of-two", _set("img_resolution", 48), f"{KW}.img_resolution"),
    ("img_channels-zero", _set("img_channels", 0), f"{KW}.img_channels"),
    ("w_dim-string", _set("w_dim", "64"), f"{KW}.w_dim"),
    ("conv_clamp-string", _set("conv_clamp", "abc", "synthesis_kwargs"), f"{SYN}.conv_clamp"),
    ("conv_clamp-negative", _set("conv_clamp", -256, "synthesis_kwargs"), f"{SYN}.conv_clamp"),
    ("conv_clamp-list", _set("conv_clamp", [256], "synthesis_kwargs"), f"{SYN}.conv_clamp"),
    ("conv_clamp-nan", _set("conv_clamp", math.nan, "synthesis_kwargs"), f"{SYN}.conv_clamp"),
    ("conv_clamp-inf", _set("conv_clamp", math.inf, "synthesis_kwargs"), f"{SYN}.conv_clamp"),
    ("conv_clamp-top-level-string", _top_level_clamp, f"{KW}.conv_clamp"),
    ("channel_base-negative", _set("channel_base", -2048, "synthesis_kwargs"), f"{SYN}.channel_base"),
    ("channel_max-string", _set("channel_max", "64", "synthesis_kwargs"), f"{SYN}.channel_max"),
    ("channel_max-1e9", _set("channel_max", 10 ** 9, "synthesis_kwargs"), f"{SYN}.channel_max"),
    ("num_fp16_res-negative", _set("num_fp16_res", -1, "synthesis_kwargs"), f"{SYN}.num_fp16_res"),
    ("lr_multiplier-zero", _set("lr_multiplier", 0, "mapping_kwargs"), f"{KW}.mapping_kwargs.lr_multiplier"),
    ("lr_multiplier-string", _set("lr_multiplier", "fast", "mapping_kwargs"), f"{KW}.mapping_kwargs.lr_multiplier"),
    ("num_layers-negative", _set("num_layers", -2, "mapping_kwargs"), f"{KW}.mapping_kwargs.num_layers"),
    ("mapping_kwargs-string", _set("mapping_kwargs", "abc"), f"{KW}.mapping_kwargs"),
    ("synthesis_kwargs-list", _set("synthesis_kwargs", [1, 2]), f"{KW}.synthesis_kwargs"),
    ("init_kwargs-list", _replace_kwargs(["z_dim", 64]), KW),
    ("resample_filter-1d", _filter(torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8), "synthesis.b4.resample_filter"),
    ("resample_filter-8-taps", _filter(torch.ones(8, 8) / 64), "synthesis.b4.resample_filter"),
    ("resample_filter-nan", _filter(torch.full((4, 4), math.nan)), "synthesis.b4.resample_filter"),
    ("resample_filter-zero", _filter(torch.zeros(4, 4)), "synthesis.b4.resample_filter"),
    ("noise_const-stride0-huge", lambda G: G.child("synthesis", "b4", "conv1").state["_buffers"].__setitem__(
        "noise_const", torch.zeros(1, dtype=torch.float64).expand(10 ** 5, 10 ** 5)), "synthesis.b4.conv1.noise_const"),
]


# --- rosinality .pt ------------------------------------------------------------------------------------------

def _tensor_set(key, value):
    def mutate(sd):
        sd[key] = value() if callable(value) else value
    return mutate


def _tensor_map(key, fn):
    def mutate(sd):
        sd[key] = fn(sd[key])
    return mutate


ROSINALITY_PROBES = [
    ("const-rank-3", _tensor_map("input.input", lambda t: t[0]), "g_ema.input.input"),
    ("const-batch-2", _tensor_map("input.input", lambda t: t.repeat(2, 1, 1, 1)), "g_ema.input.input"),
    ("const-8x8", _tensor_map("input.input", lambda t: t.repeat(1, 1, 2, 2)), "g_ema.input.input"),
    ("const-stride0-1e9-channels", _tensor_set("input.input", lambda: torch.zeros(1).expand(1, 10 ** 9, 4, 4)),
     "g_ema.input.input"),
    ("style-weight-1d", _tensor_map("style.1.weight", lambda t: t.flatten()), "g_ema.style.1.weight"),
    ("style-weight-3d", _tensor_map("style.2.weight", lambda t: t[None]), "g_ema.style.2.weight"),
    ("style-bias-2d", _tensor_map("style.1.bias", lambda t: t[None]), "g_ema.style.1.bias"),
    ("style-weight-stride0-huge", _tensor_set("style.1.weight", lambda: torch.zeros(1).expand(64, 10 ** 7)),
     "g_ema.style.1.weight"),
    ("blur-kernel-1d", _tensor_map("convs.0.conv.blur.kernel", lambda t: t[0]), "g_ema.convs.0.conv.blur.kernel"),
    ("blur-kernel-0d", _tensor_set("convs.0.conv.blur.kernel", torch.tensor(1.0)), "g_ema.convs.0.conv.blur.kernel"),
    ("blur-kernel-8x8", _tensor_set("convs.0.conv.blur.kernel", torch.ones(8, 8)), "g_ema.convs.0.conv.blur.kernel"),
    ("blur-kernel-nan", _tensor_set("convs.0.conv.blur.kernel", torch.full((4, 4), math.nan)),
     "g_ema.convs.0.conv.blur.kernel"),
    ("blur-kernel-non-square", _tensor_set("convs.0.conv.blur.kernel", torch.ones(4, 3)),
     "g_ema.convs.0.conv.blur.kernel"),
    ("conv-weight-rank-4", _tensor_map("convs.0.conv.weight", lambda t: t[0]), "g_ema.convs.0.conv.weight"),
    ("torgb-weight-rank-4", _tensor_map("to_rgb1.conv.weight", lambda t: t[0]), "g_ema.to_rgb1.conv.weight"),
    ("noise-batch-2", _tensor_map("noises.noise_0", lambda t: t.repeat(2, 1, 1, 1)), "g_ema.noises.noise_0"),
    ("noise-weight-2", _tensor_set("conv1.noise.weight", torch.zeros(2)), "g_ema.conv1.noise.weight"),
    ("integer-key", _tensor_set(0, torch.zeros(1)), "g_ema"),
]


# --- ipl .safetensors (StyleGAN2 and diffusion): rewrite the header JSON -------------------------------------

def _rewrite_metadata(src: Path, dst: Path, change) -> Path:
    """Copy a safetensors file with `change(metadata)` applied to its header's __metadata__ (data untouched)."""
    raw = src.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8: 8 + n])
    change(header["__metadata__"])
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    dst.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return dst


@pytest.fixture(scope="module")
def native_file(tmp_path_factory):
    """A tiny StyleGAN2 saved in our format (16 px, 8 channels)."""
    from ipl.generators.stylegan2.network import Generator

    torch.manual_seed(0)
    G = Generator(z_dim=8, w_dim=8, c_dim=0, img_resolution=16, channels={4: 8, 8: 8, 16: 8}, mapping_layers=2)
    return generators.save(G, tmp_path_factory.mktemp("native") / "tiny.safetensors")


def _meta(key, value):
    def change(meta):
        if value is _DROP:
            meta.pop(key, None)
        else:
            meta[key] = value
    return change


def _config(**updates):
    def change(meta):
        config = json.loads(meta["ipl.config"])
        for key, value in updates.items():
            if value is _DROP:
                config.pop(key, None)
            else:
                config[key] = value
        meta["ipl.config"] = json.dumps(config)
    return change


def _channels(**by_res):
    def change(meta):
        config = json.loads(meta["ipl.config"])
        config["channels"].update({k.lstrip("r"): v for k, v in by_res.items()})
        meta["ipl.config"] = json.dumps(config)
    return change


_DROP = object()
NATIVE_PROBES = [
    ("format_version-abc", _meta("ipl.format_version", "abc"), "ipl.format_version"),
    ("format_version-negative", _meta("ipl.format_version", "-1"), "ipl.format_version"),
    ("format_version-newer", _meta("ipl.format_version", "99"), "ipl.format_version"),
    ("format_version-missing", _meta("ipl.format_version", _DROP), "ipl.format_version"),
    ("config-null", _meta("ipl.config", "null"), "ipl.config"),
    ("config-list", _meta("ipl.config", "[1, 2]"), "ipl.config"),
    ("config-not-json", _meta("ipl.config", "{not json"), "ipl.config"),
    ("config-missing", _meta("ipl.config", _DROP), "ipl.config"),
    ("metadata-list", _meta("ipl.metadata", "[]"), "ipl.metadata"),
    ("unknown-field", _config(foo=1), "ipl.config"),
    ("architecture-stylegan3", _config(architecture="stylegan3"), "ipl.config.architecture"),
    ("z_dim-1e10", _config(z_dim=1e10), "ipl.config.z_dim"),
    ("z_dim-string", _config(z_dim="8"), "ipl.config.z_dim"),
    ("w_dim-zero", _config(w_dim=0), "ipl.config.w_dim"),
    ("c_dim-bool", _config(c_dim=True), "ipl.config.c_dim"),
    ("img_resolution-48", _config(img_resolution=48), "ipl.config.img_resolution"),
    ("img_resolution-2**20", _config(img_resolution=2 ** 20), "ipl.config.img_resolution"),
    ("img_channels-negative", _config(img_channels=-3), "ipl.config.img_channels"),
    ("mapping_layers-zero", _config(mapping_layers=0), "ipl.config.mapping_layers"),
    ("mapping_layers-1e6", _config(mapping_layers=10 ** 6), "ipl.config.mapping_layers"),
    ("mapping_lr_multiplier-bool", _config(mapping_lr_multiplier=True), "ipl.config.mapping_lr_multiplier"),
    ("channels-negative", _channels(r8=-8), "ipl.config.channels.8"),
    ("channels-1e9", _channels(r8=10 ** 9), "ipl.config.channels.8"),
    ("channels-string", _channels(r4="8"), "ipl.config.channels.4"),
    ("channels-missing-resolution", lambda m: _config(channels={"4": 8, "8": 8})(m), "ipl.config.channels.16"),
    ("channels-list", _config(channels=[8, 8, 8]), "ipl.config.channels"),
    ("channels-bad-key", _channels(rabc=8), "ipl.config.channels"),
    ("too-many-parameters", _config(channels={"4": 65536, "8": 65536, "16": 65536}), "ipl.config.architecture"),
    ("conv_clamp-negative", _config(conv_clamp=-1), "ipl.config.conv_clamp"),
    ("conv_clamp-string", _config(conv_clamp="abc"), "ipl.config.conv_clamp"),
    ("num_fp16_res-negative", _config(num_fp16_res=-1), "ipl.config.num_fp16_res"),
    ("resample_filter-2d", _config(resample_filter=[[1, 3, 3, 1]]), "ipl.config.resample_filter"),
    ("resample_filter-8-taps", _config(resample_filter=[1] * 8), "ipl.config.resample_filter"),
    ("resample_filter-empty", _config(resample_filter=[]), "ipl.config.resample_filter"),
    ("resample_filter-nan", _config(resample_filter=[1, math.nan]), "ipl.config.resample_filter"),
    ("resample_filter-string", _config(resample_filter="1331"), "ipl.config.resample_filter"),
    ("resample_filter-zero-sum", _config(resample_filter=[1, -1]), "ipl.config.resample_filter"),
    ("truncation_style-cubic", _config(truncation_style="cubic"), "ipl.config.truncation_style"),
]

TINY_UNET = {"sample_size": 8, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
             "block_out_channels": [8, 8], "down_block_types": ["DownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 4}


@pytest.fixture(scope="module")
def diffusion_file(tmp_path_factory):
    """A tiny UNet saved in our diffusion format."""
    from ipl.generators.diffusion import checkpoint as ckpt

    torch.manual_seed(0)
    unet = ckpt.make_unet(TINY_UNET)
    path = tmp_path_factory.mktemp("diffusion") / "tiny.safetensors"
    record = {"family": "diffusion", "role": "source", "unet_config": dict(TINY_UNET),
              "scheduler_config": dict(ckpt.DDPM_SCHEDULER_CONFIG), "diffusion": {}, "metadata": {}}
    ckpt.save_file(path, unet, record)
    return path


def _record(change):
    def outer(meta):
        record = json.loads(meta["ipl"])
        change(record)
        meta["ipl"] = json.dumps(record)
    return outer


def _rec_set(*keys, value):
    def change(record):
        node = record
        for key in keys[:-1]:
            node = node[key]
        if value is _DROP:
            node.pop(keys[-1])
        else:
            node[keys[-1]] = value
    return _record(change)


DIFFUSION_PROBES = [
    ("no-unet_config", _rec_set("unet_config", value=_DROP), "ipl.unet_config"),
    ("no-scheduler_config", _rec_set("scheduler_config", value=_DROP), "ipl.scheduler_config"),
    ("unet_config-string", _rec_set("unet_config", value="abc"), "ipl.unet_config"),
    ("unet_config-null", _rec_set("unet_config", value=None), "ipl.unet_config"),
    ("scheduler_config-list", _rec_set("scheduler_config", value=[1]), "ipl.scheduler_config"),
    ("version-abc", _rec_set("version", value="abc"), "ipl.version"),
    ("block_out_channels-negative", _rec_set("unet_config", "block_out_channels", value=[-8, 8]),
     "ipl.unet_config.block_out_channels"),
    ("block_out_channels-strings", _rec_set("unet_config", "block_out_channels", value=["8", "8"]),
     "ipl.unet_config.block_out_channels"),
    ("too-many-parameters", _rec_set("unet_config", "block_out_channels", value=[65536, 65536]), "ipl.unet_config"),
    ("layers_per_block-string", _rec_set("unet_config", "layers_per_block", value="1"),
     "ipl.unet_config.layers_per_block"),
    ("sample_size-negative", _rec_set("unet_config", "sample_size", value=-8), "ipl.unet_config.sample_size"),
    ("down_block_types-length", _rec_set("unet_config", "down_block_types", value=["DownBlock2D"]),
     "ipl.unet_config.down_block_types"),
    ("unknown-block-type", _rec_set("unet_config", "down_block_types", value=["NoSuchBlock2D", "DownBlock2D"]),
     "ipl.unet_config"),
    ("num_train_timesteps-1e10", _rec_set("scheduler_config", "num_train_timesteps", value=1e10),
     "ipl.scheduler_config.num_train_timesteps"),
    ("beta_end-string", _rec_set("scheduler_config", "beta_end", value="0.02"), "ipl.scheduler_config.beta_end"),
    ("beta_schedule-number", _rec_set("scheduler_config", "beta_schedule", value=5),
     "ipl.scheduler_config.beta_schedule"),
    ("diffusion-string", _rec_set("diffusion", value="fast"), "ipl.diffusion"),
    ("diffusion-t0-string", _rec_set("diffusion", value={"t0": "abc"}), "ipl.diffusion.t0"),
    ("metadata-null", _rec_set("metadata", value=None), "ipl.metadata"),
    ("role-unknown", _rec_set("role", value="god"), "ipl.role"),
]


# --- the checks ----------------------------------------------------------------------------------------------

def _assert_clear(info, path: Path, field: str) -> None:
    msg = str(info.value)
    assert type(info.value) is CheckpointError, (type(info.value), msg)
    assert str(path) in msg, msg
    assert f"{field}" in msg, (field, msg)
    assert "expected" in msg and "\n" not in msg, msg


def test_crafted_files_are_faithful(tmp_path, fixtures_dir, nvidia_snapshot, native_file, diffusion_file):
    """With no mutation, each crafting path gives a file that loads exactly as the original."""
    ref = generators.load(fixtures_dir / "nvidia_sg2ada_64.pkl").state_dict()
    path = _write_nvidia(tmp_path / "same.pkl", copy.deepcopy(nvidia_snapshot))
    got = generators.load(path).state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)

    ckpt = torch.load(fixtures_dir / "rosinality_sg2_64.pt", weights_only=True)
    torch.save(ckpt, tmp_path / "same.pt")
    ref = generators.load(fixtures_dir / "rosinality_sg2_64.pt").state_dict()
    got = generators.load(tmp_path / "same.pt").state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)

    same = _rewrite_metadata(native_file, tmp_path / "same.safetensors", lambda meta: None)
    ref, got = generators.load(native_file).state_dict(), generators.load(same).state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)

    same = _rewrite_metadata(diffusion_file, tmp_path / "same_ddpm.safetensors", lambda meta: None)
    assert generators.family_for_path(same).name == "diffusion"
    generators.load_adaptable(same)


@pytest.mark.parametrize("name,mutate,field", NVIDIA_PROBES, ids=[p[0] for p in NVIDIA_PROBES])
def test_hostile_nvidia_pickle(tmp_path, nvidia_snapshot, name, mutate, field):
    data = copy.deepcopy(nvidia_snapshot)
    mutate(data["G_ema"])
    path = _write_nvidia(tmp_path / f"{name}.pkl", data)
    with pytest.raises(CheckpointError) as info:
        generators.load(path)
    _assert_clear(info, path, field)


@pytest.mark.parametrize("name,mutate,field", ROSINALITY_PROBES, ids=[p[0] for p in ROSINALITY_PROBES])
def test_hostile_rosinality_checkpoint(tmp_path, fixtures_dir, name, mutate, field):
    ckpt = torch.load(fixtures_dir / "rosinality_sg2_64.pt", weights_only=True)
    ckpt.pop("g")
    ckpt["g_ema"] = dict(ckpt["g_ema"])
    mutate(ckpt["g_ema"])
    path = tmp_path / f"{name}.pt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as info:
        generators.load(path)
    _assert_clear(info, path, field)


@pytest.mark.parametrize("name,change,field", NATIVE_PROBES, ids=[p[0] for p in NATIVE_PROBES])
def test_hostile_native_header(tmp_path, native_file, name, change, field):
    path = _rewrite_metadata(native_file, tmp_path / f"{name}.safetensors", change)
    for load in (generators.load, generators.load_adaptable):
        with pytest.raises(CheckpointError) as info:
            load(path)
        _assert_clear(info, path, field)


@pytest.mark.parametrize("name,change,field", DIFFUSION_PROBES, ids=[p[0] for p in DIFFUSION_PROBES])
def test_hostile_diffusion_header(tmp_path, diffusion_file, name, change, field):
    path = _rewrite_metadata(diffusion_file, tmp_path / f"{name}.safetensors", change)
    with pytest.raises(CheckpointError) as info:
        generators.load_adaptable(path)
    _assert_clear(info, path, field)


@pytest.mark.parametrize("config,scheduler,field", [
    ({**TINY_UNET, "block_out_channels": ["a", "b"]}, None, "config.block_out_channels"),
    ({**TINY_UNET, "layers_per_block": -1}, None, "config.layers_per_block"),
    (TINY_UNET, "[1, 2]", "scheduler config"),
    (TINY_UNET, "{not json", "scheduler config"),
    (TINY_UNET, {"num_train_timesteps": "1000"}, "scheduler config.num_train_timesteps"),
], ids=["block_out_channels", "layers_per_block", "scheduler-list", "scheduler-not-json", "timesteps-string"])
def test_hostile_diffusers_folder(tmp_path, config, scheduler, field):
    """A diffusers folder's config.json / scheduler_config.json are checked before the UNet is built."""
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", **config}))
    sched = folder / "scheduler" / "scheduler_config.json"
    sched.parent.mkdir()
    sched.write_text(scheduler if isinstance(scheduler, str) else json.dumps(scheduler or {}))
    with pytest.raises(CheckpointError) as info:
        generators.load_adaptable(folder)
    where = folder / "unet" / "config.json" if field.startswith("config") else sched
    _assert_clear(info, where, field)


def test_cli_says_one_line_and_exits_2(tmp_path, nvidia_snapshot, native_file):
    """`ipl sample FILE` on two hostile files: exit 2, one 'Error: ...' line naming file and field, no traceback."""
    data = copy.deepcopy(nvidia_snapshot)
    _kwargs(data["G_ema"])["z_dim"] = 1e10
    cases = [(_write_nvidia(tmp_path / "zdim.pkl", data), f"{KW}.z_dim"),
             (_rewrite_metadata(native_file, tmp_path / "null.safetensors", _meta("ipl.config", "null")),
              "ipl.config")]
    ipl = Path(sys.executable).with_name("ipl")
    command = [str(ipl)] if ipl.is_file() else [sys.executable, "-c", "from ipl.commands.cli import main; main()"]
    for path, field in cases:
        result = subprocess.run(command + ["sample", str(path), "--n", "1", "--out", str(tmp_path / "grid.png")],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, (result.returncode, result.stderr)
        err = result.stderr.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert err.startswith("Error: ") and str(path) in err and field in err, err
        assert not (tmp_path / "grid.png").exists()
