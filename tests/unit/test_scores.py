"""Clip scores: motion from camera-pans clips of known speed (and still ones), cuts in spliced files, in shards."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from data_prep import camera_pans
from data_prep.writer import BuildConfig, Record, build
from dv.data.scores import motion_score, scene_cut
from dv.data.video import write_video


def known_speed(renderer: camera_pans.PanRenderer, size: int, frames: int) -> float:
    """The renderer's own camera speed, in % of the frame side per frame (pans move the window steadily)."""
    w, h = renderer.source_size
    scale = size / camera_pans.WINDOW_FRACTION / min(w, h)
    cx, cy, side = renderer._path(0, frames, size, round(w * scale), round(h * scale))
    step = float(np.hypot(np.diff(cx.numpy()), np.diff(cy.numpy())).mean())
    return 100.0 * step / float(side[0])


@pytest.mark.parametrize("photo", ["coins", "astronaut", "grass", "page"])
@pytest.mark.parametrize("move", ["pan-left", "pan-down"])
def test_motion_score_measures_the_pan_speed(photo, move):
    renderer = camera_pans.PanRenderer(photo, move, seed=0)
    frames = renderer.render(0, 16, 128)
    truth = known_speed(renderer, 128, 16)
    assert 1.9 < truth < 3.6  # 2.5-4.5 output px per frame, at 128 px
    assert motion_score(frames) == pytest.approx(truth, rel=0.3)


@pytest.mark.parametrize("move", list(camera_pans.MOVES))
def test_still_clips_score_far_below_moving_ones(move):
    renderer = camera_pans.PanRenderer("coffee", move, seed=1)
    moving = motion_score(renderer.render(0, 16, 128))
    still = motion_score(renderer.render(0, 16, 128, stride=0))  # stride 0: the camera never moves
    assert still < 0.05 and moving > 0.5  # zooms too: optical flow sees them, phase correlation would not


def spliced(first: str, second: str, frames: int, cut: int, size: int = 64) -> np.ndarray:
    """`frames` frames: a pan over photo `first`, cut at frame `cut` to a pan over photo `second`."""
    a = camera_pans.PanRenderer(first, "pan-left", seed=0).render(0, frames, size)
    b = camera_pans.PanRenderer(second, "pan-up", seed=0).render(0, frames, size)
    return np.concatenate([a[:cut], b[: frames - cut]])


def test_scene_cut_finds_the_splice_and_not_a_pan():
    frames = spliced("coins", "astronaut", 24, cut=13)
    thumbs = [f[..., 1] for f in frames]
    assert scene_cut(thumbs, first=100)[0] == 113
    for move in camera_pans.MOVES:
        pan = camera_pans.PanRenderer("grass", move, seed=0).render(0, 24, 64)
        assert scene_cut([f[..., 1] for f in pan])[0] is None


def clip_metas(out) -> list[dict]:
    """Every clip's metadata in a build's shards."""
    metas = []
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            metas += [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    return metas


def test_a_cut_between_kept_frames_is_found_in_the_built_shard(tmp_path):
    # 80 frames, cut at 40; a clip of 4 frames at stride 8 keeps 27, 35, 43, 51: the cut lies between two kept frames.
    path = tmp_path / "spliced.mp4"
    write_video(path, spliced("coins", "astronaut", 80, cut=40), fps=24)
    still = tmp_path / "still.mp4"
    write_video(still, np.repeat(camera_pans.PanRenderer("moon", "pan-left", 0).render(0, 1, 64), 80, axis=0), fps=24)
    cfg = BuildConfig(out_dir=str(tmp_path / "o"), source="test", frames=4, stride=8, size=32, workers=1)
    build({"train": [Record("cut", str(path), "a cut"), Record("still", str(still), "still")]}, cfg, quiet=True)
    metas = {m["source_id"]: m for m in clip_metas(tmp_path / "o")}
    cut, calm = metas["cut"], metas["still"]
    assert cut["frame_indices"] == [27, 35, 43, 51]
    assert cut["scores"]["cut"] is True and cut["scores"]["cut_frame"] == 40
    assert calm["scores"]["cut"] is False and calm["scores"]["cut_frame"] is None
    assert calm["scores"]["motion"] < 0.05 < cut["scores"]["motion"]
    assert cut["source_size"] == [64, 64] and cut["source_bit_rate"] > 0 and cut["format_version"] == 2


def test_camera_pans_clips_are_scored_without_cuts(tmp_path):
    cfg = BuildConfig(out_dir=str(tmp_path), source="camera-pans", frames=8, size=64, clips_per_video=2, workers=1)
    records = camera_pans.records(type("Args", (), {"seed": 0})())["val"][:6]  # one photo, every move
    build({"val": records}, cfg, quiet=True)
    metas = clip_metas(tmp_path)
    assert len(metas) == 12
    for meta in metas:
        assert meta["scores"]["cut"] is False and meta["scores"]["motion"] > 0.5
        assert meta["source_bit_rate"] is None  # rendered: no bitstream
