"""FVD: Fréchet distance between I3D features of real and generated videos (StyleGAN-V's protocol)."""

from __future__ import annotations

import os
from copy import deepcopy
from typing import Any

import torch
from einops import einsum
from torch import Tensor

from dv.errors import DataError, WeightsError
from dv.metrics.base import DetectorMetric
from dv.metrics.detectors import FrozenDetector, load_i3d, video_clip
from dv.metrics.frechet import frechet_distance, mean_cov_from_sums

__all__ = ["FVD"]

I3D_KWARGS = dict(rescale=True, resize=True, return_features=True)
"""How StyleGAN-V calls i3d_torchscript.pt (src/metrics/frechet_video_distance.py, `detector_kwargs`)."""


class FVD(DetectorMetric):
    """Fréchet Video Distance between real and generated videos, from I3D features; lower is better.

    Reference facts (github.com/universome/stylegan-v, src/metrics/frechet_video_distance.py and
    src/metrics/metric_utils.py, metric `fvd2048_16f`):

    - detector: ``i3d_torchscript.pt``, a TorchScript port of the tf.hub I3D (Kinetics-400) used by
      google-research's frechet_video_distance.py; the features are its 400 raw logits
      ("raw features before the softmax layer").
    - input: uint8 (B, 3, T, H, W) in [0, 255], T = 16 consecutive frames (`num_frames=16`,
      `subsample_factor=1`); StyleGAN-V quantises generated frames to uint8 before the detector too.
    - call: ``detector(videos, rescale=True, resize=True, return_features=True)``: the network itself
      rescales [0, 255] to [-1, 1] and resizes frames to 224x224 (the tf.hub model's input).
    - statistics: float64 sums of features and of their outer products; covariance divided by n
      (`FeatureStats.get_mean_cov`); distance ``|mu_g - mu_r|^2 + tr(S_g + S_r - 2 sqrtm(S_g S_r))``.
    - the paper number uses 2048 real and 2048 generated videos.

    ``update(videos, real)``: videos uint8 (B, T, H, W, 3) (dv's batch format) or float in [0, 1],
    T >= num_frames; the first num_frames frames are used. State is fixed-size (sums and counts for
    real and fake), so memory does not grow and the DDP sync is a sum. Use ``update``/``compute``,
    not ``forward`` (a single batch has no two distributions). ``num_features`` is the detector's
    feature width (400 for I3D), ``max_batch`` caps videos per detector call.
    """

    higher_is_better = False

    def __init__(
        self,
        detector: str | os.PathLike | FrozenDetector,
        num_frames: int = 16,
        num_features: int = 400,
        reset_real_features: bool = True,
        max_batch: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Take the I3D file (path or loaded); reset_real_features=False keeps real statistics across reset()."""
        super().__init__(detector if isinstance(detector, FrozenDetector) else load_i3d(detector), **kwargs)
        if self.detector_id.kind != "i3d":
            raise WeightsError(
                f"FVD needs the I3D detector, got a {self.detector_id.kind} one ({self.detector_id.path})"
            )
        self.num_frames = num_frames
        self.num_features = num_features
        self.reset_real_features = reset_real_features
        self.max_batch = max_batch
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", torch.zeros(num_features, dtype=torch.float64), dist_reduce_fx="sum")
            outer = torch.zeros(num_features, num_features, dtype=torch.float64)
            self.add_state(f"{side}_outer_sum", outer, dist_reduce_fx="sum")
            self.add_state(f"{side}_count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def features(self, videos: Tensor) -> Tensor:
        """I3D features (B, num_features) in float64 of dv videos (B, T, H, W, 3)."""
        clip = video_clip(videos, self.num_frames)
        parts = clip.split(self.max_batch or len(clip))
        feats = torch.cat([self.detector(part, **I3D_KWARGS) for part in parts]).to(self.device, torch.float64)
        if feats.shape != (len(clip), self.num_features):
            raise WeightsError(
                f"{self.detector_id.path} returned features of shape {tuple(feats.shape)}, FVD expects "
                f"({len(clip)}, {self.num_features}); is it i3d_torchscript.pt?"
            )
        return feats

    def update(self, videos: Tensor, real: bool) -> None:
        """Add a batch of real (`real=True`) or generated videos."""
        feats = self.features(videos)
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + feats.sum(dim=0))
        outer = einsum(feats, feats, "b i, b j -> i j")
        setattr(self, f"{side}_outer_sum", getattr(self, f"{side}_outer_sum") + outer)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + len(feats))

    def compute(self) -> Tensor:
        """FVD (float64 scalar) between everything added so far."""
        if self.real_count < 2 or self.fake_count < 2:
            counts = f"{int(self.real_count)} and {int(self.fake_count)}"
            raise DataError(f"FVD needs at least 2 real and 2 generated videos, got {counts}")
        mu_real, cov_real = mean_cov_from_sums(self.real_sum, self.real_outer_sum, self.real_count)
        mu_fake, cov_fake = mean_cov_from_sums(self.fake_sum, self.fake_outer_sum, self.fake_count)
        return frechet_distance(mu_fake, cov_fake, mu_real, cov_real)

    def reset(self) -> None:
        """Clear the states; the real statistics survive when reset_real_features is False."""
        if self.reset_real_features:
            super().reset()
            return
        keep = {k: deepcopy(getattr(self, k)) for k in ("real_sum", "real_outer_sum", "real_count")}
        super().reset()
        for key, value in keep.items():
            setattr(self, key, value)
