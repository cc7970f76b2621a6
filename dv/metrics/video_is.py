"""Video Inception Score: C3D (UCF-101) class probabilities of generated videos (StyleGAN-V / TGAN2 protocol)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from dv.errors import DataError, WeightsError
from dv.metrics.base import DetectorMetric
from dv.metrics.detectors import FrozenDetector, load_c3d, video_clip

__all__ = ["VideoIS", "inception_score"]


def inception_score(probs: Tensor, num_splits: int = 10, seed: int | None = 42) -> tuple[Tensor, Tensor]:
    """Mean and std over splits of exp(E[KL(p(y|x) || p(y))]) for class probabilities (N, C), in float64."""
    probs = probs.to(torch.float64)
    n = len(probs)
    if n < num_splits:
        raise DataError(f"video IS with {num_splits} splits needs at least {num_splits} videos, got {n}")
    if seed is not None:
        # The very permutation of StyleGAN-V's np.random.RandomState(42).shuffle(gen_probs).
        order = torch.from_numpy(np.random.RandomState(seed).permutation(n)).to(probs.device)
        probs = probs[order]
    scores = []
    for i in range(num_splits):
        part = probs[i * n // num_splits : (i + 1) * n // num_splits]
        marginal = part.mean(dim=0, keepdim=True)
        # xlogy: 0 * log 0 = 0, where the reference's part * log(part) would give NaN for an underflowed probability.
        kl = torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)
        scores.append(kl.sum(dim=1).mean().exp())
    scores = torch.stack(scores)
    return scores.mean(), scores.std(unbiased=False)  # np.std's ddof=0, as the reference reports


class VideoIS(DetectorMetric):
    """Inception Score of generated videos from a UCF-101 C3D; higher is better. compute() -> (mean, std).

    Reference facts (github.com/universome/stylegan-v, src/metrics/video_inception_score.py and
    src/metrics/metric_utils.py, metric `isv2048_ucf`; TGAN2, github.com/pfnet-research/tgan2,
    tgan2/models/c3d/c3d_ucf101.py and tgan2/evaluations/inception_score.py):

    - detector: ``c3d_ucf101.pt``, a TorchScript port of TGAN2's chainer C3DVersion1UCF101, called
      with no keyword arguments on uint8 (B, 3, 16, H, W) in [0, 255]; it returns softmax
      probabilities over the 101 UCF-101 classes. The preprocessing lives in the file; TGAN2's
      model, which it ports, does: RGB->BGR, a bilinear resize of every frame straight to 112x112
      (no resize-then-crop of the video: it is the mean clip, mean2.npz, that is cropped to
      [8:120, 8:120]), and subtraction of that mean clip, then C3D fc8 and a softmax.
    - 16 frames, consecutive (`num_frames = 16`, `subsample_factor=1`).
    - score: probabilities shuffled with ``np.random.RandomState(42)``, cut into 10 splits
      ``[i*n//10 : (i+1)*n//10]``, exp of the mean KL per split; reported as mean and std (ddof=0)
      of the 10 scores over 2048 generated videos.

    ``update(videos)``: uint8 (B, T, H, W, 3) or float in [0, 1], T >= num_frames; the first
    num_frames frames are used. The state is the list of probabilities (cat across ranks), so the
    split contents depend on the order videos were added; with DDP, ranks are concatenated in order.
    """

    higher_is_better = True

    def __init__(
        self,
        detector: str | os.PathLike | FrozenDetector,
        num_frames: int = 16,
        num_splits: int = 10,
        seed: int | None = 42,
        max_batch: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Take the C3D file (path or loaded); seed 42 is the reference's shuffle (None keeps the order)."""
        super().__init__(detector if isinstance(detector, FrozenDetector) else load_c3d(detector), **kwargs)
        if self.detector_id.kind != "c3d":
            raise WeightsError(
                f"video IS needs the C3D detector, got a {self.detector_id.kind} one ({self.detector_id.path})"
            )
        self.num_frames = num_frames
        self.num_splits = num_splits
        self.seed = seed
        self.max_batch = max_batch
        self.add_state("probs", [], dist_reduce_fx="cat")

    def update(self, videos: Tensor) -> None:
        """Add a batch of generated videos."""
        clip = video_clip(videos, self.num_frames)
        probs = torch.cat([self.detector(part) for part in clip.split(self.max_batch or len(clip))])
        probs = probs.to(self.device, torch.float64)
        sums_to_one = probs.ndim == 2 and bool(((probs.sum(dim=1) - 1).abs() < 1e-3).all())
        if probs.shape[0] != len(clip) or not sums_to_one or probs.min() < 0:
            raise WeightsError(
                f"{self.detector_id.path} must return class probabilities (B, classes), as c3d_ucf101.pt does"
            )
        self.probs.append(probs)

    def compute(self) -> tuple[Tensor, Tensor]:
        """(mean, std) of the Inception Score over the splits."""
        if isinstance(self.probs, list) and not self.probs:
            raise DataError("video IS has no videos: call update() first")
        return inception_score(dim_zero_cat(self.probs), self.num_splits, self.seed)

    def report(self) -> dict[str, Any]:
        """{'value': mean, 'std', 'detector', 'sha256'}."""
        mean, std = self.compute()
        return {
            "value": float(mean),
            "std": float(std),
            "detector": self.detector_id.path,
            "sha256": self.detector_id.sha256,
        }
