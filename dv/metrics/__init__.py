"""Evaluation metrics of DreamVideo (§5.1) as torchmetrics Metrics, with detectors from local files only."""

from dv.metrics.build import MetricsConfig, build_metrics
from dv.metrics.clip_sim import CLIPSim, FFFClip
from dv.metrics.detectors import ClipDetector, DetectorId, FrozenDetector, load_c3d, load_clip, load_i3d
from dv.metrics.frechet import frechet_distance, mean_cov_from_sums
from dv.metrics.fvd import FVD
from dv.metrics.ssim import FFFSSIM, ssim
from dv.metrics.video_is import VideoIS, inception_score

__all__ = [
    "CLIPSim",
    "ClipDetector",
    "DetectorId",
    "FFFClip",
    "FFFSSIM",
    "FVD",
    "FrozenDetector",
    "MetricsConfig",
    "VideoIS",
    "build_metrics",
    "frechet_distance",
    "inception_score",
    "load_c3d",
    "load_clip",
    "load_i3d",
    "mean_cov_from_sums",
    "ssim",
]
