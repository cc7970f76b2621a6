"""data_prep: the shared writer, the four adapters, bad inputs, resume, node splitting, worker crashes.

Every input file is made here, tiny (tens of pixels, a dozen frames), with PyAV or raw bytes.
"""

from __future__ import annotations

import json
import os
import tarfile
from argparse import Namespace
from pathlib import Path

import av
import numpy as np
import pytest
import webdataset as wds
from skimage.color import rgb2gray
from skimage.registration import phase_cross_correlation

from data_prep import camera_pans, pexels, ucf101
from data_prep.__main__ import main
from data_prep.writer import BuildConfig, Record, build
from dv.claims.motion import estimate_motion
from dv.data.dead_leaves import dead_leaves
from dv.data.shards import decode_sample, read_stats, shard_name, stats_name
from dv.data.video import write_video
from dv.errors import ConfigError

SMALL = ["--frames", "4", "--stride", "2", "--size", "16", "--workers", "1", "-q"]


def waves(t: int, h: int, w: int) -> np.ndarray:
    """Smooth moving content, uint8 (t, h, w, 3)."""
    y, x = np.mgrid[0:h, 0:w] / 3.0
    f = [128 + 70 * np.sin(x + 0.5 * i) * np.cos(y) for i in range(t)]
    return np.stack([np.stack([a, a * 0.9, a * 0.8], -1) for a in f]).round().astype(np.uint8)


def mp4(path: Path, t: int = 10, h: int = 24, w: int = 32, **kw) -> Path:
    """A small H.264 mp4."""
    write_video(path, waves(t, h, w), fps=kw.pop("fps", 10), **kw)
    return path


def read_shards(out: Path, prefix: str = "train") -> list[dict]:
    """All samples of a split's shards, decoded."""
    urls = sorted(str(p) for p in out.glob(f"{prefix}-*.tar"))
    return [decode_sample(s) for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())]


def all_stats(out: Path, prefix: str = "train") -> dict:
    """Merged `skipped` of every stats file of a split, plus totals."""
    skipped, written = {}, 0
    for p in sorted(out.glob(f"{prefix}-*.stats.json")):
        s = read_stats(p)
        skipped.update(s.skipped)
        written += s.samples_written
    return {"skipped": skipped, "written": written}


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--size", "15"], "--size"),
        (["--frames", "0"], "--frames"),
        (["--num-nodes", "2", "--node-rank", "2"], "--node-rank"),
        (["--shard-size", "0"], "--shard-size"),
        (["--source", "nope"], "invalid choice"),
    ],
)
def test_bad_values_are_one_line_errors_with_exit_2(tmp_path, capsys, extra, message):
    argv = ["build", "--source", "camera-pans", "--out", str(tmp_path / "o"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("data_prep: error:") and message in err and "\n" not in err


def test_pexels_needs_manifest(tmp_path, capsys):
    assert main(["build", "--source", "pexels", "--out", str(tmp_path), "--video-root", str(tmp_path)]) == 2
    assert "--manifest" in capsys.readouterr().err


# --- bad inputs through one build ----------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """A folder of good and broken videos and a pexels-style CSV listing them (and some that are not there)."""
    root = tmp_path_factory.mktemp("zoo")
    mp4(root / "good.mp4")
    mp4(root / "portrait.mp4", h=40, w=24)
    mp4(root / "rotated.mp4", rotation=90)
    write_video(root / "odd.mkv", waves(10, 5, 7), 10, codec="ffv1", pix_fmt="bgr0", container_format="matroska")
    write_video(root / "one.mkv", waves(10, 1, 1), 10, codec="ffv1", pix_fmt="bgr0", container_format="matroska")
    mp4(root / "short.mp4", t=5)
    full = root / "full.mkv"
    noise = np.random.default_rng(0).integers(0, 255, (40, 16, 16, 3), dtype=np.uint8)  # bytes spread evenly
    write_video(full, noise, 10, codec="mpeg4", container_format="matroska")  # header: 40 frames
    (root / "trunc_partial.mkv").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    whole = mp4(root / "whole.mp4", t=30)
    (root / "trunc_mp4.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_bytes(b"definitely not a video\n" * 40)
    with av.open(str(root / "audio.m4a"), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=8000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 4096), np.float32), format="fltp", layout="mono")
        f.sample_rate = 8000
        for packet in [*s.encode(f), *s.encode()]:
            c.mux(packet)
    write_video(root / "codec.avi", waves(10, 8, 8), 10, codec="mpeg4", container_format="avi")
    (root / "codec.avi").write_bytes((root / "codec.avi").read_bytes().replace(b"FMP4", b"QQQQ"))
    rows = [
        ("good", "good.mp4", "a good video"),
        ("portrait", "portrait.mp4", "a tall video"),
        ("rotated", "rotated.mp4", "a phone video"),
        ("odd", "odd.mkv", "seven by five"),
        ("one", "one.mkv", "one pixel"),
        ("short", "short.mp4", "too short"),
        ("trunc_partial", "trunc_partial.mkv", "cut in half but still decodes"),
        ("trunc_mp4", "trunc_mp4.mp4", "cut in half and the moov is lost"),
        ("empty", "empty.mp4", "zero bytes"),
        ("text", "text.mp4", "not a video"),
        ("audio", "audio.m4a", "audio only"),
        ("codec", "codec.avi", "unknown codec"),
        ("missing", "missing.mp4", "never downloaded"),
        ("url", "https://videos.example/123.mp4", "only a URL"),
        ("nocap", "good.mp4", ""),
        ("../escape", "good.mp4", "id with dots and a slash"),
        ("a/b", "good.mp4", "id with a slash"),
    ]
    lines = ["id,file,caption"] + [f"{i},{f},{c}" for i, f, c in rows]
    data = "\n".join(lines).encode("utf-8") + b"\nbadcap,good.mp4,caf\xe9 latin-1\n"
    (root / "manifest.csv").write_bytes(data)
    return root


@pytest.fixture(scope="module")
def zoo_build(zoo, tmp_path_factory):
    """The zoo built once into shards (in-process)."""
    out = tmp_path_factory.mktemp("zoo_out")
    argv = (
        f"build --source pexels --out {out} --manifest {zoo / 'manifest.csv'} --video-root {zoo} --id-column id "
        "--caption-column caption --file-column file --shard-size 5".split()
        + SMALL
    )
    assert main(argv) == 0
    return out


def test_bad_inputs_are_skipped_with_their_reason(zoo_build):
    skipped = {k: v.split(":")[0] for k, v in all_stats(zoo_build)["skipped"].items()}
    assert skipped == {
        "short": "too_short",
        "trunc_mp4": "not_video",
        "empty": "empty_file",
        "text": "not_video",
        "audio": "no_video_stream",
        "codec": "unsupported_codec",
        "missing": "missing_file",
        "url": "url_only",
        "nocap": "missing_caption",
        "badcap": "caption_not_utf8",
    }


def test_usable_inputs_become_whole_samples(zoo_build):
    samples = read_shards(zoo_build)
    by_id = {s["meta"]["source_id"]: s for s in samples}
    assert set(by_id) == {"good", "portrait", "rotated", "odd", "one", "trunc_partial", "../escape", "a/b"}
    for s in samples:
        assert tuple(s["video"].shape) == (4, 16, 16, 3)
        assert s["meta"]["stride"] == 2 and len(s["meta"]["frame_indices"]) == 4
        assert "/" not in s["meta"]["key"] and "." not in s["meta"]["key"]
    assert by_id["portrait"]["meta"]["source_size"] == [24, 40]
    assert by_id["rotated"]["meta"]["source_size"] == [24, 32]  # display size after rotation
    assert by_id["odd"]["meta"]["source_size"] == [7, 5]
    assert by_id["good"]["meta"]["source_fps"] == 10.0 and by_id["good"]["meta"]["fps"] == 5.0
    assert max(by_id["trunc_partial"]["meta"]["frame_indices"]) < 20  # resampled over the ~16 that decode
    assert by_id["good"]["caption"] == "a good video"


def test_zoo_shards_are_plain_tars_inside_the_folder(zoo_build):
    for path in zoo_build.glob("*.tar"):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                assert member.isfile() and "/" not in member.name and ".." not in member.name
                assert member.mtime == 0
    assert not list(zoo_build.glob("*.tmp"))


def test_pad_short_fills_a_clip_with_the_last_frame(zoo, tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "short", "file": "short.mp4", "caption": "c"}) + "\n")
    argv = (
        f"build --source pexels --out {tmp_path / 'o'} --manifest {tmp_path / 'm.jsonl'} --video-root {zoo} "
        "--id-column id --caption-column caption --file-column file --pad-short".split()
        + SMALL
    )
    assert main(argv) == 0
    (sample,) = read_shards(tmp_path / "o")
    assert sample["meta"]["frame_indices"] == [0, 2, 4, 4] and sample["meta"]["padded"] is True


def test_parquet_without_pyarrow_names_the_install(tmp_path, capsys):
    try:
        import pyarrow  # noqa: F401

        pytest.skip("pyarrow is installed here")
    except ImportError:
        pass
    (tmp_path / "m.parquet").write_bytes(b"PAR1")
    argv = f"build --source pexels --out {tmp_path / 'o'} --manifest {tmp_path / 'm.parquet'} --video-root {tmp_path}"
    argv = argv.split()
    assert main(argv) == 2
    assert "pip install pyarrow" in capsys.readouterr().err


def test_pexels_defaults_read_the_corran_columns(tmp_path):
    row = {
        "loc": "https://www.pexels.com/video/a-girl-playing-trumpet-7603863/",
        "title": "a girl playing trumpet",
        "content_loc": "https://player.vimeo.com/external/1.mp4",
    }
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    args = Namespace(
        manifest=str(tmp_path / "m.jsonl"),
        video_root=str(tmp_path),
        id_column="loc",
        caption_column="title",
        file_column="content_loc",
        val_fraction=0.0,
    )
    (rec,) = pexels.records(args)["train"]
    assert rec.source_id == "7603863" and rec.caption == "a girl playing trumpet" and rec.skip.startswith("url_only")
    mp4(tmp_path / "7603863.mp4")
    (rec,) = pexels.records(args)["train"]
    assert rec.skip is None and rec.video == str(tmp_path / "7603863.mp4")


# --- camera-pans ------------------------------------------------------------------------------------


def test_camera_pans_lists_every_photo_and_move_with_val_held_out():
    splits = camera_pans.records(Namespace(seed=0))
    val_photos = {r.meta["photo"] for r in splits["val"]}
    train_photos = {r.meta["photo"] for r in splits["train"]}
    assert val_photos == set(camera_pans.VAL_PHOTOS) and not val_photos & train_photos
    assert len(splits["train"]) + len(splits["val"]) == len(camera_pans.PHOTOS) * len(camera_pans.MOVES)
    cat = next(r for r in splits["train"] if r.source_id == "chelsea-pan-left")
    assert cat.caption == "the camera pans left over a photo of a cat"


def test_every_photo_loads_offline_as_rgb():
    for name in camera_pans.PHOTOS:
        img = camera_pans.load_photo(name)
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8 and min(img.shape[:2]) >= 100


def _shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Content displacement (dy, dx) from frame a to frame b, by phase correlation."""
    return -phase_cross_correlation(rgb2gray(a), rgb2gray(b), upsample_factor=10)[0]


def _spread(a: np.ndarray, b: np.ndarray) -> float:
    """Positive when content grows from a to b (halves drift apart), negative when it shrinks."""
    h, w = a.shape[:2]
    right_minus_left = _shift(a[:, w // 2 :], b[:, w // 2 :])[1] - _shift(a[:, : w // 2], b[:, : w // 2])[1]
    bottom_minus_top = _shift(a[h // 2 :], b[h // 2 :])[0] - _shift(a[: h // 2], b[: h // 2])[0]
    return float(right_minus_left + bottom_minus_top)


@pytest.mark.parametrize("photo", ["astronaut", "grass", "text"])
def test_camera_moves_are_recoverable_by_phase_correlation(photo):
    expected = {"pan-left": (0, 1), "pan-right": (0, -1), "pan-up": (1, 0), "pan-down": (-1, 0)}
    for move, (sy, sx) in expected.items():
        v = camera_pans.PanRenderer(photo, move, seed=3).render(0, frames=6, size=64)
        dy, dx = np.mean([_shift(v[i], v[i + 1]) for i in range(5)], axis=0)
        assert np.sign(np.round(dy)) == sy and np.sign(np.round(dx)) == sx, (move, dy, dx)
        assert max(abs(dy), abs(dx)) >= 2  # clearly visible speed
    for move, sign in (("zoom-in", 1), ("zoom-out", -1)):
        v = camera_pans.PanRenderer(photo, move, seed=3).render(1, frames=6, size=64)
        assert np.sign(np.mean([_spread(v[i], v[i + 1]) for i in range(5)])) == sign, move


def test_photo_views_vary_what_training_clips_show_and_keep_their_motion():
    """`--photo-views 48`: the clips of one photo and move show it turned, mirrored or recoloured, each still moving
    as its caption says (dv's motion estimator recovers it); views 1 renders as before, and held-out clips keep the
    photo as it is."""
    plain = camera_pans.PanRenderer("chelsea", "pan-left", seed=0)
    viewed = camera_pans.PanRenderer("chelsea", "pan-left", seed=0, views=48)
    assert np.array_equal(
        camera_pans.PanRenderer("chelsea", "pan-left", seed=0, views=1).render(0, 4, 32), plain.render(0, 4, 32)
    )
    firsts = [viewed.render(k, 8, 64)[0] for k in range(8)]
    assert (
        len({f.tobytes() for f in firsts}) == 8
        and sum(np.array_equal(f, plain.render(k, 8, 64)[0]) for k, f in enumerate(firsts)) <= 1
    )
    for move in camera_pans.MOVES:
        for k in range(3):
            assert (
                estimate_motion(camera_pans.PanRenderer("astronaut", move, seed=0, views=48).render(k, 8, 64)).label
                == move
            )
    splits = camera_pans.records(Namespace(seed=0, photo_views=48))
    assert {r.video.views for r in splits["train"]} == {48} and {r.video.views for r in splits["val"]} == {1}
    assert camera_pans.settings(Namespace(seed=0)) == {}  # builds before the option keep their settings
    cfg = BuildConfig(out_dir="x", source="camera-pans", source_settings=(("photo_views", 48),))
    assert cfg.settings()["photo_views"] == 48


def test_synthetic_photos_add_new_pictures_to_training_that_move_as_captioned():
    """`--synthetic-photos 2`: two dead-leaves families per move join the training split only, every clip a new
    picture that still moves as its caption says; 0 (the default) leaves the records and settings as before."""
    plain = camera_pans.records(Namespace(seed=0))
    splits = camera_pans.records(Namespace(seed=0, synthetic_photos=2))
    added = [r for r in splits["train"] if r.source_id.startswith("discs-")]
    assert len(added) == 2 * len(camera_pans.MOVES) and len(splits["train"]) == len(plain["train"]) + len(added)
    assert [r.source_id for r in splits["val"]] == [r.source_id for r in plain["val"]]
    assert all(r.caption.endswith("over a photo of coloured discs") for r in added)
    renderer = added[0].video
    firsts = [renderer.render(k, 2, 32)[0] for k in range(4)]
    assert len({f.tobytes() for f in firsts}) == 4  # a new picture per clip
    assert np.array_equal(renderer.render(1, 4, 32), added[0].video.render(1, 4, 32))  # deterministic
    assert renderer.source_size == dead_leaves("0/discs-0000/pan-left/0").shape[1::-1]
    for record in added:
        for k in range(2):
            assert estimate_motion(record.video.render(k, 8, 64)).label == record.meta["move"], record.source_id
    assert camera_pans.settings(Namespace(seed=0, synthetic_photos=2)) == {"synthetic_photos": 2}
    assert camera_pans.settings(Namespace(seed=0, synthetic_photos=0)) == {}
    with pytest.raises(ConfigError, match="--synthetic-photos"):
        camera_pans.settings(Namespace(seed=0, synthetic_photos=-1))


def test_dead_leaves_pictures_are_deterministic_varied_and_cover_the_frame():
    a = dead_leaves("a")
    assert a.shape == (160, 160, 3) and a.dtype == np.uint8 and np.array_equal(a, dead_leaves("a"))
    assert not np.array_equal(a, dead_leaves("b"))
    # Edges at every scale: the picture is neither flat nor noise (neighbouring pixels agree far more than not).
    grey = a.astype(float).mean(-1)
    assert grey.std() > 10 and np.abs(np.diff(grey, axis=1)).mean() < grey.std()


def test_renders_are_deterministic_in_the_seed():
    a = camera_pans.PanRenderer("coins", "pan-up", seed=0).render(0, 4, 32)
    assert np.array_equal(a, camera_pans.PanRenderer("coins", "pan-up", seed=0).render(0, 4, 32))
    assert not np.array_equal(a, camera_pans.PanRenderer("coins", "pan-up", seed=1).render(0, 4, 32))
    assert not np.array_equal(a, camera_pans.PanRenderer("coins", "pan-up", seed=0).render(1, 4, 32))
    assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8


# --- resume, node split, workers -----------------------------------------------------------------

CAMERA = [
    "build",
    "--source",
    "camera-pans",
    "--split",
    "val",
    "--clips-per-video",
    "1",
    "--frames",
    "4",
    "--size",
    "16",
    "-q",
]


def test_rerun_redoes_only_incomplete_shards(tmp_path):
    out = tmp_path / "o"
    assert main([*CAMERA, "--out", str(out), "--shard-size", "8", "--workers", "1"]) == 0
    names = [shard_name("val", i) for i in range(3)]
    assert sorted(p.name for p in out.glob("*.tar")) == names
    past = 1_000_000_000
    for p in out.iterdir():
        os.utime(p, ns=(past, past))
    (out / stats_name("val", 1)).unlink()  # interrupted after the rename, before the stats
    (out / shard_name("val", 2)).unlink()  # interrupted mid-write: only a temp file left
    (out / stats_name("val", 2)).unlink()
    (out / (shard_name("val", 2) + ".tmp")).write_bytes(b"half a tar")
    assert main([*CAMERA, "--out", str(out), "--shard-size", "8", "--workers", "1"]) == 0
    assert (out / names[0]).stat().st_mtime_ns == past and (out / stats_name("val", 0)).stat().st_mtime_ns == past
    for i in (1, 2):
        assert (out / names[i]).stat().st_mtime_ns > past and read_stats(out / stats_name("val", i)) is not None
    assert not list(out.glob("*.tmp"))
    assert len(read_shards(out, "val")) == 24


def test_node_builds_partition_the_single_node_build(tmp_path):
    whole, nodes = tmp_path / "whole", tmp_path / "nodes"
    assert main([*CAMERA, "--out", str(whole), "--shard-size", "4", "--workers", "2"]) == 0
    for rank in (0, 1):
        argv = [*CAMERA, *f"--out {nodes / str(rank)} --shard-size 4 --workers 1 --num-nodes 2".split()]
        argv += ["--node-rank", str(rank)]
        assert main(argv) == 0
    got = [sorted(p.name for p in (nodes / str(r)).glob("*.tar")) for r in (0, 1)]
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == sorted(p.name for p in whole.glob("*.tar"))
    assert got[0] == [shard_name("val", i) for i in (0, 2, 4)]
    for r, names in enumerate(got):
        for name in names:  # same bytes: fixed tar mtimes, deterministic rendering and x264
            assert (nodes / str(r) / name).read_bytes() == (whole / name).read_bytes()


class _Boom:
    """A renderer that raises: a crash inside one source."""

    fps, source_size = 8.0, (4, 4)

    def render(self, clip_index, frames, size):
        raise RuntimeError("renderer exploded")


class _Die:
    """A renderer that kills its process outright (like the OOM killer would)."""

    fps, source_size = 8.0, (4, 4)

    def render(self, clip_index, frames, size):
        os._exit(3)


def _good(i: int) -> Record:
    """A working synthetic record."""
    return Record(f"ok{i}", camera_pans.PanRenderer("coins", "pan-left", seed=i), "coins")


def test_a_crashing_source_is_recorded_and_the_shard_still_completes(tmp_path):
    cfg = BuildConfig(out_dir=str(tmp_path), source="test", frames=2, size=16, shard_size=4, workers=1)
    summary = build({"train": [_good(0), Record("boom", _Boom(), "x"), _good(1)]}, cfg, quiet=True)
    assert summary.shards_written == ["train-000000.tar"] and summary.clips_written == 2
    assert read_stats(tmp_path / stats_name("train", 0)).skipped["boom"].startswith("error: RuntimeError")


def test_a_dead_worker_fails_only_its_shard_and_a_rerun_redoes_it(tmp_path):
    cfg = BuildConfig(out_dir=str(tmp_path), source="test", frames=2, size=16, shard_size=1, workers=2)
    records = [_good(0), Record("ok1_dies", _Die(), "x"), _good(2), _good(3)]
    summary = build({"train": records}, cfg, quiet=True)
    assert list(summary.shards_failed) == ["train-000001.tar"]
    assert sorted(summary.shards_written) == ["train-000000.tar", "train-000002.tar", "train-000003.tar"]
    assert not (tmp_path / stats_name("train", 1)).exists()
    records[1] = Record("ok1_dies", camera_pans.PanRenderer("coins", "pan-up", seed=0), "x")
    again = build({"train": records}, cfg, quiet=True)
    assert again.shards_written == ["train-000001.tar"] and len(again.shards_already_complete) == 3


# --- ucf101 and msrvtt --------------------------------------------------------------------------------


def test_class_names_become_words():
    assert ucf101.class_words("ApplyEyeMakeup") == "apply eye makeup"
    assert ucf101.class_words("YoYo") == "yo yo"
    assert ucf101.class_words("PlayingDaf") == "playing daf"


def test_ucf101_layout_splits_and_prompts(tmp_path):
    root = tmp_path / "UCF-101"
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    for cls, group in (("ApplyEyeMakeup", 1), ("ApplyEyeMakeup", 8), ("YoYo", 2)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        write_video(
            root / cls / f"v_{cls}_g{group:02d}_c01.avi", waves(10, 16, 16), 25, codec="mpeg4", container_format="avi"
        )
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n")
    (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nYoYo/v_YoYo_g02_c01.avi 2\n")
    (lists / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n")
    (tmp_path / "prompts.tsv").write_text("YoYo\tsomeone plays with a yo-yo\n")
    argv = f"build --source ucf101 --video-root {root} --out {tmp_path / 'o'}".split() + SMALL
    argv += ["--prompt-file", str(tmp_path / "prompts.tsv")]
    assert main(argv) == 0
    train = {s["meta"]["source_id"]: s["caption"] for s in read_shards(tmp_path / "o", "train")}
    assert train == {
        "v_ApplyEyeMakeup_g08_c01": "a video of a person apply eye makeup",
        "v_YoYo_g02_c01": "someone plays with a yo-yo",
    }
    (test,) = read_shards(tmp_path / "o", "test")
    assert test["meta"]["source_id"] == "v_ApplyEyeMakeup_g01_c01" and test["meta"]["source_fps"] == 25.0
    assert test["meta"]["extra"] == {"class": "ApplyEyeMakeup"}
    # a list file's path picks its folder, its number and only its split
    argv = f"build --source ucf101 --video-root {root} --out {tmp_path / 'only'}".split() + SMALL
    assert main([*argv, "--split-file", str(lists / "testlist01.txt")]) == 0
    assert sorted(p.name for p in (tmp_path / "only").glob("*.tar")) == ["test-000000.tar"]


def test_msrvtt_annotations_split_list_and_caption_choice(tmp_path):
    for i in range(3):
        mp4(tmp_path / f"video{i}.mp4")
    ann = {
        "videos": [{"video_id": f"video{i}", "split": "train"} for i in range(3)],
        "sentences": [{"video_id": "video0", "caption": c} for c in ("a", "b", "c", "d")]
        + [{"video_id": "video1", "caption": "only one"}, {"video_id": "video2", "caption": "BAD"}],
    }
    raw = json.dumps(ann).encode().replace(b"BAD", b"caf\xe9")  # a non-UTF-8 caption
    (tmp_path / "videodatainfo.json").write_bytes(raw)
    (tmp_path / "test1k.csv").write_text("key,vid_key,video_id,sentence\nret0,msr1,video1,only one\n")
    argv = (
        f"build --source msrvtt --manifest {tmp_path / 'videodatainfo.json'} --video-root {tmp_path} "
        f"--split-list {tmp_path / 'test1k.csv'} --clips-per-video 2".split()
    )
    assert main([*argv, "--out", str(tmp_path / "o"), *SMALL]) == 0
    train = read_shards(tmp_path / "o", "train")
    assert {s["meta"]["source_id"] for s in train} == {"video0"} and len(train) == 2
    assert all(s["caption"] in "abcd" for s in train)
    assert all_stats(tmp_path / "o")["skipped"]["video2"] == "caption_not_utf8"
    assert [s["caption"] for s in read_shards(tmp_path / "o", "test")] == ["only one", "only one"]
    assert main([*argv, "--out", str(tmp_path / "again"), *SMALL]) == 0
    assert [s["caption"] for s in read_shards(tmp_path / "again", "train")] == [s["caption"] for s in train]


def test_rerun_with_other_settings_refuses_to_mix_shards(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main([*CAMERA, "--out", out, "--shard-size", "8", "--workers", "1"]) == 0
    capsys.readouterr()
    assert main([*CAMERA, "--out", out, "--shard-size", "8", "--workers", "1", "--seed", "5"]) == 2
    assert "seed 0 (now 5)" in capsys.readouterr().err


def test_adapter_meta_lands_in_the_clip_json(tmp_path):
    cfg = BuildConfig(out_dir=str(tmp_path), source="camera-pans", frames=2, size=16, workers=1)
    build({"val": camera_pans.records(Namespace(seed=0))["val"][:1]}, cfg, quiet=True)
    (sample,) = read_shards(tmp_path, "val")
    assert sample["meta"]["extra"] == {"photo": "coffee", "move": "pan-left"} and sample["meta"]["stride"] == 1


def test_pan_speed_sets_how_far_pans_move_per_frame():
    """`--pan-speed 3 3`: every pan moves 3 output pixels per frame (dv's motion estimator measures it), where the
    default range gives each clip its own speed; the default renders as before and records no setting."""
    fixed = camera_pans.PanRenderer("astronaut", "pan-right", seed=0, pan_speed=(3.0, 3.0))
    sizes = [estimate_motion(fixed.render(k, 8, 64)).size for k in range(4)]
    assert np.allclose(sizes, 3.0, atol=0.25), sizes
    varied = [
        estimate_motion(camera_pans.PanRenderer("astronaut", "pan-right", seed=0).render(k, 8, 64)).size
        for k in range(4)
    ]
    assert max(varied) - min(varied) > 0.3, varied
    assert np.array_equal(
        camera_pans.PanRenderer("chelsea", "pan-up", seed=0, pan_speed=camera_pans.DEFAULT_PAN_SPEED).render(2, 4, 32),
        camera_pans.PanRenderer("chelsea", "pan-up", seed=0).render(2, 4, 32),
    )
    splits = camera_pans.records(Namespace(seed=0, pan_speed=[3, 3], synthetic_photos=1))
    assert {r.video.pan_speed for r in splits["train"] + splits["val"]} == {(3.0, 3.0)}
    assert camera_pans.settings(Namespace(seed=0, pan_speed=[3, 3])) == {"pan_speed": [3.0, 3.0]}
    assert camera_pans.settings(Namespace(seed=0, pan_speed=[2.5, 4.5])) == {}
    with pytest.raises(ConfigError, match="--pan-speed"):
        camera_pans.settings(Namespace(seed=0, pan_speed=[4, 3]))
