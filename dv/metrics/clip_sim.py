"""CLIP-SIM (caption vs every frame) and FFF_CLIP (first generated frame vs real first frame) with CLIP ViT-B/32."""

from __future__ import annotations

import os
from typing import Any

import torch
from einops import einsum, rearrange
from torch import Tensor

from dv.errors import DataError, WeightsError
from dv.metrics.base import DetectorMetric
from dv.metrics.detectors import ClipDetector, FrozenDetector, as_uint8, load_clip

__all__ = ["CLIPSim", "FFFClip"]


def _clip_detector(detector: str | os.PathLike | ClipDetector, model_name: str, quick_gelu: bool) -> ClipDetector:
    if isinstance(detector, FrozenDetector) and not isinstance(detector, ClipDetector):
        raise WeightsError(f"a CLIP metric needs a CLIP detector, got {detector.identity}")
    return detector if isinstance(detector, ClipDetector) else load_clip(detector, model_name, quick_gelu)


def _frames(images: Tensor, what: str) -> Tensor:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{what} must be (B, H, W, 3), got {tuple(images.shape)}")
    return as_uint8(images)


class _ClipMetric(DetectorMetric):
    """A mean of scaled CLIP cosines over videos: float64 sum and count, summed across ranks.

    ``model_name``/``quick_gelu`` say which open_clip model the checkpoint fits (QuickGELU for OpenAI's
    weights, plain GELU for LAION's); ``scale`` is 100 as papers report; ``max_batch`` caps frames per CLIP call.
    """

    higher_is_better = True

    def __init__(
        self,
        detector: str | os.PathLike | ClipDetector,
        model_name: str = "ViT-B-32",
        quick_gelu: bool = True,
        scale: float = 100.0,
        max_batch: int = 256,
        **kwargs: Any,
    ) -> None:
        """Take the CLIP checkpoint (path, or a ClipDetector both CLIP metrics can share); scale multiplies the cosine."""
        super().__init__(_clip_detector(detector, model_name, quick_gelu), **kwargs)
        self.scale = scale
        self.max_batch = max_batch
        self.add_state("score_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def _add(self, per_video: Tensor) -> None:
        self.score_sum = self.score_sum + self.scale * per_video.to(self.device, torch.float64).sum()
        self.count = self.count + len(per_video)

    def compute(self) -> Tensor:
        """Mean scaled cosine over all videos added (float64 scalar)."""
        if self.count == 0:
            raise DataError(f"{type(self).__name__} has no videos: call update() first")
        return self.score_sum / self.count


class CLIPSim(_ClipMetric):
    """CLIP-SIM: 100 x cosine between the caption's and each frame's CLIP embedding, averaged over frames, then videos.

    The paper (DreamVideo §5.1) reports the average CLIP ViT-B/32 similarity between the text and
    all frames; the cosine is multiplied by `scale` (100 by default) and not clamped at 0 (unlike
    torchmetrics' CLIPScore). Images go through open_clip's own eval preprocessing, done on tensors:
    shortest side resized to 224 (bicubic, antialiased), centre crop 224, OpenAI CLIP mean/std.

    ``update(videos, captions)``: videos uint8 (B, T, H, W, 3) or float in [0, 1]; captions list[str]
    of length B.
    """

    def update(self, videos: Tensor, captions: list[str]) -> None:
        """Add a batch of videos and the captions they were generated from."""
        if videos.ndim != 5 or videos.shape[-1] != 3:
            raise DataError(f"videos must be (B, T, H, W, 3), got {tuple(videos.shape)}")
        if len(captions) != len(videos):
            raise DataError(f"{len(videos)} videos but {len(captions)} captions")
        frames = rearrange(as_uint8(videos), "b t h w c -> (b t) h w c")
        image = rearrange(self.detector.encode_images(frames, self.max_batch), "(b t) d -> b t d", b=len(videos))
        text = self.detector.encode_texts(captions)
        cosine = einsum(image, text, "b t d, b d -> b t")
        self._add(cosine.mean(dim=1))


class FFFClip(_ClipMetric):
    """FFF_CLIP: cosine between CLIP image embeddings of the first generated frame and the real first frame.

    Reported as a plain cosine (`scale` 1), as the paper's Table 1 does (0.76 for DreamVideo on
    UCF101); identical frames give 1. Same preprocessing as CLIPSim.

    ``update(videos, reference)``: videos uint8 (B, T, H, W, 3) or float in [0, 1]; reference uint8
    (B, H, W, 3), the real first frames (the reference images of image-to-video generation).
    """

    def __init__(
        self,
        detector,
        model_name: str = "ViT-B-32",
        quick_gelu: bool = True,
        scale: float = 1.0,
        max_batch: int = 256,
        **kwargs: Any,
    ) -> None:
        """As CLIPSim, with the cosine reported unscaled by default."""
        super().__init__(detector, model_name, quick_gelu, scale, max_batch, **kwargs)

    def update(self, videos: Tensor, reference: Tensor) -> None:
        """Add a batch of generated videos and their real first frames."""
        if videos.ndim != 5:
            raise DataError(f"videos must be (B, T, H, W, 3), got {tuple(videos.shape)}")
        first, real = _frames(videos[:, 0], "first frames"), _frames(reference, "reference frames")
        if len(first) != len(real):
            raise DataError(f"{len(first)} videos but {len(real)} reference frames")
        # Encoded apart: the reference image may have another size than the generated frames.
        gen = self.detector.encode_images(first, self.max_batch)
        ref = self.detector.encode_images(real, self.max_batch)
        self._add(einsum(gen, ref, "b d, b d -> b"))
