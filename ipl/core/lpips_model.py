"""LPIPS v0.1 (the lpips package's linear layers) on its ImageNet backbone, loaded from a local weights file.

Shared by `ipl eval` (intra-LPIPS diversity) and `ipl invert` (the projector's perceptual distance): the backbone
comes from torchvision's weights file found by ipl.core.weights (never a silent random backbone unless asked).
"""
from __future__ import annotations

import warnings
from typing import Optional, Union

import lpips
import torch
import torchvision

from ipl.core.errors import CheckpointError, WeightsNotFoundError
from ipl.core.weights import WeightsFile, resolve_weights


# The ImageNet backbone each LPIPS variant is built on (torchvision's weights; the package ships only the
# linear layers on top).
BACKBONES = {
    "alex": (torchvision.models.alexnet, torchvision.models.AlexNet_Weights.IMAGENET1K_V1),
    "vgg": (torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1),
    "squeeze": (torchvision.models.squeezenet1_1, torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1),
}


def backbone_weights(net: str) -> WeightsFile:
    """The torchvision weights file the LPIPS backbone `net` needs."""
    if net not in BACKBONES:
        raise CheckpointError(f"unknown LPIPS network {net!r}: expected one of {sorted(BACKBONES)}.")
    return WeightsFile(name=f"LPIPS backbone ({net}, torchvision ImageNet)", url=BACKBONES[net][1].url,
                       option="--lpips-weights")


def load_lpips(net: str = "alex", weights: Optional[str] = None, allow_random: bool = False,
               download: bool = True, device: Union[str, torch.device] = "cpu",
               seed: int = 0) -> tuple[lpips.LPIPS, Optional[str]]:
    """LPIPS v0.1 (package linear layers) with its ImageNet backbone loaded from a local file.

    Returns (model, path of the backbone weights or None). `allow_random`: when the backbone weights are not
    found (and none were named), keep a random backbone (tests and smoke runs only; numbers are not results).
    """
    spec = backbone_weights(net)
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")   # torchvision's 'pretrained' deprecation inside lpips
        torch.manual_seed(seed)
        model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    try:
        path = resolve_weights(spec, weights, download=download)
    except WeightsNotFoundError:
        if not allow_random or weights is not None:
            raise
        path = None  # missing and allowed: keep the random backbone (the caller labels the numbers)
    if path is not None:
        builder = BACKBONES[net][0]
        tv_model = builder(weights=None)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            tv_model.load_state_dict(state)
        except Exception as e:  # wrong file / truncated download
            raise CheckpointError(f"LPIPS backbone weights {path} do not fit torchvision's {builder.__name__} "
                                  f"({type(e).__name__}: {e}); expected {spec.filename} from {spec.url}.") from e
        _copy_backbone(model.net, tv_model.features)
        path = str(path)
    model.eval().requires_grad_(False).to(device)
    return model, path


def _copy_backbone(slices: torch.nn.Module, features: torch.nn.Sequential) -> None:
    """Copy torchvision `features[i]` into the lpips slices, which name their layers by that same index i."""
    copied = 0
    for s in slices.children():
        for name, layer in s.named_children():
            layer.load_state_dict(features[int(name)].state_dict())
            copied += 1
    assert copied > 0, "lpips backbone has no layers to copy into"
