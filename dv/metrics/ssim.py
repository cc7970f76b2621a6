"""FFF_SSIM: SSIM between the first generated frame and the real first frame, equal to scikit-image's, in torch."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor
from torchmetrics import Metric

from dv.errors import DataError
from dv.metrics.detectors import as_uint8

__all__ = ["FFFSSIM", "gaussian_window", "ssim"]


def gaussian_window(
    sigma: float = 1.5, truncate: float = 3.5, dtype: torch.dtype = torch.float64, device: Any = None
) -> Tensor:
    """scipy.ndimage's 1-D Gaussian kernel: radius int(truncate * sigma + 0.5), normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    weights = torch.exp(-0.5 * (x / sigma) ** 2)
    return weights / weights.sum()


# skimage.metrics.structural_similarity(image1, image2, channel_axis=-1, gaussian_weights=True, sigma=1.5,
# use_sample_covariance=False, data_range=data_range), per image of the batch.
def ssim(
    image1: Tensor,
    image2: Tensor,
    data_range: float = 255.0,
    sigma: float = 1.5,
    truncate: float = 3.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Per-image SSIM (B,) of (B, H, W, C) images, as skimage's structural_similarity with Gaussian weights."""
    if image1.shape != image2.shape or image1.ndim != 4:
        raise DataError(
            f"SSIM needs two (B, H, W, C) batches of one shape, got {tuple(image1.shape)} and {tuple(image2.shape)}"
        )
    window = gaussian_window(sigma, truncate, device=image1.device)
    win_size = len(window)  # skimage 0.26: truncate=3.5 with Gaussian weights, win_size = 2 * radius + 1 (11)
    if min(image1.shape[1:3]) < win_size:
        raise DataError(f"SSIM needs images of at least {win_size}x{win_size}, got {tuple(image1.shape[1:3])}")
    batch = image1.shape[0]
    x = rearrange(image1.to(torch.float64), "b h w c -> (b c) 1 h w")
    y = rearrange(image2.to(torch.float64), "b h w c -> (b c) 1 h w")

    def blur(z: Tensor) -> Tensor:
        # A valid (unpadded) separable convolution: skimage filters with mode='reflect' and then crops
        # (win_size - 1) // 2 pixels off each border, which leaves exactly the pixels that never see the padding.
        z = F.conv2d(z, window.view(1, 1, -1, 1))
        return F.conv2d(z, window.view(1, 1, 1, -1))

    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux  # use_sample_covariance=False: population covariance (Wang et al. 2004)
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    # skimage: mean per channel, then the mean over channels.
    per_channel = reduce(s, "(b c) 1 h w -> b c", "mean", b=batch)
    return per_channel.mean(dim=1)


class FFFSSIM(Metric):
    """FFF_SSIM: mean SSIM between first generated frames and real first frames (in [-1, 1], higher is better).

    Matches ``skimage.metrics.structural_similarity(gen, real, channel_axis=-1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=255)`` on uint8 RGB frames (within 1e-4;
    tests/unit/test_metrics.py checks it), computed in float64 torch so it runs where the frames are.

    ``update(videos, reference)``: videos uint8 (B, T, H, W, 3) or float in [0, 1] (quantised to
    uint8); reference uint8 (B, H, W, 3) of the same size as the frames.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, videos: Tensor, reference: Tensor) -> None:
        """Add a batch of generated videos and their real first frames."""
        if videos.ndim != 5 or videos.shape[-1] != 3:
            raise DataError(f"videos must be (B, T, H, W, 3), got {tuple(videos.shape)}")
        first = as_uint8(videos[:, 0])
        scores = ssim(first, as_uint8(reference).to(first.device))
        self.score_sum = self.score_sum + scores.to(self.device).sum()
        self.count = self.count + len(scores)

    def compute(self) -> Tensor:
        """Mean SSIM over all videos added (float64 scalar)."""
        if self.count == 0:
            raise DataError("FFF_SSIM has no videos: call update() first")
        return self.score_sum / self.count

    def report(self) -> dict[str, Any]:
        """{'value', 'detector': None, 'sha256': None}: SSIM needs no detector."""
        return {"value": float(self.compute()), "detector": None, "sha256": None}
