"""dv.data.video seeking: every read equals decoding from the start, pixel for pixel, on files made here.

Each file burns its frame number into the picture (a white bar whose length is the number), so a
wrong frame would also be visible by eye; the check itself compares with a plain decode from the start.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from dv.data import video as V


def counter_frames(t: int, h: int, w: int) -> list[np.ndarray]:
    """uint8 (h, w, 3) frames of drifting waves with frame number i burnt in as bits along the top."""
    y, x = np.mgrid[0:h, 0:w] / 8.0
    out = []
    for i in range(t):
        f = 128 + 60 * np.sin(x + 0.3 * i) * np.cos(y - 0.2 * i)
        a = np.stack([f, f * 0.9 + 10, f * 0.8 + 20], -1).round().astype(np.uint8)
        for bit in range(9):  # 9 bits: frame numbers up to 511, one 8-px square each
            a[:8, bit * 8 : bit * 8 + 8] = 255 if i >> bit & 1 else 0
        out.append(a)
    return out


def encode(path: Path, fmt: str | None, codec: str, t: int, h: int = 48, w: int = 80, fps: int = 30, **options) -> Path:
    """Write `t` counter frames with PyAV; `options` go to the encoder."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {k: str(v) for k, v in options.items()}
        for frame in counter_frames(t, h, w):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def from_start(source, indices, size=None) -> dict[int, np.ndarray]:
    """The reference answer: decode every frame in order, keep the wanted ones."""
    wanted, out = set(indices), {}
    with av.open(str(source)) as container:
        for n, frame in enumerate(container.decode(container.streams.video[0])):
            if n in wanted:
                out[n] = V._frame_to_square(frame, size, V._frame_rotation(frame))
            if n >= max(wanted):
                break
    return out


def assert_same_as_from_start(path, indices, size=None) -> V.Span:
    """read_span returns exactly the frames a decode from the start gives."""
    span = V.read_span(path, indices, size, spans=[(min(indices), max(indices))])
    ref = from_start(path, indices, size)
    assert sorted(span.frames) == sorted(ref) == sorted(set(indices))
    for i in ref:
        np.testing.assert_array_equal(span.frames[i], ref[i], err_msg=f"frame {i} of {path.name}")
    assert sorted(span.thumbs) == list(range(min(indices), max(indices) + 1))
    return span


CLIPS = [[0, 1, 2], [5, 9, 13], [118, 122, 126, 130], [20, 150, 239], [239], [99, 100, 101, 102]]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One 240-frame file per container case."""
    d = tmp_path_factory.mktemp("seek")
    return {
        # B-frames and sparse keyframes (every 100 frames): most clips start far from a keyframe.
        "mp4": encode(d / "b.mp4", "mp4", "libx264", 240, g=100, keyint_min=100, sc_threshold=0, bf=3),
        "mkv": encode(d / "b.mkv", "matroska", "libx264", 240, g=60, bf=3),  # no frame count in the header
        "webm": encode(d / "v.webm", "webm", "libvpx-vp9", 240, g=60, deadline="realtime", cpu_used=8),
        "h264": encode(d / "r.h264", "h264", "libx264", 240, g=60, bf=3),  # raw stream: no timestamps
        "open_gop": encode(d / "o.mp4", "mp4", "libx264", 240, bf=3, **{"x264-params": "open-gop=1:keyint=60"}),
    }


@pytest.mark.parametrize("kind", ["mp4", "mkv", "webm"])
@pytest.mark.parametrize("indices", CLIPS)
def test_seeking_reads_the_frames_decoding_from_the_start_does(files, kind, indices):
    span = assert_same_as_from_start(files[kind], indices, size=32)
    assert span.fallback == "" and span.seeks >= 1


@pytest.mark.parametrize("kind", ["h264", "open_gop"])
def test_unseekable_streams_decode_from_the_start_and_say_why(files, kind):
    for indices in CLIPS:
        span = assert_same_as_from_start(files[kind], indices)
        assert span.fallback and span.seeks == 0
    assert "raw stream" in V.read_span(files["h264"], [3]).fallback
    assert "open GOP" in V.read_span(files["open_gop"], [3]).fallback


def test_a_mid_file_clip_decodes_only_from_its_keyframe(files):
    span = V.read_span(files["mp4"], [118, 122, 126, 130])  # keyframes at 0, 100, 200
    assert span.decoded == 31 and span.end == 131  # frames 100..130, not 0..130
    span = V.read_span(files["mkv"], [20, 150, 239])  # keyframes every 60: three short runs, three seeks
    assert span.seeks == 3 and span.decoded == 21 + 31 + 60


@pytest.mark.parametrize("kind", ["mp4", "mkv", "webm", "h264"])
def test_frame_count_comes_from_packets_without_decoding(files, kind, monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("count_frames decoded the file")

    monkeypatch.setattr(av.container.InputContainer, "decode", no_decode)
    assert V.count_frames(files[kind]) == 240


def test_raw_stream_fps_comes_from_the_bitstream_not_a_silent_25(files, tmp_path):
    info = V.probe(files["h264"])
    assert info.fps == 30.0 and not info.fps_assumed
    mpeg4 = encode(tmp_path / "r.m4v", "m4v", "mpeg4", 10, fps=30)  # a raw MPEG-4 part 2 stream
    info = V.probe(mpeg4)
    assert info.fps_assumed == (info.fps == V.ASSUMED_FPS)  # either the bitstream's rate or a stated assumption


def test_avi_without_an_index_reads_the_same_frames(tmp_path):
    good = encode(tmp_path / "x.avi", "avi", "mpeg4", 120, g=30, bf=0)
    data = good.read_bytes()
    assert data.count(b"idx1") == 1
    bare = tmp_path / "noindex.avi"
    bare.write_bytes(data.replace(b"idx1", b"JUNK"))  # the index chunk becomes padding a reader skips
    for path in (good, bare):
        for indices in ([3, 7], [64, 68, 72], [119]):
            assert_same_as_from_start(path, indices)


def test_truncated_file_reports_where_it_ends(files, tmp_path):
    data = files["mkv"].read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    span = V.read_span(cut, [10, 200])
    assert 10 in span.frames and 200 not in span.frames and 10 < span.end < 200


def test_threads_do_not_change_pixels(files):
    one = V.read_span(files["mp4"], [118, 130], threads=1).frames
    auto = V.read_span(files["mp4"], [118, 130], threads=0).frames
    assert all((one[i] == auto[i]).all() for i in one)


@pytest.mark.slow
def test_long_hd_file_seeks_to_the_same_frames(tmp_path):
    """1280x720, 4 s at 30 fps, keyframes every 60, B-frames: what a Pexels-style source looks like, short."""
    path = encode(tmp_path / "hd.mp4", "mp4", "libx264", 120, h=720, w=1280, g=60, bf=3, preset="veryfast")
    for indices in ([70, 74, 78, 82, 86], [1, 5, 9], [60, 119]):
        span = assert_same_as_from_start(path, indices, size=256)
        assert span.fallback == ""
        if indices[0] >= 60:
            assert span.decoded == indices[-1] - 60 + 1  # from the keyframe at 60, not from 0


@pytest.mark.parametrize("kind", ["mkv", "h264"])
def test_the_builder_decodes_no_frame_twice(files, kind, monkeypatch):
    from data_prep.writer import BuildConfig, Record, process_record

    seen: list[int] = []
    take = V._Reader.take
    monkeypatch.setattr(V._Reader, "take", lambda self, i, frame: (seen.append(i), take(self, i, frame))[1])
    cfg = BuildConfig(out_dir="unused", source="test", frames=8, stride=4, size=32, clips_per_video=2)
    samples, reason = process_record(Record("v", str(files[kind]), "a clip"), "train", cfg)
    assert reason is None and len(samples) == 2
    assert len(seen) == len(set(seen))  # counted from packets, decoded once (raw: from the start, once)
    if kind == "mkv":  # two clips, 0..28 and 211..239: from the keyframes at 0 and 180, not all 240 frames
        assert len(seen) == 29 + 60
