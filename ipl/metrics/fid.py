"""FID, KID and Inception Score through torch-fidelity: its Inception-v3, its resizing, its metric maths.

Images are streamed batch by batch (a run at 1024 px cannot hold 5000 samples in memory), so this module
drives torch-fidelity's feature extractor itself and hands the collected features to torch-fidelity's own
metric functions; nothing of the metrics is re-implemented here.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

import torch
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

from ipl.core.errors import CheckpointError, IPLError, WeightsNotFoundError
from ipl.core.weights import WeightsFile, resolve_weights

INCEPTION = WeightsFile(name="Inception-v3 (torch-fidelity, for FID/KID/IS)", url=URL_INCEPTION_V3,
                        option="--inception-weights")
INCEPTION_METRICS = ("fid", "kid", "is")
# torch-fidelity's own choice of feature layer per metric.
LAYER = {m: FeatureExtractorInceptionV3.get_default_feature_layer_for_metric(k)
         for m, k in (("fid", "fid"), ("kid", "kid"), ("is", "isc"))}


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 [N, 3, H, W], rounding as when they are saved as 8-bit PNGs."""
    assert images.ndim == 4 and images.shape[1] == 3, f"expected [N, 3, H, W], got {tuple(images.shape)}"
    if images.dtype == torch.uint8:
        return images
    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def file_digest(path: Union[str, os.PathLike]) -> str:
    """SHA-256 of a file, so that the results JSON names the exact weights used."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Metric maths: thin calls into torch-fidelity, on features the caller collected.

def frechet_distance(features_1: torch.Tensor, features_2: torch.Tensor) -> float:
    """FID between two feature sets [N, D] (torch-fidelity's statistics and Frechet distance)."""
    assert features_1.ndim == 2 and features_1.shape[1] == features_2.shape[1], "features must be [N, D] alike"
    if min(len(features_1), len(features_2)) < 2:
        raise IPLError("FID needs at least 2 samples on each side (use a larger --n / --ref folder).")
    s1 = fid_features_to_statistics(features_1.detach().double().cpu())
    s2 = fid_features_to_statistics(features_2.detach().double().cpu())
    return float(fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID])


def kernel_distance(features_1: torch.Tensor, features_2: torch.Tensor, subset_size: int = 1000,
                    subsets: int = 100, seed: int = 2020) -> tuple[float, float, int]:
    """KID (mean, std over subsets, subset size used); the subset shrinks to the smaller set if needed."""
    size = min(subset_size, len(features_1), len(features_2))
    if size < 2:
        raise IPLError("KID needs at least 2 samples on each side (use a larger --n / --ref folder).")
    out = kid_features_to_metric(features_1.detach().double().cpu(), features_2.detach().double().cpu(),
                                 kid_subset_size=size, kid_subsets=subsets, rng_seed=seed, verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD]), size


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 2020) -> tuple[float, float]:
    """Inception Score (mean, std over splits) of unbiased Inception logits [N, 1008]."""
    if len(logits) < splits:
        raise IPLError(f"IS with {splits} splits needs at least {splits} samples (use a larger --n).")
    out = isc_features_to_metric(logits.detach().cpu(), splits=splits, shuffle=True, rng_seed=seed)
    return float(out[KEY_METRIC_ISC_MEAN]), float(out[KEY_METRIC_ISC_STD])


# ----------------------------------------------------------------------------------------------------------
# The feature extractor.

class _RandomInitInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-v3 that keeps its random initial weights: for tests / smoke runs only."""

    def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: D102 - deliberately ignores
        return None


class _PreloadedInceptionV3(_RandomInitInceptionV3):
    """torch-fidelity's Inception-v3 built without reading its weights file; load_inception then loads the
    tensors it read itself in weights-only mode (torch.nn.Module.load_state_dict)."""


@dataclass
class InceptionInfo:
    """Which Inception weights produced the features (written to the results JSON)."""

    path: Optional[str]        # the weights file, None for random weights
    sha256: Optional[str]
    random_weights: bool


def load_inception(layers: Iterable[str], weights: Optional[str] = None, allow_random: bool = False,
                   download: bool = True, device: Union[str, torch.device] = "cpu",
                   seed: int = 0) -> tuple[FeatureExtractorInceptionV3, InceptionInfo]:
    """torch-fidelity's Inception-v3 with the FID weights (local file, hub cache or download).

    `allow_random`: when no weights are found (and none were named), random weights instead; numbers from
    them must be labelled as not results.
    """
    layers = sorted(set(layers))
    try:
        path = resolve_weights(INCEPTION, weights, download=download)
    except WeightsNotFoundError:
        if not allow_random or weights is not None:
            raise
        path = None
    if path is None:  # missing and allowed: random weights, labelled by the caller
        with tempfile.TemporaryDirectory() as tmp, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            empty = Path(tmp) / "empty.pth"
            torch.save({}, empty)
            net = _RandomInitInceptionV3("inception-v3-random-init", layers,
                                         feature_extractor_weights_path=str(empty))
        info = InceptionInfo(path=None, sha256=None, random_weights=True)
    else:
        import pickle

        # torch-fidelity would torch.load the file with weights_only=False (a pickle in it could run code):
        # read it here in weights-only mode, build the network without a file, then load the tensors.
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            noise = ("Weights only load failed", "Please file an issue", "Check the documentation")
            why = "; ".join(ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(noise))
            raise CheckpointError(f"Inception weights {path}: refused to load: the file holds more than tensors "
                                  f"and plain data ({why or 'not a weights-only torch file'}); "
                                  f"it may have been tampered with, and nothing from it was executed. Expected "
                                  f"torch-fidelity's {INCEPTION.filename} from {INCEPTION.url}.") from None
        except (RuntimeError, KeyError, OSError, ValueError, EOFError) as e:
            raise CheckpointError(f"Inception weights {path} could not be loaded ({e}); expected torch-fidelity's "
                                  f"{INCEPTION.filename} from {INCEPTION.url}.") from e
        try:
            with tempfile.TemporaryDirectory() as tmp:
                empty = Path(tmp) / "empty.pth"
                torch.save({}, empty)
                net = _PreloadedInceptionV3("inception-v3-compat", layers, feature_extractor_weights_path=str(empty))
            torch.nn.Module.load_state_dict(net, state, strict=True)
        except (RuntimeError, KeyError, OSError, ValueError, TypeError, AttributeError) as e:
            raise CheckpointError(f"Inception weights {path} could not be loaded ({e}); expected torch-fidelity's "
                                  f"{INCEPTION.filename} from {INCEPTION.url}.") from e
        info = InceptionInfo(path=str(path), sha256=file_digest(path), random_weights=False)
    net.requires_grad_(False).eval().to(device)
    return net, info


class InceptionFeatures:
    """Collects Inception features of streamed image batches, one list per requested layer."""

    def __init__(self, net: FeatureExtractorInceptionV3):
        self.net = net                         # torch-fidelity extractor (uint8 input, resizes to 299 itself)
        self.layers = list(net.features_list)  # e.g. ['2048', 'logits_unbiased']
        self._chunks: dict[str, list[torch.Tensor]] = {k: [] for k in self.layers}

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def update(self, images: torch.Tensor) -> None:
        """Add a batch of images in [-1, 1] (or uint8)."""
        out = self.net(quantize(images).to(self.device))
        for name, feats in zip(self.layers, out):
            self._chunks[name].append(feats.float().cpu())

    def __len__(self) -> int:
        return sum(len(c) for c in self._chunks[self.layers[0]]) if self.layers else 0

    def features(self, layer: str) -> torch.Tensor:
        """All features of one layer so far, [N, D]."""
        return torch.cat(self._chunks[layer]) if self._chunks[layer] else torch.zeros(0, 0)


def inception_metrics(subject: InceptionFeatures, reference: Optional[InceptionFeatures], metrics: Iterable[str],
                      kid_subset_size: int = 1000, kid_subsets: int = 100, is_splits: int = 10,
                      seed: int = 2020) -> dict[str, float]:
    """FID / KID / IS of the subject's features (FID and KID against the reference's)."""
    metrics = list(metrics)
    out: dict[str, float] = {}
    if any(m in ("fid", "kid") for m in metrics) and reference is None:
        raise IPLError("FID and KID need reference images: pass --ref DIR (a folder of real target or source "
                       "images).")
    if "fid" in metrics:
        out["fid"] = frechet_distance(subject.features(LAYER["fid"]), reference.features(LAYER["fid"]))
    if "kid" in metrics:
        mean, std, size = kernel_distance(subject.features(LAYER["kid"]), reference.features(LAYER["kid"]),
                                          subset_size=kid_subset_size, subsets=kid_subsets, seed=seed)
        out.update({"kid": mean, "kid_std": std, "kid_subset_size": size})
    if "is" in metrics:
        mean, std = inception_score(subject.features(LAYER["is"]), splits=is_splits, seed=seed)
        out.update({"is": mean, "is_std": std})
    return out

