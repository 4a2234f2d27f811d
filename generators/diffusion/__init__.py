"""Pixel-space diffusion models (diffusers UNet2DModel + DDIM) as adaptable generators (Diff-IPL).

    load(spec, device) -> DiffusionAdapter       spec: registry name, HF repo id, diffusers folder, our file
    is_diffusion_source(spec) -> bool            for generators.load_adaptable / ipl.run to branch on
    resolve(spec) -> (path or id, fingerprint)    what a run records as its source
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional, Union

import torch

from generators.diffusion import checkpoint as ckpt
from generators.diffusion.adapter import DiffusionAdapter, DiffusionConfig, SourcePool
from ipl.errors import IPLError, WeightsNotFoundError

__all__ = ["DiffusionAdapter", "DiffusionConfig", "SourcePool", "load", "is_diffusion_source", "resolve",
           "REGISTRY", "TOY_DDPM_DIR", "is_diffusion_checkpoint", "load_adaptable"]

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
TOY_DDPM_DIR = REPO_ROOT / "assets" / "toy" / "ddpm"

# Registry entries of the diffusion sources: where the weights come from and the defaults a run takes.
REGISTRY: dict[str, dict[str, Any]] = {
    "ddpm-celebahq": {"repo": ckpt.HUB_MODELS["ddpm-celebahq"], "resolution": 256, "source_text": "photo",
                      "clip": ["ViT-B-32:openai"], "description": "CelebA-HQ faces 256 px, pixel DDPM (diffusers)",
                      "diffusion": {"t0": 500, "code_clip": "ViT-B-32:openai"},
                      "stage2": {"lr": 4e-6, "beta1": 0.9, "beta2": 0.999, "batch": 1, "iters": 200}},
    "ddpm-church": {"repo": ckpt.HUB_MODELS["ddpm-church"], "resolution": 256, "source_text": "church",
                    "clip": ["ViT-B-32:openai"], "description": "LSUN churches 256 px, pixel DDPM (diffusers)",
                    "diffusion": {"t0": 500, "code_clip": "ViT-B-32:openai"},
                    "stage2": {"lr": 4e-6, "beta1": 0.9, "beta2": 0.999, "batch": 1, "iters": 200}},
    "toy-ddpm": {"path": str(TOY_DDPM_DIR), "resolution": 32, "source_text": "a solid shape", "clip": ["toy"],
                 "description": "toy DDPM of solid shapes on a light background (shipped, offline)",
                 "diffusion": {"t0": 400, "code_clip": "toy", "n_sources": 32, "source_images": "toy:solid"},
                 "stage2": {"lr": 2e-4, "beta1": 0.9, "beta2": 0.999, "batch": 2, "iters": 60}},
}


def is_diffusion_source(spec: Union[str, Path]) -> bool:
    """True if `spec` names a diffusion source: a registry name above, a diffusers folder, or our file."""
    s = str(spec)
    if s.strip().lower() in REGISTRY:
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
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    except Exception as e:  # network errors come in many types
        raise WeightsNotFoundError(f"could not download {repo_id} ({type(e).__name__}: {e}). {hint}") from None


def resolve(spec: Union[str, Path], allow_download: bool = False) -> tuple[Path, str]:
    """(local folder or file holding the weights, SHA-256 over its weight and config files) for a source."""
    s = str(spec).strip()
    key = s.lower()
    if key in REGISTRY and "repo" in REGISTRY[key]:
        where = _hub_folder(REGISTRY[key]["repo"], allow_download)
    elif key in REGISTRY:
        where = Path(REGISTRY[key]["path"])
        if not ckpt.is_diffusers_folder(where):
            raise WeightsNotFoundError(
                f"the toy DDPM is missing: expected a diffusers folder at {where} (config.json + "
                "diffusion_pytorch_model.safetensors). Rebuild it with `python scripts/build_toy_ddpm.py`.")
    elif Path(s).expanduser().exists():
        where = Path(s).expanduser()
    elif s.count("/") == 1 and not s.startswith((".", "/", "~")):
        where = _hub_folder(s, allow_download)
    else:
        raise IPLError(f"diffusion source {s!r}: not a registry name ({', '.join(REGISTRY)}), an existing "
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
    entry = REGISTRY.get(spec.strip().lower())
    if entry is None:  # a folder that is a registry entry's folder takes its defaults too (toy-ddpm)
        p = Path(spec).expanduser()
        entry = next((e for e in REGISTRY.values() if "path" in e and p.exists() and p.resolve() ==
                      Path(e["path"]).resolve()), None)
    return dict(entry.get("diffusion", {})) if entry else {}


def registry_info(name: str) -> dict[str, Any]:
    """The registry record of a diffusion source (for `ipl models`)."""
    if name.lower() not in REGISTRY:
        raise IPLError(f"unknown diffusion source {name!r}; known: {', '.join(REGISTRY)}")
    return json.loads(json.dumps(REGISTRY[name.lower()]))


# ---------------------------------------------------------------------------------------------- hooks
def is_diffusion_checkpoint(path: Union[str, Path]) -> bool:
    """generators.load_adaptable hook: a diffusion source, our diffusion file, or a run folder holding one."""
    p = Path(path)
    if p.is_dir() and (p / "generator.safetensors").is_file() and not ckpt.is_diffusers_folder(p):
        return ckpt.is_ipl_diffusion_file(p / "generator.safetensors")
    return is_diffusion_source(p)


def load_adaptable(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> DiffusionAdapter:
    """generators.load_adaptable hook: `load` (a run folder resolves to its generator file)."""
    return load(path, device=device)
