"""Read NVIDIA's original TensorFlow StyleGAN2 pickles (`stylegan2-*-config-f.pkl`) without TensorFlow.

Such a file is `pickle.dump((G, D, Gs))`: three `dnnlib.tflib.network.Network` objects whose state is a plain
dict (`version`, `name`, `static_kwargs`, `components`, `build_module_src`, `build_func_name`, `variables`: a
list of (name, numpy value)). The restricted unpickler maps `Network` to `TFNetworkRecord`, a record of that
dict, and allows nothing else but numpy's array / scalar / dtype reconstructors. `build_module_src` (the
network's TensorFlow source, which TensorFlow's own loader would exec) is never looked at.

The generator read is `Gs` (element 2, the moving average); `G` (element 0) is the training snapshot. Its
variables map to our StyleGAN2 (written from the maths of the TF layout):

    mapping/Dense{i}/weight [in, out]        -> mapping.fc{i}.weight = transpose; bias as is
    dlatent_avg [w]                          -> mapping.w_avg (truncation: lerp toward it)
    synthesis/4x4/Const/const [1, C, 4, 4]   -> synthesis.b4.const = [0]
    .../Conv, Conv1, ToRGB weight [k,k,in,out] -> [out, in, k, k]
    .../Conv0_up weight                      -> the same after a spatial flip (TF applies it as a transposed conv)
    .../mod_weight [w, in], mod_bias [in]    -> affine.weight = transpose, affine.bias = mod_bias + 1
    synthesis/noise{k} [1, 1, r, r]          -> b4.conv1 <- noise0; b{2^j}.conv0 <- noise{2j-5}, .conv1 <- noise{2j-4}

Resolution, widths and mapping depth come from the variables' shapes, cross-checked with `static_kwargs`.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ipl.core.errors import CheckpointError
from ipl.generators.stylegan2.network import Generator
from ipl.generators.stylegan2.rosinality import load_state
from ipl.generators.stylegan2.safe_pickle import (RestrictedUnpickler, _np_dtype, _np_reconstruct, _np_scalar,
                                                  safe_load_pickle)
from ipl.generators.stylegan2.validate import (MAX_DIM, MAX_MAPPING_LAYERS, Described, check_filter,
                                               check_generator_config, check_int, field_error, is_int, is_real,
                                               require)

FORMAT = "nvidia-tf-pkl"
SUPPORTED_VERSIONS = (3, 4)  # dnnlib.tflib Network state versions of the stylegan / stylegan2 TF code
ADA_VERSION = 5              # stylegan2-ada (TF): refused

# Gs.static_kwargs keys: the ones read here, and the ones that only affect TF's graph or its run-time defaults.
_READ_KEYS = ("num_channels", "resolution", "label_size", "latent_size", "dlatent_size", "mapping_layers",
              "mapping_fmaps", "mapping_lrmul", "mapping_nonlinearity", "normalize_latents", "architecture",
              "nonlinearity", "resample_kernel", "mapping_func", "synthesis_func")
_IGNORED_KEYS = ("fmap_base", "fmap_decay", "fmap_min", "fmap_max", "dlatent_broadcast", "truncation_psi",
                 "truncation_cutoff", "truncation_psi_val", "truncation_cutoff_val", "dlatent_avg_beta",
                 "style_mixing_prob", "randomize_noise", "is_training", "is_validation", "is_template_graph",
                 "components", "return_dlatents", "fused_modconv", "dtype", "func_name")


class TFNetworkRecord:
    """Stand-in for dnnlib.tflib.network.Network: the pickled state dict, as data (nothing of it is run)."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _reconstruct(cls, shape, dtype_code):
    # numpy always pickles an array as _reconstruct(ndarray, (0,), b'b') + its state: refuse any other shape,
    # which would only allocate memory before the state arrives.
    if tuple(shape) != (0,):
        raise CheckpointError(f"numpy array record with an initial shape {list(shape)}, expected [0]")
    return _np_reconstruct(cls, shape, dtype_code)


TF_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("dnnlib.tflib.network", "Network"): TFNetworkRecord,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _np_dtype,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}


class TFUnpickler(RestrictedUnpickler):
    """The restricted unpickler with the TensorFlow pickle allow-list (the network stand-in and numpy only)."""

    allowed = TF_ALLOWED_GLOBALS
    kind = "NVIDIA TensorFlow StyleGAN2 pickles"


def _state(net: Any, field: str, path: Path) -> dict:
    require(isinstance(net, TFNetworkRecord), path, field, "a TensorFlow network (dnnlib.tflib.network.Network)",
            net)
    require(isinstance(net.state, dict), path, f"{field} (state)", "a dict of network state", net.state)
    return net.state


def _variables(state: dict, field: str, path: Path) -> dict[str, Any]:
    items = state.get("variables")
    require(isinstance(items, (list, tuple)), path, f"{field}.variables", "a list of (name, value) pairs", items)
    out: dict[str, Any] = {}
    for i, item in enumerate(items):
        require(isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str), path,
                f"{field}.variables[{i}]", "a (name, value) pair", item)
        require(item[0] not in out, path, f"{field}.variables[{i}]", "a name not used before", item[0])
        out[item[0]] = item[1]
    return out


def _check_version(state: dict, field: str, path: Path) -> None:
    version = state.get("version")
    if (is_int(version) and version == ADA_VERSION) or "input_shapes" in state:
        raise CheckpointError(
            f"{path}: {field}.version: expected {' or '.join(map(str, SUPPORTED_VERSIONS))} (NVIDIA's stylegan2 "
            f"TensorFlow release, stylegan2-*-config-f.pkl), got {version!r}: this is a StyleGAN2-ADA TensorFlow "
            f"pickle, which is not supported. Use the stylegan2-ada-pytorch release of the network, or convert it "
            f"with NVIDIA's stylegan2-ada-pytorch legacy.py on a machine you trust and load the converted .pkl.")
    require(is_int(version) and version in SUPPORTED_VERSIONS, path, f"{field}.version",
            f"{' or '.join(map(str, SUPPORTED_VERSIONS))} (a dnnlib.tflib network state)", version)


def _build_func(state: dict, field: str, expected: str, path: Path) -> None:
    name = state.get("build_func_name")
    if not (isinstance(name, str) and name == expected):
        v1 = isinstance(name, str) and name in ("G_style", "G_synthesis")
        hint = " (a StyleGAN v1 network, which is not supported)" if v1 else ""
        raise field_error(path, f"{field}.build_func_name", f"'{expected}' (a StyleGAN2 generator){hint}", name)


def _tensor(value: Any, field: str, path: Path, rank: int) -> torch.Tensor:
    """A variable's value (an ndarray, or a numpy scalar for 0-d ones) as a float32 tensor of the given rank."""
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        raise field_error(path, field, "a floating-point numpy array", value)
    require(value.ndim == rank, path, field, f"a {rank}-D array", value)
    return torch.from_numpy(np.array(value, dtype=np.float32, copy=True))


def _static_kwargs(state: dict, path: Path) -> dict:
    kwargs = state.get("static_kwargs")
    kwargs = {} if kwargs is None else kwargs
    require(isinstance(kwargs, dict), path, "Gs.static_kwargs", "a dict of network settings", kwargs)
    for key in kwargs:
        if key not in _READ_KEYS and key not in _IGNORED_KEYS:
            raise field_error(path, "Gs.static_kwargs", f"only StyleGAN2 (config-e/f) generator settings "
                              f"({', '.join(_READ_KEYS + _IGNORED_KEYS)})", Described(f"the unknown key {key!r}"))
    return kwargs


def _static(kwargs: dict, key: str, derived: Any, path: Path, what: str = "") -> None:
    """A static_kwargs value the shapes already say: typed, and equal to what the variables give."""
    if kwargs.get(key) is None:
        return
    value = kwargs[key]
    require(is_int(value) and int(value) == derived, path, f"Gs.static_kwargs.{key}",
            f"{derived} (what the variables' shapes give{what})", value)


def convert_tf(data: Any, path: Path) -> Generator:
    """Build our Generator from the `Gs` of an unpickled NVIDIA TensorFlow StyleGAN2 pickle."""
    path = Path(path)
    if not (isinstance(data, tuple) and len(data) == 3):
        raise field_error(path, "top level", "a tuple (G, D, Gs) of TensorFlow networks (NVIDIA's TensorFlow "
                          "StyleGAN2 pickle)", data if not isinstance(data, TFNetworkRecord) else
                          "a single TensorFlow network")
    gs = _state(data[2], "Gs", path)
    _check_version(gs, "Gs", path)
    _build_func(gs, "Gs", "G_main", path)
    components = gs.get("components")
    require(isinstance(components, dict) and "synthesis" in components and "mapping" in components, path,
            "Gs.components", "a dict with 'synthesis' and 'mapping' networks", components)
    syn = _state(components["synthesis"], "Gs.components.synthesis", path)
    mapn = _state(components["mapping"], "Gs.components.mapping", path)
    _build_func(syn, "Gs.components.synthesis", "G_synthesis_stylegan2", path)
    _build_func(mapn, "Gs.components.mapping", "G_mapping", path)
    kwargs = _static_kwargs(gs, path)
    # build_module_src is deliberately never read.

    own = _variables(gs, "Gs", path)
    sv = _variables(syn, "Gs.components.synthesis", path)
    mv = _variables(mapn, "Gs.components.mapping", path)
    used: set[tuple[str, str]] = set()

    def var(where: dict, prefix: str, name: str, rank: int) -> torch.Tensor:
        if name not in where:
            raise CheckpointError(f"{path}: {prefix}: has no variable '{name}'; the file is incomplete or not a "
                                  f"StyleGAN2 config-e/f generator")
        used.add((prefix, name))
        return _tensor(where[name], f"{prefix}/{name}", path, rank)

    # What the settings say, where our network cannot follow them.
    label_size = kwargs.get("label_size", 0)
    require(is_int(label_size) and 0 <= label_size <= MAX_DIM, path, "Gs.static_kwargs.label_size",
            f"an integer in 0..{MAX_DIM}", label_size)
    if label_size:
        raise CheckpointError(f"{path}: Gs.static_kwargs.label_size: expected 0 (an unconditional generator; "
                              f"conditional TensorFlow StyleGAN2 generators are not supported), got {label_size}")
    for key, expected in (("architecture", "skip"), ("nonlinearity", "lrelu"), ("mapping_nonlinearity", "lrelu"),
                          ("normalize_latents", True), ("mapping_func", "G_mapping"),
                          ("synthesis_func", "G_synthesis_stylegan2")):
        if kwargs.get(key) is not None and not (type(kwargs[key]) is type(expected) and kwargs[key] == expected):
            raise field_error(path, f"Gs.static_kwargs.{key}", f"{expected!r} (the StyleGAN2 config-e/f generator; "
                              f"others are not supported)", kwargs[key])
    taps = check_filter(kwargs.get("resample_kernel", [1, 3, 3, 1]), path, "Gs.static_kwargs.resample_kernel")
    lrmul = kwargs.get("mapping_lrmul", 0.01)
    require(is_real(lrmul) and lrmul > 0, path, "Gs.static_kwargs.mapping_lrmul", "a positive finite number", lrmul)

    # Sizes from the variables' names and shapes.
    dense = sorted(int(m.group(1)) for k in mv for m in [re.fullmatch(r"Dense(\d+)/weight", k)] if m)
    require(bool(dense) and dense == list(range(len(dense))) and len(dense) <= MAX_MAPPING_LAYERS, path,
            "Gs.components.mapping.variables", f"Dense0/weight .. Dense{{n-1}}/weight, 1 <= n <= "
            f"{MAX_MAPPING_LAYERS}", [f"Dense{i}/weight" for i in dense])
    n_fc = len(dense)
    res_names = {int(m.group(1)) for k in sv for m in [re.fullmatch(r"(\d+)x\1/.*", k)] if m}
    require(bool(res_names) and 4 in res_names, path, "Gs.components.synthesis.variables",
            "4x4/... layers (a StyleGAN2 synthesis network)", sorted(res_names))
    resolution = max(res_names)
    log2 = int(math.log2(resolution))
    require(resolution == 2 ** log2 and res_names == {2 ** i for i in range(2, log2 + 1)}, path,
            "Gs.components.synthesis.variables", "one block per power of two from 4x4 to the resolution",
            sorted(res_names))
    check_int(resolution, 4, MAX_DIM, path, "Gs.components.synthesis (resolution)")

    w_avg = var(own, "Gs", "dlatent_avg", 1)
    fc = [(var(mv, "Gs.components.mapping", f"Dense{i}/weight", 2), var(mv, "Gs.components.mapping",
           f"Dense{i}/bias", 1)) for i in range(n_fc)]
    z_dim, w_dim = fc[0][0].shape[0], w_avg.shape[0]
    const = var(sv, "Gs.components.synthesis", "4x4/Const/const", 4)
    require(const.shape[0] == 1, path, "Gs.components.synthesis/4x4/Const/const", "an array of shape [1, C, 4, 4]",
            const)
    state: dict[str, torch.Tensor] = {"mapping.w_avg": w_avg, "synthesis.b4.const": const[0]}
    for i, (w, b) in enumerate(fc):
        state[f"mapping.fc{i}.weight"], state[f"mapping.fc{i}.bias"] = w.t(), b
    channels: dict[int, int] = {}
    img_channels = None

    def layer(tf_name: str, ours: str, conv: bool, flip: bool = False) -> int:
        S = "Gs.components.synthesis"
        w = var(sv, S, f"{tf_name}/weight", 4)
        if flip:
            w = w.flip(0, 1)
        state[f"{ours}.weight"] = w.permute(3, 2, 0, 1)
        state[f"{ours}.bias"] = var(sv, S, f"{tf_name}/bias", 1)
        state[f"{ours}.affine.weight"] = var(sv, S, f"{tf_name}/mod_weight", 2).t()
        state[f"{ours}.affine.bias"] = var(sv, S, f"{tf_name}/mod_bias", 1) + 1
        if conv:
            state[f"{ours}.noise_strength"] = var(sv, S, f"{tf_name}/noise_strength", 0)
        return w.shape[3]

    def noise(k: int, ours: str) -> None:
        value = var(sv, "Gs.components.synthesis", f"noise{k}", 4)
        require(value.shape[:2] == (1, 1), path, f"Gs.components.synthesis/noise{k}", "an array of shape [1, 1, R, R]",
                value)
        state[f"{ours}.noise_const"] = value[0, 0]

    for j in range(2, log2 + 1):
        r = 2 ** j
        if r == 4:
            channels[4] = layer("4x4/Conv", "synthesis.b4.conv1", True)
            noise(0, "synthesis.b4.conv1")
        else:
            layer(f"{r}x{r}/Conv0_up", f"synthesis.b{r}.conv0", True, flip=True)
            channels[r] = layer(f"{r}x{r}/Conv1", f"synthesis.b{r}.conv1", True)
            noise(2 * j - 5, f"synthesis.b{r}.conv0")
            noise(2 * j - 4, f"synthesis.b{r}.conv1")
        img_channels = layer(f"{r}x{r}/ToRGB", f"synthesis.b{r}.torgb", False)
    for prefix, where in (("Gs", own), ("Gs.components.synthesis", sv), ("Gs.components.mapping", mv)):
        extra = [k for k in where if (prefix, k) not in used and not (prefix == "Gs" and k == "lod")]
        if extra:
            raise field_error(path, f"{prefix}.variables", "only the variables of a StyleGAN2 config-e/f generator "
                              "(skip architecture)", _names(extra))

    _static(kwargs, "resolution", resolution, path)
    _static(kwargs, "num_channels", img_channels, path)
    _static(kwargs, "latent_size", z_dim, path)
    _static(kwargs, "dlatent_size", w_dim, path)
    _static(kwargs, "mapping_layers", n_fc, path)
    _static(kwargs, "mapping_fmaps", w_dim, path, "; ipl's mapping layers are as wide as w")
    kw = check_generator_config(
        dict(z_dim=z_dim, w_dim=w_dim, c_dim=0, img_resolution=resolution, img_channels=img_channels,
             mapping_layers=n_fc, mapping_lr_multiplier=float(lrmul), channels=channels, conv_clamp=None,
             num_fp16_res=0, resample_filter=taps, truncation_style="lerp"),
        path, names={
            "z_dim": "Gs.components.mapping/Dense0/weight (shape[0])", "w_dim": "Gs/dlatent_avg (shape[0])",
            "img_resolution": "Gs.components.synthesis (resolution)",
            "img_channels": f"Gs.components.synthesis/{resolution}x{resolution}/ToRGB/weight (shape[3])",
            "mapping_layers": "Gs.components.mapping/Dense* (number of layers)",
            "mapping_lr_multiplier": "Gs.static_kwargs.mapping_lrmul",
            "channels": "Gs.components.synthesis/{res}x{res}/Conv1/weight (shape[3])",
            "resample_filter": "Gs.static_kwargs.resample_kernel"})
    G = Generator(**kw)
    load_state(G, state, path)
    return G


def _names(names: list[str]) -> Described:
    return Described(", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else ""))


def load_nvidia_tf_pickle(path: Path) -> Generator:
    """Read an NVIDIA TensorFlow StyleGAN2 pickle with the restricted unpickler and convert its Gs."""
    data = safe_load_pickle(path, unpickler=TFUnpickler, expected="an NVIDIA TensorFlow StyleGAN2 pickle")
    return convert_tf(data, Path(path))
