"""build_metrics: the evaluation metrics a config names, leaving out (with a warning) those without a detector file."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from torchmetrics import Metric

from dv.errors import ConfigError
from dv.metrics.clip_sim import CLIPSim, FFFClip
from dv.metrics.detectors import load_c3d, load_clip, load_i3d
from dv.metrics.fvd import FVD
from dv.metrics.ssim import FFFSSIM
from dv.metrics.video_is import VideoIS

__all__ = ["MetricsConfig", "build_metrics"]

log = logging.getLogger(__name__)


@dataclass
class MetricsConfig:
    """Which local detector files the evaluation metrics use (paper §5.1: FVD, IS, CLIP-SIM, FFF_CLIP, FFF_SSIM)."""

    i3d: str | None = None
    """Local i3d_torchscript.pt (StyleGAN-V's I3D) for FVD; None leaves FVD out."""
    c3d: str | None = None
    """Local c3d_ucf101.pt (StyleGAN-V's UCF-101 C3D) for video IS; None leaves IS out."""
    clip: str | None = None
    """Local CLIP ViT-B/32 checkpoint for CLIP-SIM and FFF_CLIP; None leaves both out."""
    clip_model: str = "ViT-B-32"
    """open_clip model name the CLIP checkpoint fits."""
    clip_quick_gelu: bool = True
    """QuickGELU activations: True for OpenAI's CLIP weights, False for LAION's."""
    num_frames: int = 16
    """Frames per video fed to I3D and C3D (16 in StyleGAN-V's fvd2048_16f and isv2048_ucf)."""
    is_splits: int = 10
    """Splits of the Inception Score (10 in the reference)."""
    fff_ssim: bool = True
    """Compute FFF_SSIM (needs no detector)."""


def build_metrics(config: MetricsConfig | Mapping[str, Any] | None = None) -> dict[str, Metric]:
    """Metrics by name ('fvd', 'is', 'clip_sim', 'fff_clip', 'fff_ssim'); unconfigured ones are skipped with a warning."""
    if config is None:
        config = MetricsConfig()
    elif isinstance(config, Mapping):
        unknown = sorted(set(config) - {f.name for f in fields(MetricsConfig)})
        if unknown:
            raise ConfigError(f"unknown metrics settings {unknown}; known: {[f.name for f in fields(MetricsConfig)]}")
        config = MetricsConfig(**config)
    metrics: dict[str, Metric] = {}
    if config.i3d is None:
        log.warning("FVD skipped: no I3D detector file configured (metrics.i3d = path to i3d_torchscript.pt)")
    else:
        metrics["fvd"] = FVD(load_i3d(config.i3d), num_frames=config.num_frames)
    if config.c3d is None:
        log.warning("video IS skipped: no C3D detector file configured (metrics.c3d = path to c3d_ucf101.pt)")
    else:
        metrics["is"] = VideoIS(load_c3d(config.c3d), num_frames=config.num_frames, num_splits=config.is_splits)
    if config.clip is None:
        log.warning(
            "CLIP-SIM and FFF_CLIP skipped: no CLIP checkpoint configured (metrics.clip = path to a ViT-B/32 checkpoint)"
        )
    else:
        clip = load_clip(config.clip, config.clip_model, config.clip_quick_gelu)  # loaded once, shared by both
        metrics["clip_sim"] = CLIPSim(clip)
        metrics["fff_clip"] = FFFClip(clip)
    if config.fff_ssim:
        metrics["fff_ssim"] = FFFSSIM()
    return metrics
