"""Pixel-space diffusion models (diffusers UNet2DModel + DDIM) as adaptable generators (Diff-IPL).

    load(spec, device) -> DiffusionAdapter       spec: registry name, HF repo id, diffusers folder, our file
    resolve(spec) -> (path or id, fingerprint)    what a run records as its source
    DiffusionFamily (family.py)                  the plugin the product sees
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ipl.generators.diffusion import checkpoint as ckpt
from ipl.generators.diffusion.adapter import DiffusionAdapter, DiffusionConfig, SourcePool
from ipl.core.assets import shipped
from ipl.core.errors import IPLError, WeightsNotFoundError
from ipl.core.family import SourceEntry
from ipl.core.integrity import verify_hub_snapshot

__all__ = ["DiffusionAdapter", "DiffusionConfig", "SourcePool", "load", "is_diffusion_source", "resolve",
           "ENTRIES", "OPTIONS", "TOY_DDPM_DIR", "is_diffusion_checkpoint", "run_defaults_for_path"]

TOY_DDPM_DIR = shipped("toy/ddpm")

# The diffusion sources of the registry. run_defaults are the stage-2 settings a diffusion source takes unless
# given on the command line: the StyleGAN lr (0.0016, Adam beta1 0) wrecks a UNet.
_REAL_DDPM_STAGE2 = {"lr": 4e-6, "beta1": 0.9, "beta2": 0.999, "batch": 1, "iters": 200}
ENTRIES: list[SourceEntry] = [
    SourceEntry(name="toy-ddpm", family="diffusion", url=None, format="diffusers", resolution=32,
                source_text="a solid shape", layers=0, sample_truncation=1.0, clip=("toy",), shipped="toy/ddpm",
                filename="ddpm", description="tiny DDPM of solid shapes on a light background (shipped, offline)",
                run_defaults={"lr": 2e-4, "beta1": 0.9, "beta2": 0.999, "batch": 2, "iters": 60}),
    SourceEntry(name="ddpm-celebahq", family="diffusion", url="https://huggingface.co/google/ddpm-ema-celebahq-256",
                format="diffusers", resolution=256, source_text="photo", layers=0, sample_truncation=1.0,
                filename=ckpt.HUB_MODELS["ddpm-celebahq"], description="CelebA-HQ faces, pixel DDPM (diffusers)",
                run_defaults=dict(_REAL_DDPM_STAGE2)),
    SourceEntry(name="ddpm-church", family="diffusion", url="https://huggingface.co/google/ddpm-ema-church-256",
                format="diffusers", resolution=256, source_text="church", layers=0, sample_truncation=1.0,
                filename=ckpt.HUB_MODELS["ddpm-church"], description="LSUN churches, pixel DDPM (diffusers)",
                run_defaults=dict(_REAL_DDPM_STAGE2)),
]
# How each entry's model is run (DiffusionConfig fields), on top of DiffusionConfig's defaults.
OPTIONS: dict[str, dict[str, Any]] = {
    "toy-ddpm": {"t0": 400, "code_clip": "toy", "n_sources": 32, "source_images": "toy:solid"},
    "ddpm-celebahq": {"t0": 500, "code_clip": "ViT-B-32:openai"},
    "ddpm-church": {"t0": 500, "code_clip": "ViT-B-32:openai"},
}
_BY_NAME = {e.name: e for e in ENTRIES}
# For a diffusion model given by path its size is unknown: only the optimiser settings of a real DDPM apply.
_PATH_KEYS = ("lr", "beta1", "beta2")


def is_diffusion_source(spec: Union[str, Path]) -> bool:
    """True if `spec` names a diffusion source: a registry name above, a diffusers folder, or our file."""
    s = str(spec)
    if s.strip().lower() in _BY_NAME:
        return True
    p = Path(s).expanduser()
    if p.is_dir():
        return ckpt.is_diffusers_folder(p)
    if p.is_file():
        return ckpt.is_ipl_diffusion_file(p)
    return s.startswith("google/ddpm")  # a bare Hugging Face repo id of a pixel DDPM


def _hub_folder(repo_id: str, allow_download: bool) -> Path:
    """The local snapshot folder of a Hugging Face repo: from the cache, or downloaded when allowed."""
    import os

    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except OSError:
        pass
    offline = os.environ.get("IPL_OFFLINE") or os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
    hint = (f"On a machine with network run `huggingface-cli download {repo_id}` (fills ~/.cache/huggingface; "
            f"then this name works offline) or `huggingface-cli download {repo_id} --local-dir DIR` and pass "
            "DIR as --source.")
    if not allow_download or offline:
        raise WeightsNotFoundError(f"the diffusion model {repo_id} is not in the local Hugging Face cache and "
                                   f"downloads are off here. {hint}")
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    except Exception as e:  # network errors come in many types
        raise WeightsNotFoundError(f"could not download {repo_id} ({type(e).__name__}: {e}). {hint}") from None
    # huggingface_hub checks only sizes: check the first download against the hashes the hub published.
    verify_hub_snapshot(folder)
    return folder


def resolve(spec: Union[str, Path], allow_download: bool = False) -> tuple[Path, str]:
    """(local folder or file holding the weights, SHA-256 over its weight and config files) for a source."""
    s = str(spec).strip()
    key = s.lower()
    if key in _BY_NAME and _BY_NAME[key].shipped is None:
        where = _hub_folder(_BY_NAME[key].filename, allow_download)
    elif key in _BY_NAME:
        where = shipped(_BY_NAME[key].shipped)
        if not ckpt.is_diffusers_folder(where):
            raise WeightsNotFoundError(
                f"the toy DDPM is missing: expected a diffusers folder at {where} (config.json + "
                "diffusion_pytorch_model.safetensors). Reinstall ipl, or rebuild it with "
                "`python scripts/toy/build_toy_ddpm.py`.")
    elif Path(s).expanduser().exists():
        where = Path(s).expanduser()
    elif s.count("/") == 1 and not s.startswith((".", "/", "~")):
        where = _hub_folder(s, allow_download)
    else:
        raise IPLError(f"diffusion source {s!r}: not a registry name ({', '.join(_BY_NAME)}), an existing "
                       "diffusers folder, or an ipl diffusion .safetensors file.")
    if where.is_file():
        files = [where]
    else:
        files = sorted(q for q in where.rglob("*") if q.is_file() and q.suffix in (".safetensors", ".bin", ".json"))
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(where) if f != where else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return where.resolve(), h.hexdigest()


def load(spec: Union[str, Path], device: Union[str, torch.device] = "cpu",
         config: Optional[Union[DiffusionConfig, dict[str, Any]]] = None, code_encoder: Any = None,
         role: Optional[str] = None, allow_download: bool = False) -> DiffusionAdapter:
    """Load a diffusion source or an adapted diffusion model as a DiffusionAdapter.

    spec:   registry name (ddpm-celebahq, ddpm-church, toy-ddpm), Hugging Face repo id (cache only unless
            allow_download), a diffusers folder (pipeline or bare UNet), or a .safetensors written by
            DiffusionAdapter.save (or a run folder holding one as generator.safetensors)
    config: DiffusionConfig or dict of overrides on top of the registry / saved settings
    role:   None: as saved ("adapted" for an adapted model), else "source"
    """
    s = str(spec).strip()
    base: dict[str, Any] = dict(_registry_defaults_for(s))
    metadata: dict[str, Any] = {"source": s}
    saved_role = "source"
    where, _ = resolve(s, allow_download=allow_download)
    if where.is_dir() and not ckpt.is_diffusers_folder(where) and (where / "generator.safetensors").is_file():
        where = where / "generator.safetensors"  # a run folder
    if where.is_dir():
        unet, sched = ckpt.load_diffusers_folder(where, device)
    else:
        unet, record = ckpt.load_file(where, device)
        sched = record["scheduler_config"]
        base.update(record.get("diffusion", {}))
        metadata = dict(record.get("metadata", {}))
        saved_role = record.get("role", "source")
    if isinstance(config, DiffusionConfig):
        cfg = config
    else:
        cfg = DiffusionConfig.from_dict({**base, **(config or {})})
    unet.eval()
    return DiffusionAdapter(unet, sched, cfg, code_encoder=code_encoder, role=role or saved_role,
                            metadata=metadata)


def _registry_defaults_for(spec: str) -> dict[str, Any]:
    """The DiffusionConfig options of a registry name, or of the folder a registry entry ships (toy-ddpm)."""
    name = spec.strip().lower()
    if name not in OPTIONS:
        name = next((e.name for e in ENTRIES if e.shipped and _same_path(spec, shipped(e.shipped))), "")
    return dict(OPTIONS.get(name, {}))


def _same_path(spec: Union[str, Path], where: Path) -> bool:
    p = Path(spec).expanduser()
    return p.exists() and where.exists() and p.resolve() == where.resolve()


def is_diffusion_checkpoint(path: Union[str, Path]) -> bool:
    """A diffusion source, our diffusion file, or a run folder holding one."""
    p = Path(path)
    if p.is_dir() and (p / "generator.safetensors").is_file() and not ckpt.is_diffusers_folder(p):
        return ckpt.is_ipl_diffusion_file(p / "generator.safetensors")
    return is_diffusion_source(p)


def run_defaults_for_path(path: Union[str, Path]) -> dict[str, Any]:
    """AdaptConfig defaults of a diffusion model given by path: the toy DDPM's for its shipped folder, else the
    optimiser settings of a real DDPM."""
    for e in ENTRIES:
        if e.shipped and _same_path(path, shipped(e.shipped)):
            return dict(e.run_defaults)
    return {k: _REAL_DDPM_STAGE2[k] for k in _PATH_KEYS}
