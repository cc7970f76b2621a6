"""Camera motion of a video, recovered with phase correlation between consecutive frames.

Convention (data_prep.camera_pans): "pans left" makes the picture content drift right
in the frame, "pans up" makes it drift down, "zooms in" makes it grow. The estimate
reads the content's drift from the whole frame, and its growth from how the left and
right (top and bottom) halves drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.filters import window
from skimage.registration import phase_cross_correlation

MOTIONS = ("pan-left", "pan-right", "pan-up", "pan-down", "zoom-in", "zoom-out")


def _drift(earlier: np.ndarray, later: np.ndarray) -> np.ndarray:
    """(dy, dx) by which the content of `earlier` moved to reach `later`, in pixels."""
    # A Hann window keeps the frame borders (where content enters and leaves) from biasing the peak;
    # on ground-truth clips at 32x32 it took direction accuracy from 88/96 to 96/96.
    hann = window("hann", earlier.shape)
    # phase_cross_correlation returns the shift that registers `moving` onto `reference`:
    # with reference=later, moving=earlier that is the content's own drift.
    shift, _, _ = phase_cross_correlation(later * hann, earlier * hann, upsample_factor=100, normalization="phase")
    return np.asarray(shift, dtype=np.float64)


@dataclass(frozen=True)
class MotionEstimate:
    """Mean per-frame content drift (pixels) and expansion (pixels the halves drift apart per frame)."""

    drift_y: float
    drift_x: float
    expansion: float

    @property
    def label(self) -> str:
        """The camera move this motion most resembles, one of MOTIONS."""
        # A pan moves everything one way; a zoom moves the halves apart, each by about half the expansion.
        if abs(self.expansion) / 2 > max(abs(self.drift_x), abs(self.drift_y)):
            return "zoom-in" if self.expansion > 0 else "zoom-out"
        if abs(self.drift_x) >= abs(self.drift_y):
            return "pan-left" if self.drift_x > 0 else "pan-right"
        return "pan-up" if self.drift_y > 0 else "pan-down"

    @property
    def size(self) -> float:
        """How far the camera moves, in pixels per frame: the largest component `label` compares (a zoom moves
        each half by half the expansion). A still video is near 0, whichever label its noise gives it."""
        return max(abs(self.drift_x), abs(self.drift_y), abs(self.expansion) / 2)


def estimate_motion(frames: np.ndarray) -> MotionEstimate:
    """Camera motion of one video: uint8 or float frames (T, H, W, C) or (T, H, W), T >= 2."""
    if frames.ndim == 4:
        frames = frames.astype(np.float64).mean(axis=-1)
    frames = frames.astype(np.float64)
    if frames.ndim != 3 or frames.shape[0] < 2:
        raise ValueError(f"estimate_motion needs frames (T >= 2, H, W[, C]), got shape {frames.shape}")
    _, h, w = frames.shape
    drift, expansion = [], []
    for a, b in zip(frames[:-1], frames[1:]):
        drift.append(_drift(a, b))
        left, right = _drift(a[:, : w // 2], b[:, : w // 2]), _drift(a[:, w // 2 :], b[:, w // 2 :])
        top, bottom = _drift(a[: h // 2], b[: h // 2]), _drift(a[h // 2 :], b[h // 2 :])
        expansion.append(((right[1] - left[1]) + (bottom[0] - top[0])) / 2)
    dy, dx = np.mean(drift, axis=0)
    return MotionEstimate(drift_y=float(dy), drift_x=float(dx), expansion=float(np.mean(expansion)))


def confusion_matrix(truth: list[str], predicted: list[str]) -> np.ndarray:
    """Counts (len(MOTIONS), len(MOTIONS)): row = the caption's motion, column = the recovered one."""
    out = np.zeros((len(MOTIONS), len(MOTIONS)), dtype=np.int64)
    for t, p in zip(truth, predicted):
        out[MOTIONS.index(t), MOTIONS.index(p)] += 1
    return out
