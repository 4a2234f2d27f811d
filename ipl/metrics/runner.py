"""`ipl eval` without the command line: open the inputs, stream fixed-seed samples through every metric.

One pass over each input's samples feeds all metrics at once; the networks (Inception, LPIPS, CLIP, the
toy judge) and the reference features are loaded once and shared by every column.
"""
from __future__ import annotations

import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import torch

from ipl.core import distributed as dist
from ipl.core.errors import IPLError, WeightsNotFoundError
from ipl.metrics import fid as fidlib
from ipl.metrics.sources import EvalInput, image_batches, indexed_batches, list_images, open_input, read_image

METRICS = ("fid", "kid", "is", "intra-lpips", "clip-score", "judge", "judge-fid")
TOY_METRICS = ("judge", "judge-fid")
DEFAULT_CLIP = "ViT-B-32:openai"
DEFAULT_N = 5000
# The toy judge scores rates (shares of samples); 500 samples give them to about +-2% and keep `make demo`
# to seconds on a CPU, where the toy generator renders ~100 images/s.
TOY_DEFAULT_N = 500


@dataclass
class EvalSettings:
    """Everything `ipl eval` was asked to do (written to the results JSON)."""

    inputs: list[str]                      # run folders, checkpoints or image folders; one column each
    metrics: Optional[list[str]] = None    # None: judge,judge-fid,clip-score for toy runs; else clip-score,
                                           # intra-lpips (+ fid,kid with --ref)
    ref: Optional[str] = None              # folder of reference images for FID/KID
    n: Optional[int] = None                # samples per input (folders: at most their size); None: 5000, or
                                           # TOY_DEFAULT_N when the first input is a toy run
    batch: int = 32                        # images per forward pass
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    seed: int = 0                          # sample i is fixed by (seed, i)
    truncation: float = 1.0                # StyleGAN truncation psi of the evaluated samples
    target: Optional[str] = None           # CLIP-score text (default: the first run's target text)
    clip: Optional[str] = None             # CLIP spec for the CLIP score (default: the first run's first CLIP)
    centres: Optional[str] = None          # folder of cluster centres for intra-LPIPS (default: first 10 samples)
    num_centres: int = 10                  # centres taken from the samples when --centres is not given
    lpips_net: str = "alex"                # LPIPS backbone: alex | vgg | squeeze
    lpips_n: int = 1000                    # intra-LPIPS uses the first min(n, lpips_n) samples
    lpips_size: int = 256                  # images are resized to at most this side for LPIPS
    lpips_weights: Optional[str] = None    # local torchvision backbone weights for LPIPS
    inception_weights: Optional[str] = None  # local torch-fidelity Inception weights
    kid_subset_size: int = 1000            # shrinks to the smaller set if needed
    kid_subsets: int = 100
    is_splits: int = 10
    allow_random_weights: bool = False     # let missing metric weights be random (numbers labelled, not results)
    download: bool = True                  # may fetch missing metric weights (never when IPL_OFFLINE=1)
    with_source: bool = False              # add a column for each run's source generator (same latents)
    progress: bool = True


# ----------------------------------------------------------------------------------------------------------
# Helpers.

def resolve_device(name: str) -> torch.device:
    """auto -> cuda if available else cpu; an unavailable cuda is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise IPLError(f"--device {name}: no CUDA GPU is available; use --device cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise IPLError(f"--device {name!r}: {e}") from None


def library_versions() -> dict[str, str]:
    """Versions of everything that shapes the numbers."""
    out = {"python": platform.python_version()}
    for dist in ("ipl", "torch", "torchvision", "torch-fidelity", "lpips", "open_clip_torch", "numpy", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["cuda"] = str(torch.version.cuda)
    return out


def parse_metrics(text: Optional[str]) -> Optional[list[str]]:
    """'fid,kid' -> ['fid', 'kid'] (validated); None or 'auto' -> None (choose per input)."""
    if text is None or text.strip().lower() in ("", "auto"):
        return None
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    aliases = {"isc": "is", "lpips": "intra-lpips", "clip": "clip-score", "clipscore": "clip-score"}
    names = [aliases.get(m, m) for m in names]
    bad = [m for m in names if m not in METRICS]
    if bad:
        raise IPLError(f"--metrics: unknown metric(s) {', '.join(bad)}; choose from {', '.join(METRICS)}.")
    return list(dict.fromkeys(names))


def default_metrics(first: EvalInput, ref: Optional[str]) -> list[str]:
    """What `ipl eval RUN` computes when --metrics is not given."""
    if first.toy:
        return ["judge", "judge-fid", "clip-score"]
    return (["fid", "kid"] if ref else []) + ["clip-score", "intra-lpips"]


class _Progress:
    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False)

    def update(self, k: int) -> None:
        if self.bar is not None:
            self.bar.update(k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------------------
# The toy judge as a feature extractor (its own forward, read at the input of its heads).

class JudgeFeatures:
    """Penultimate features of the toy judge for FID in the toy world (no downloads needed)."""

    def __init__(self, judge):
        self.judge = judge
        self._chunks: list[torch.Tensor] = []

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[N, D] pooled features the judge's heads read, for images in [-1, 1]."""
        grabbed: list[torch.Tensor] = []
        hook = self.judge.domain.register_forward_hook(lambda m, inp, out: grabbed.append(inp[0].detach().cpu()))
        try:
            self.judge.classify(images)
        finally:
            hook.remove()
        return torch.cat(grabbed)

    def update(self, images: torch.Tensor) -> None:
        self._chunks.append(self.embed(images))

    def features(self) -> torch.Tensor:
        return torch.cat(self._chunks)


def toy_renders(domain: str, n: int, resolution: int, seed: int, batch: int = 512) -> torch.Tensor:
    """n renders of a toy domain at `resolution` (the reference set of the judge-FID)."""
    from ipl.generators.toy.render import render, sample_params

    g = torch.Generator().manual_seed(10_000 + seed)
    p = sample_params(n, generator=g)
    return torch.cat([render(p.index(slice(i, i + batch)), domain, res=resolution) for i in range(0, n, batch)])


# ----------------------------------------------------------------------------------------------------------
# The evaluation.

@dataclass
class EvalResult:
    """Per-column metric values and everything needed to reproduce them."""

    columns: list[dict[str, Any]] = field(default_factory=list)   # label, path, kind, n, metrics, details
    metrics: list[str] = field(default_factory=list)
    weights: dict[str, Any] = field(default_factory=dict)
    random_weights: list[str] = field(default_factory=list)        # networks that ran on random weights
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (the results file)."""
        return {
            "format": "ipl-eval-1",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "random_weights": self.random_weights,
            "note": ("RANDOM WEIGHTS were used for " + ", ".join(self.random_weights)
                     + ": these numbers are not results.") if self.random_weights else None,
            "metrics": self.metrics,
            "columns": self.columns,
            "weights": self.weights,
            "settings": self.settings,
            "versions": self.versions,
        }


def evaluate(s: EvalSettings) -> EvalResult:
    """Compute the requested metrics for every input (one column each)."""
    if (s.n is not None and s.n < 1) or s.batch < 1:
        raise IPLError("--n and --batch must be at least 1.")
    device = resolve_device(s.device)
    taken: set[str] = set()
    inputs = [open_input(p, device=str(device), taken=taken) for p in s.inputs]
    if s.n is None:
        s = replace(s, n=TOY_DEFAULT_N if inputs[0].toy else DEFAULT_N)
    if s.with_source:
        extra = []
        for inp in inputs:
            if inp.kind == "run":
                extra.append(EvalInput(label=f"{inp.label} (source)", path=inp.path, kind="generator",
                                       generator=inp.source, target_text=inp.target_text,
                                       clip_specs=inp.clip_specs))
        inputs += extra
    first = inputs[0]
    metrics = s.metrics if s.metrics is not None else default_metrics(first, s.ref)
    for m in TOY_METRICS:
        if m in metrics and not any(i.toy for i in inputs):
            raise IPLError(f"--metrics {m}: the toy judge only scores runs of the toy world (`ipl adapt "
                           f"--source toy` or `--source toy-ddpm`); none of the inputs is one.")

    # Cheap checks first: nothing heavy is loaded for a command that cannot finish.
    target_text = s.target or next((i.target_text for i in inputs if i.target_text), None)
    if "clip-score" in metrics and not target_text:
        raise IPLError("clip-score needs the target text: pass --target TEXT (runs carry their own).")
    if any(m in metrics for m in ("fid", "kid")) and not s.ref:
        raise IPLError("FID and KID need reference images: pass --ref DIR (a folder of real target or source "
                       "images, e.g. 5000+ of them).")

    result = EvalResult(metrics=list(metrics), settings={**asdict(s), "device": str(device),
                                                         "metrics": list(metrics)},
                        versions=library_versions())
    # Shared networks.
    inception = reference = None
    if any(m in metrics for m in fidlib.INCEPTION_METRICS):
        layers = {fidlib.LAYER[m] for m in metrics if m in fidlib.INCEPTION_METRICS}
        net, info = fidlib.load_inception(layers, s.inception_weights, allow_random=s.allow_random_weights,
                                          download=s.download, device=device, seed=s.seed)
        inception = net
        result.weights["inception"] = asdict(info)
        if info.random_weights:
            result.random_weights.append("inception")
        if any(m in metrics for m in ("fid", "kid")):
            reference = _reference_features(net, s)
            result.settings["ref_count"] = len(reference)
    lp = centres = None
    if "intra-lpips" in metrics:
        from ipl.metrics.lpips_diversity import load_lpips

        lp, path = load_lpips(s.lpips_net, s.lpips_weights, allow_random=s.allow_random_weights,
                              download=s.download, device=device, seed=s.seed)
        import lpips as lpips_pkg

        result.weights["lpips"] = {
            "net": s.lpips_net, "version": "0.1", "backbone": path,
            "backbone_sha256": fidlib.file_digest(path) if path else None,
            "linear_layers": str(Path(lpips_pkg.__file__).parent / "weights" / "v0.1" / f"{s.lpips_net}.pth"),
            "random_weights": path is None}
        if path is None:
            result.random_weights.append("lpips-backbone")
        if s.centres:
            files = list_images(Path(s.centres)) if Path(s.centres).is_dir() else []
            if not files:
                raise IPLError(f"--centres {s.centres}: expected a folder of images (png/jpg); none found.")
            centres = [read_image(f) for f in files]
    clip = None
    if "clip-score" in metrics or "judge" in metrics:
        spec = s.clip or next((i.clip_specs[0] for i in inputs if i.clip_specs), None) or DEFAULT_CLIP
        from ipl.method.clip import load_clip, parse_clip_spec

        try:
            clip = load_clip(spec, device=str(device))
        except WeightsNotFoundError:
            if not s.allow_random_weights:
                raise
            parsed = parse_clip_spec(spec)  # missing and allowed: same architecture, random weights, labelled
            clip = load_clip(f"{parsed.name}:none", device=str(device))
        if clip.random_weights:
            if not s.allow_random_weights:
                raise IPLError(f"CLIP {spec} has random weights; no reported number may come from it. Give "
                               f"real weights, or --allow-random-weights for a smoke test only.")
            result.random_weights.append(f"clip {spec}")
        result.weights["clip"] = {"spec": str(clip.spec), "random_weights": bool(clip.random_weights),
                                  **_clip_weights_file(clip)}
    judge = None
    if any(m in metrics for m in TOY_METRICS):
        from ipl.generators.toy.judge import JUDGE_WEIGHTS, load_judge

        judge = load_judge(device=str(device))
        result.weights["judge"] = {"path": str(JUDGE_WEIGHTS), "sha256": fidlib.file_digest(JUDGE_WEIGHTS)}

    for inp in inputs:
        t0 = time.perf_counter()
        col = _evaluate_one(inp, s, metrics, device, inception, reference, lp, centres, clip, target_text, judge)
        col["seconds"] = round(time.perf_counter() - t0, 3)
        result.columns.append(col)
    return result


def _clip_weights_file(clip) -> dict[str, Any]:
    """The local weights file behind a CLIP spec, with its SHA-256, where there is one."""
    from ipl.method.clip import TOY_CLIP_WEIGHTS

    spec = clip.spec
    path = None
    if spec.name == "toy" and spec.pretrained in (None, ""):
        path = TOY_CLIP_WEIGHTS
    elif spec.pretrained and Path(spec.pretrained).is_file():
        path = Path(spec.pretrained)
    if path is None or not Path(path).is_file():
        return {}
    return {"weights_path": str(path), "weights_sha256": fidlib.file_digest(path)}


def _reference_features(net, s: EvalSettings) -> fidlib.InceptionFeatures:
    ref = Path(s.ref)
    files = list_images(ref) if ref.is_dir() else []
    if len(files) < 2:
        raise IPLError(f"--ref {s.ref}: expected a folder with at least 2 images (png/jpg/webp); found "
                       f"{len(files)}.")
    feats = fidlib.InceptionFeatures(net)
    bar = _Progress(s.progress and dist.is_main(), len(files), "reference")
    ks = []
    for k, imgs in enumerate(image_batches(files, s.batch)):
        if dist.world_size() == 1 or k % dist.world_size() == dist.rank():  # sharded over torchrun's ranks
            feats.update(imgs)
            ks.append(k)
        bar.update(len(imgs))
    bar.close()
    merged = _gather_in_order(ks, feats._chunks)
    if merged is not None:  # rank 0 (or one process): the whole folder's features, in file order
        feats._chunks = merged
    return feats


def _gather_in_order(ks: list[int], lists: Any) -> Any:
    """Sharded eval: every rank's per-batch entries (`lists`: a list, or a dict of lists, entry i for batch ks[i])
    merged in batch order on rank 0 (None on the other ranks); unchanged in one process."""
    if not dist.active():
        return lists
    parts = dist.all_gather_objects((ks, lists))
    if not dist.is_main():
        return None

    def merge(get):
        pairs = sorted((k, item) for ks_r, lists_r in parts for k, item in zip(ks_r, get(lists_r)))
        return [item for _, item in pairs]

    if isinstance(lists, dict):
        return {name: merge(lambda x, name=name: x[name]) for name in lists}
    return merge(lambda x: x)


def _evaluate_one(inp: EvalInput, s: EvalSettings, metrics: list[str], device: torch.device, inception,
                  reference, lp, centres, clip, target_text, judge) -> dict[str, Any]:
    from ipl.metrics.clip_score import ClipScore
    from ipl.metrics.lpips_diversity import fit_images, intra_cluster_lpips

    col: dict[str, Any] = {"label": inp.label, "path": inp.path, "kind": inp.kind, "values": {}, "details": {},
                           "skipped": {}, "notes": dict(inp.notes)}
    n = inp.available(s.n)
    if n < 1:
        raise IPLError(f"{inp.path}: no samples to evaluate.")
    col["n"] = n
    toy_here = inp.toy and inp.kind == "run"
    want_judge = judge is not None and toy_here
    for m in TOY_METRICS:
        if m in metrics and not toy_here:
            col["skipped"][m] = "not a toy run"

    feats = fidlib.InceptionFeatures(inception) if inception is not None else None
    scorer = ClipScore(clip, target_text) if "clip-score" in metrics else None
    lp_size = None
    lp_images: list[torch.Tensor] = []
    if lp is not None:
        res = inp.resolution or s.lpips_size
        lp_size = min(res, s.lpips_size)
    lp_n = min(n, s.lpips_n)
    adapted_keep: list[torch.Tensor] = []
    source_keep: list[torch.Tensor] = []

    # Under torchrun the batches are sharded over the ranks (batch k on rank k % world; sample i stays fixed by the
    # seed), each rank's per-batch results gathered on rank 0 in batch order, and the metrics computed there.
    bar = _Progress(s.progress and dist.is_main(), n, inp.label)
    ks, lp_ks = [], []
    for k, seen, imgs, src in indexed_batches(inp, n, s.batch, seed=s.seed, truncation=s.truncation,
                                              with_source=want_judge, rank=dist.rank(), world=dist.world_size()):
        imgs = imgs.to(device)
        ks.append(k)
        if feats is not None:
            feats.update(imgs)
        if scorer is not None:
            scorer.update(imgs)
        if lp is not None and seen < lp_n:
            take = imgs[: lp_n - seen]
            lp_images.append(fidlib.quantize(fit_images(take, lp_size)).cpu())
            lp_ks.append(k)
        if want_judge:
            adapted_keep.append(imgs.cpu())
            source_keep.append(src.cpu())
        bar.update(len(imgs) * dist.world_size())
    bar.close()
    if dist.active():
        rows = _gather_in_order(ks, [({name: feats._chunks[name][i] for name in feats.layers}
                                       if feats is not None else None,
                                      scorer._scores[i] if scorer is not None else None,
                                      adapted_keep[i] if want_judge else None,
                                      source_keep[i] if want_judge else None) for i in range(len(ks))])
        lp_images = _gather_in_order(lp_ks, lp_images)
        if not dist.is_main():
            return col  # rank 0 computes and reports the metrics
        if feats is not None:
            feats._chunks = {name: [row[0][name] for row in rows] for name in feats.layers}
        if scorer is not None:
            scorer._scores = [row[1] for row in rows]
        if want_judge:
            adapted_keep, source_keep = [row[2] for row in rows], [row[3] for row in rows]

    values, details = col["values"], col["details"]
    if feats is not None:
        out = fidlib.inception_metrics(feats, reference, [m for m in metrics if m in fidlib.INCEPTION_METRICS],
                                       kid_subset_size=s.kid_subset_size, kid_subsets=s.kid_subsets,
                                       is_splits=s.is_splits, seed=2020)
        for k in ("fid", "kid", "is"):
            if k in out:
                values[k] = out[k]
        details["inception"] = {k: v for k, v in out.items() if k not in values}
    if scorer is not None:
        out = scorer.compute()
        values["clip-score"] = out["clip_score"]
        details["clip-score"] = out
    if lp is not None:
        images = torch.cat(lp_images)
        if centres is not None:
            cen = torch.stack([fidlib.quantize(fit_images(c[None], lp_size))[0] for c in centres])
            where = "given"
        else:
            k = min(s.num_centres, len(images))
            cen, where = images[:k], f"first {k} samples"
        r = intra_cluster_lpips(lp, images.to(device), cen.to(device), batch=s.batch)
        values["intra-lpips"] = r.value
        details["intra-lpips"] = {"samples": len(images), "centres": where, "size": lp_size,
                                  "net": s.lpips_net, **asdict(r)}
    if want_judge:
        from ipl.generators.toy.judge import judge_report

        adapted, source = torch.cat(adapted_keep), torch.cat(source_keep)
        text = inp.target_text or target_text
        if "judge" in metrics:
            report = judge_report(source, adapted, text, clip=clip, judge=judge)
            details["judge"] = {**report, "clip": str(clip.spec) if clip is not None else None}
            for k in ("target_rate", "content_kept", "diversity_kept", "degraded_rate", "clip_judge_agreement"):
                values[f"judge:{k}"] = report.get(k)
        if "judge-fid" in metrics:
            from ipl.generators.toy.captions import domain_from_text

            target = domain_from_text(text)
            jf = JudgeFeatures(judge)
            res = adapted.shape[-1]
            tgt_ref = jf.embed(toy_renders(target, len(adapted), res, s.seed))
            src_ref = jf.embed(toy_renders("solid", len(source), res, s.seed + 1))
            adapted_f, source_f = jf.embed(adapted), jf.embed(source)
            values["judge-fid"] = fidlib.frechet_distance(adapted_f, tgt_ref)
            details["judge-fid"] = {
                "reference": f"{len(adapted)} renders of the '{target}' domain at {res} px",
                "adapted_vs_target": values["judge-fid"],
                "source_vs_solid": fidlib.frechet_distance(source_f, src_ref),   # the generator's own floor
                "adapted_vs_solid": fidlib.frechet_distance(adapted_f, src_ref),
                "features": "toy judge penultimate layer (mean+max pooled)"}
    for k, v in list(values.items()):
        if isinstance(v, float) and not math.isfinite(v):
            details.setdefault("non_finite", []).append(k)
    return col
