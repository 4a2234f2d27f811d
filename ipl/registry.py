"""Known source generators: where to get them, their format, and per-model defaults for a run."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ipl.config import default_layers
from ipl.errors import IPLError

REPO_ROOT = Path(__file__).resolve().parent.parent

_ADA = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/{}.pkl"
_NGC = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/stylegan2-{}.pkl"
_TF = "https://nvlabs-fi-cdn.nvidia.com/stylegan2/networks/stylegan2-{}-config-f.pkl"


@dataclass(frozen=True)
class SourceEntry:
    """One known source generator and the defaults a run takes from it."""

    name: str                         # registry key, e.g. "ffhq"
    url: Optional[str]                # download URL (None: shipped with the project)
    format: str                       # "nvidia-pkl" | "nvidia-tf-pkl" | "ipl" (our safetensors+JSON)
    resolution: int                   # output resolution in pixels
    source_text: str                  # default --source-text
    layers: int                       # default --layers (adaptive freezing k)
    truncation: float = 1.0           # training truncation (stage 1 and 2; the paper uses 1.0)
    sample_truncation: float = 0.7    # a good default for `ipl sample`
    clip: tuple[str, ...] = ("ViT-B-32:openai",)  # default --clip specs
    sha256: Optional[str] = None      # expected SHA-256 if published (none upstream; recorded on first use)
    local_path: Optional[str] = None  # shipped file, relative to the repository root
    readable: bool = True             # False: format not read yet (listed for completeness)
    description: str = ""
    filename: str = field(default="", compare=False)  # cache file name
    # AdaptConfig defaults this source changes (e.g. fewer iterations for the CPU toy); a flag given on the
    # command line always wins. Keys are AdaptConfig field names.
    run_defaults: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        """JSON-able dict."""
        d = asdict(self)
        d["clip"] = list(self.clip)
        return d


def _sg2(name: str, url: str, fmt: str, res: int, text: str, desc: str, readable: bool = True) -> SourceEntry:
    return SourceEntry(name=name, url=url, format=fmt, resolution=res, source_text=text,
                       layers=default_layers(res), description=desc, readable=readable,
                       filename=f"{name}.pkl")


# Stage-2 settings a diffusion source takes unless given on the command line: the StyleGAN lr (0.0016, Adam
# beta1 0) wrecks a UNet. The numbers live with the diffusion generator (generators/diffusion REGISTRY "stage2").
_DIFFUSION_RUN_KEYS = ("lr", "beta1", "beta2", "batch", "iters")
# For a diffusion model given by path its size is unknown: only the optimiser settings of a real DDPM apply.
_DIFFUSION_PATH_KEYS = ("lr", "beta1", "beta2")


def _diffusion_run_defaults(name: str, keys: tuple[str, ...] = _DIFFUSION_RUN_KEYS) -> dict:
    """AdaptConfig defaults of a diffusion registry entry, from generators.diffusion.REGISTRY[name]["stage2"]."""
    from generators.diffusion import REGISTRY as DIFFUSION_REGISTRY

    stage2 = DIFFUSION_REGISTRY[name].get("stage2", {})
    return {k: stage2[k] for k in keys if k in stage2}


_ENTRIES = [
    SourceEntry(name="toy", url=None, format="ipl", resolution=64, source_text="a solid shape",
                layers=default_layers(64), truncation=1.0, sample_truncation=1.0, clip=("toy",),
                local_path="assets/toy/generator.safetensors", filename="generator.safetensors",
                description="tiny StyleGAN2 of solid shapes on a light background (shipped, offline)",
                # Two CPU cores: ~3 s per stage-2 step at 64 px, so fewer and cheaper steps than the paper.
                # The toy defaults were chosen on `dark` alone, by the toy CLIP's own verdict and the grids
                # (README, "IPL vs NADA"), and benchmarked with a probe every step. The length term asks for the
                # amount of change a direction-only loss does not; length_ratio is the shipped toy CLIP's,
                # measured by generators.toy.clip_model.delta_ratio, recorded in assets/toy/clip_build.json.
                # freeze_noise: trained noise strengths drew speckle that a small CLIP rewards. augment_views:
                # paired crops darkened the background further on `dark` (0.57 -> 0.45 mean lightness), and so did
                # 600 iterations instead of 300 (0.45 -> 0.33; the adapt then takes ~77 s on 2 idle cores).
                run_defaults={"iters_prompt": 100, "batch_prompt": 16, "iters": 600, "layer_batch": 4,
                              "layer_every": 1, "sample_every": 50, "length_weight": 1.0,
                              "length_ratio": 0.6909, "freeze_noise": True, "augment_views": 4}),
    # stylegan2-ada-pytorch
    _sg2("ffhq", _ADA.format("ffhq"), "nvidia-pkl", 1024, "photo", "FFHQ faces, stylegan2-ada-pytorch"),
    _sg2("metfaces", _ADA.format("metfaces"), "nvidia-pkl", 1024, "painting",
         "MetFaces portraits, stylegan2-ada-pytorch"),
    _sg2("afhqcat", _ADA.format("afhqcat"), "nvidia-pkl", 512, "cat", "AFHQ cats, stylegan2-ada-pytorch"),
    _sg2("afhqdog", _ADA.format("afhqdog"), "nvidia-pkl", 512, "dog", "AFHQ dogs, stylegan2-ada-pytorch"),
    _sg2("afhqwild", _ADA.format("afhqwild"), "nvidia-pkl", 512, "animal",
         "AFHQ wild animals, stylegan2-ada-pytorch"),
    # NGC StyleGAN2 (stylegan3 release)
    _sg2("ngc-ffhq", _NGC.format("ffhq-1024x1024"), "nvidia-pkl", 1024, "photo", "FFHQ faces, NGC StyleGAN2"),
    _sg2("ngc-ffhqu", _NGC.format("ffhqu-256x256"), "nvidia-pkl", 256, "photo",
         "FFHQ-U (unaligned) faces 256 px, NGC StyleGAN2"),
    _sg2("ngc-afhqv2", _NGC.format("afhqv2-512x512"), "nvidia-pkl", 512, "animal",
         "AFHQv2 animals, NGC StyleGAN2"),
    _sg2("ngc-metfaces", _NGC.format("metfaces-1024x1024"), "nvidia-pkl", 1024, "painting",
         "MetFaces portraits, NGC StyleGAN2"),
    # TensorFlow originals: listed, not yet readable.
    # Pixel diffusion models (diffusers folders; loaded by generators/diffusion, layers unused).
    SourceEntry(name="toy-ddpm", url=None, format="diffusers", resolution=32, source_text="a solid shape",
                layers=0, sample_truncation=1.0, clip=("toy",), local_path="assets/toy/ddpm", filename="ddpm",
                description="tiny DDPM of solid shapes on a light background (shipped, offline)",
                run_defaults=_diffusion_run_defaults("toy-ddpm")),
    SourceEntry(name="ddpm-celebahq", url="https://huggingface.co/google/ddpm-ema-celebahq-256",
                format="diffusers", resolution=256, source_text="photo", layers=0, sample_truncation=1.0,
                filename="google/ddpm-ema-celebahq-256", description="CelebA-HQ faces, pixel DDPM (diffusers)",
                run_defaults=_diffusion_run_defaults("ddpm-celebahq")),
    SourceEntry(name="ddpm-church", url="https://huggingface.co/google/ddpm-ema-church-256",
                format="diffusers", resolution=256, source_text="church", layers=0, sample_truncation=1.0,
                filename="google/ddpm-ema-church-256", description="LSUN churches, pixel DDPM (diffusers)",
                run_defaults=_diffusion_run_defaults("ddpm-church")),
    _sg2("tf-ffhq", _TF.format("ffhq"), "nvidia-tf-pkl", 1024, "photo", "FFHQ faces, original TF", False),
    _sg2("church", _TF.format("church"), "nvidia-tf-pkl", 256, "church", "LSUN churches, original TF", False),
    _sg2("car", _TF.format("car"), "nvidia-tf-pkl", 512, "car", "LSUN cars (512x384), original TF", False),
    _sg2("cat", _TF.format("cat"), "nvidia-tf-pkl", 256, "cat", "LSUN cats, original TF", False),
    _sg2("horse", _TF.format("horse"), "nvidia-tf-pkl", 256, "horse", "LSUN horses, original TF", False),
]
REGISTRY: dict[str, SourceEntry] = {e.name: e for e in _ENTRIES}


def names() -> list[str]:
    """Registry keys in listing order."""
    return list(REGISTRY)


def get_source(name: str) -> SourceEntry:
    """The entry for `name`; an IPLError listing the known names otherwise."""
    key = name.strip().lower()
    if key not in REGISTRY:
        raise IPLError(f"unknown source model {name!r}. Known sources: {', '.join(names())}. "
                       "Or pass a checkpoint path (.pt, .pkl, .safetensors) to --source.")
    return REGISTRY[key]


def ipl_home() -> Path:
    """Cache root: $IPL_HOME, default ~/.cache/ipl."""
    return Path(os.environ.get("IPL_HOME") or Path.home() / ".cache" / "ipl").expanduser()


def cache_path(entry: SourceEntry) -> Path:
    """Where the entry's file lives: shipped path for local assets, else $IPL_HOME/models/<file>."""
    if entry.local_path is not None:
        return REPO_ROOT / entry.local_path
    return ipl_home() / "models" / entry.filename


def is_registry_name(source: str) -> bool:
    """True if `source` names a registry entry (and is not an existing file)."""
    return source.strip().lower() in REGISTRY and not Path(source).is_file()


def source_for_file(path: str, resolution: int) -> SourceEntry:
    """A stand-in entry for a user checkpoint file: generic defaults scaled to its resolution."""
    return SourceEntry(name=Path(path).stem, url=None, format="file", resolution=int(resolution),
                       source_text="photo", layers=default_layers(int(resolution)), local_path=None,
                       filename=Path(path).name, description=f"user checkpoint {path}")


def run_defaults_for(source: str) -> dict:
    """AdaptConfig defaults a --source brings (flags given on the command line override them).

    Registry names: the entry's run_defaults. A diffusion model given by path (diffusers folder, ipl diffusion
    file): the toy DDPM's when it is that folder, else the optimiser settings of a real DDPM.
    """
    if is_registry_name(source):
        return dict(get_source(source).run_defaults)
    p = Path(source).expanduser()
    if not p.exists():
        return {}
    from generators.diffusion import is_diffusion_source

    if not is_diffusion_source(p):
        return {}
    for entry in REGISTRY.values():
        shipped = REPO_ROOT / entry.local_path if entry.local_path else None
        if entry.format == "diffusers" and shipped is not None and p.resolve() == shipped.resolve():
            return dict(entry.run_defaults)
    return _diffusion_run_defaults("ddpm-celebahq", _DIFFUSION_PATH_KEYS)
