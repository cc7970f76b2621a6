"""The claims experiment's camera-motion estimator and its report helpers."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.camera_pans import MOVES, VAL_PHOTOS, PanRenderer, reference_view
from dv.claims.motion import MOTIONS, confusion_matrix, estimate_motion
from dv.claims.report import accuracy, per_seed, spread


def test_motions_are_the_shard_builders_moves():
    assert set(MOTIONS) == set(MOVES)


@pytest.mark.parametrize("size", [32, 64])
def test_recovers_every_rendered_camera_move(size):
    # Real camera-pans renders of the held-out photos: the estimator must name each move.
    for photo in VAL_PHOTOS:
        for move in MOVES:
            frames = PanRenderer(photo=photo, move=move, seed=0).render(0, frames=8, size=size)
            assert estimate_motion(frames).label == move, (photo, move, estimate_motion(frames))


def test_drift_sign_and_size_on_a_shifted_image():
    rng = np.random.default_rng(0)
    base = rng.random((48, 48))
    frames = np.stack([np.roll(base, shift=(0, 2 * k), axis=(0, 1)) for k in range(5)])  # content drifts right 2 px
    est = estimate_motion(frames[:, 8:40, 8:40])
    assert est.drift_x == pytest.approx(2.0, abs=0.1) and abs(est.drift_y) < 0.1
    assert est.label == "pan-left"  # the camera pans left when the content drifts right
    assert est.size == pytest.approx(2.0, abs=0.1)


def test_a_still_video_and_bad_shapes():
    still = np.repeat(reference_view("rocket", 32)[None], 4, axis=0)
    est = estimate_motion(still)
    assert abs(est.drift_x) < 1e-6 and abs(est.drift_y) < 1e-6 and est.size < 1e-6
    with pytest.raises(ValueError, match="T >= 2"):
        estimate_motion(still[:1])


def test_confusion_matrix_and_accuracy():
    truth = ["pan-left", "pan-left", "zoom-in", "pan-up"]
    found = ["pan-left", "pan-right", "zoom-in", "pan-down"]
    m = confusion_matrix(truth, found)
    assert m.sum() == 4 and m[MOTIONS.index("pan-left"), MOTIONS.index("pan-right")] == 1
    assert np.trace(m) == 2
    rows = [dict(seed=s, motion=t, predicted=f) for s, (t, f) in enumerate(zip(truth, found))]
    assert accuracy(rows) == 0.5
    assert per_seed(rows, accuracy).tolist() == [1.0, 0.0, 1.0, 0.0]


def test_spread_is_mean_and_sample_std():
    assert spread(np.array([1.0, 2.0, 3.0])) == "2.00 ± 1.00"
    assert spread(np.array([0.5])) == "0.50"


def test_reference_view_is_the_pans_scale():
    view = reference_view("coffee", 32)
    assert view.shape == (32, 32, 3) and view.dtype == np.uint8
    first = PanRenderer(photo="coffee", move="zoom-in", seed=0).render(0, frames=2, size=32)[0]
    assert np.abs(view.astype(float) - first.astype(float)).mean() < 60  # the same photo at a similar scale
