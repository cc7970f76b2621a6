"""Curation scores of a clip, from frames the shard builder already decoded: motion and scene cuts.

Motion (:func:`motion_score`) is the mean optical-flow magnitude between consecutive clip frames
(scikit-image's iterative Lucas-Kanade on 32-px grey copies), in percent of the frame side per clip
frame. Optical flow rather than the alternatives because it measures what the model sees move:
phase correlation finds one global shift, so a zoom or a moving subject over a still background
reads as still; the mean absolute frame difference grows with texture and noise as much as with
motion, so a slow pan over grass outscores a fast one over sky. At 32 px it costs about a
millisecond per frame pair (under 2% of a 1080p build; tests/unit/test_scores.py checks it against
known pans, zooms and still clips).

Scene cuts (:func:`scene_cut`) are found over every frame of the clip's source span (not only the
kept frames, between which a cut could hide): the luma histograms of neighbouring frames are
compared, and a cut is a jump that is large in absolute terms and large against the span's
typical frame-to-frame change (so a fast pan, which changes every frame a little, is not a cut).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from skimage.registration import optical_flow_ilk
from skimage.transform import resize

__all__ = ["FLOW_SIDE", "CUT_DISTANCE", "luma", "motion_score", "scene_cut"]

FLOW_SIDE = 32
"""Side of the grey copies optical flow runs on."""
CUT_DISTANCE = 0.25
"""Histogram distance (total variation, 0..1) between neighbouring frames above which a cut may lie
(camera-pans pans and zooms stay under 0.05; cuts between its photos measure 0.43-0.82)."""
_CUT_RATIO = 5.0  # ...and at least this many times the span's median neighbouring distance
_BINS = 32


def luma(frames: np.ndarray) -> np.ndarray:
    """Rec. 601 luma, uint8 `(..., H, W)`, of uint8 RGB frames `(..., H, W, 3)`."""
    y = frames[..., 0] * 0.299 + frames[..., 1] * 0.587 + frames[..., 2] * 0.114
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _grey_small(frame: np.ndarray) -> np.ndarray:
    """A float32 grey copy of an RGB frame, resized to FLOW_SIDE on its short side (area-averaged)."""
    h, w = frame.shape[:2]
    step = max(1, min(h, w) // (4 * FLOW_SIDE))  # every k-th pixel first: the block mean below still averages 4x4
    grey = luma(frame[::step, ::step]).astype(np.float32) / 255.0
    h, w = grey.shape
    scale = FLOW_SIDE / min(h, w)
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    if h % shape[0] == 0 and w % shape[1] == 0:  # whole-number factors (256 -> 64): a block mean is exact and fast
        return grey.reshape(shape[0], h // shape[0], shape[1], w // shape[1]).mean(axis=(1, 3))
    return resize(grey, shape, anti_aliasing=scale < 1).astype(np.float32)


def motion_score(frames: np.ndarray) -> float:
    """Mean optical-flow magnitude between consecutive frames of uint8 `(T, H, W, 3)`, in % of the short side per frame.

    A still clip scores about 0; camera-pans' pans (2.5-4.5 px per frame at 256 px) about 1-2.
    Fewer than two frames score 0.
    """
    if len(frames) < 2:
        return 0.0
    small = [_grey_small(f) for f in frames]
    # radius 3, one warp: within 2% of the true shift on pans of a few pixels, at a tenth of the default's cost.
    mags = [np.hypot(*optical_flow_ilk(a, b, radius=3, num_warp=1)).mean() for a, b in zip(small, small[1:])]
    return float(100.0 * np.mean(mags) / min(small[0].shape))


def _histogram(thumb: np.ndarray) -> np.ndarray:
    """Normalised luma histogram of a thumbnail."""
    counts = np.bincount((thumb.ravel() >> 3).astype(np.intp), minlength=_BINS).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def scene_cut(thumbs: Sequence[np.ndarray], first: int = 0) -> tuple[int | None, float]:
    """(frame index of the first frame after a cut or None, largest neighbouring histogram distance).

    `thumbs` are uint8 luma images of consecutive frames, the first being frame `first`.
    """
    if len(thumbs) < 2:
        return None, 0.0
    hists = np.stack([_histogram(t) for t in thumbs])
    dist = 0.5 * np.abs(np.diff(hists, axis=0)).sum(axis=1)  # total variation distance, 0..1
    typical = float(np.median(dist))
    cuts = np.flatnonzero((dist > CUT_DISTANCE) & (dist > _CUT_RATIO * typical))
    return (first + int(cuts[0]) + 1 if len(cuts) else None), float(dist.max())
