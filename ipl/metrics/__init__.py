"""Evaluation metrics of `ipl eval`: FID/KID/IS (torch-fidelity), intra-cluster LPIPS (lpips), CLIP score."""
from ipl.metrics.clip_score import ClipScore, clip_scores
from ipl.metrics.fid import frechet_distance, inception_score, kernel_distance, load_inception
from ipl.metrics.lpips_diversity import intra_cluster_lpips, load_lpips, lpips_features, lpips_matrix
from ipl.core.weights import WeightsFile, resolve_weights

__all__ = ["ClipScore", "clip_scores", "frechet_distance", "inception_score", "kernel_distance", "load_inception",
           "intra_cluster_lpips", "load_lpips", "lpips_features", "lpips_matrix", "WeightsFile", "resolve_weights"]
