"""dv.data.shards: names, safe keys, sample encode -> tar -> decode round trip, stats, shard patterns."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import webdataset as wds

from dv.data import shards as S
from dv.data.video import encode_mp4
from dv.errors import DataError


def clip(t: int = 4, size: int = 16) -> np.ndarray:
    """A smooth little clip."""
    y, x = np.mgrid[0:size, 0:size] / 4.0
    frames = [128 + 60 * np.sin(x + i) * np.cos(y) for i in range(t)]
    return np.stack([np.stack([f, f, f], -1) for f in frames]).round().astype(np.uint8)


def meta(source_id: str = "vid", clip_index: int = 0) -> S.ClipMeta:
    """ClipMeta of a 4-frame clip at stride 2."""
    return S.ClipMeta(
        source_id=source_id,
        source="test",
        split="train",
        clip_index=clip_index,
        source_fps=30.0,
        source_size=(640, 360),
        stride=2,
        frame_indices=[0, 2, 4, 6],
        num_frames=4,
        size=(16, 16),
        fps=15.0,
    )


def write_tar(path, samples) -> None:
    """Write samples the way the builder does."""
    with open(path, "wb") as stream, wds.TarWriter(stream, encoder=False, mtime=S.TAR_MTIME) as tar:
        for sample in samples:
            tar.write(sample)


def test_shard_and_stats_names():
    assert S.shard_name("train", 0) == "train-000000.tar"
    assert S.shard_name("val", 12) == "val-000012.tar"
    assert S.stats_name("train", 3) == "train-000003.stats.json"
    assert S.stats_path_for("/x/train-000003.tar").name == "train-000003.stats.json"
    assert S.temp_name("train", 3).endswith(".tmp") and not S.temp_name("train", 3).endswith(".tar")


@pytest.mark.parametrize("source_id", ["../x", "a/b/c", "a.b", "..", "", "clip with spaces", "ü/ñ", "x" * 300])
def test_sample_keys_are_safe(source_id):
    key = S.sample_key(source_id, 7)
    assert "/" not in key and "." not in key and key and len(key) < 120
    assert key.endswith("_c007")
    assert S.sample_key(source_id, 7) == key  # deterministic


def test_sample_keys_keep_clean_ids_and_separate_lookalikes():
    assert S.sample_key("v_ApplyEyeMakeup_g01_c01", 0) == "v_ApplyEyeMakeup_g01_c01_c000"
    assert S.sample_key("a.b", 0) != S.sample_key("a_b", 0)
    assert S.sample_key("a/b", 0) != S.sample_key("a.b", 0)
    assert S.sample_key("x", 0) != S.sample_key("x", 1)


def test_round_trip_through_a_tar(tmp_path):
    frames = clip()
    caption = "a cat — naïve café ☕"
    sample = S.encode_sample(S.sample_key("../evil/id", 1), encode_mp4(frames, 15), caption, meta("../evil/id", 1))
    path = tmp_path / S.shard_name("train", 0)
    write_tar(path, [sample])

    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert sorted(n.rsplit(".", 1)[1] for n in names) == sorted(S.SAMPLE_KEYS)
    assert all("/" not in n and not n.startswith(".") for n in names)

    (raw,) = list(wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples()))
    out = S.decode_sample(raw)
    assert out["caption"] == caption
    video = out["video"]
    assert tuple(video.shape) == frames.shape and str(video.dtype) == "torch.uint8"
    assert np.abs(video.numpy().astype(int) - frames).mean() < 3
    m = out["meta"]
    assert m["source_id"] == "../evil/id" and m["clip_index"] == 1 and m["split"] == "train"
    assert m["source_size"] == [640, 360] and m["stride"] == 2 and m["frame_indices"] == [0, 2, 4, 6]
    assert m["source_fps"] == 30.0 and m["key"] == raw["__key__"]


def test_decode_takes_first_frames_and_resizes():
    sample = S.encode_sample("k_c000", encode_mp4(clip(t=6), 8), "cap", meta())
    out = S.decode_sample(sample, num_frames=3, frame_size=8)
    assert tuple(out["video"].shape) == (3, 8, 8, 3)
    with pytest.raises(DataError, match="fewer"):
        S.decode_sample(sample, num_frames=10)


def test_decode_rejects_missing_keys_and_garbage_video():
    good = S.encode_sample("k_c000", encode_mp4(clip(), 8), "cap", meta())
    with pytest.raises(DataError, match="lacks"):
        S.decode_sample({k: v for k, v in good.items() if k != S.VIDEO_KEY})
    with pytest.raises(DataError):
        S.decode_sample({**good, S.VIDEO_KEY: b"\x00garbage" * 10})


def test_encode_rejects_empty_and_non_utf8_captions():
    with pytest.raises(DataError):
        S.encode_sample("k", b"x", "  ", meta())
    with pytest.raises(DataError, match="UTF-8"):
        S.encode_sample("k", b"x", b"bad \xff byte".decode("utf-8", "surrogateescape"), meta())


def test_tars_are_reproducible(tmp_path):
    sample = S.encode_sample("k_c000", encode_mp4(clip(), 8), "cap", meta())
    write_tar(tmp_path / "a.tar", [sample])
    write_tar(tmp_path / "b.tar", [sample])
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def test_stats_round_trip_and_completion(tmp_path):
    stats = S.ShardStats(shard="train-000000.tar", split="train", index=0, source="test")
    stats.sources_seen = 3
    stats.samples_written = 2
    stats.skip("bad/id", "too_short: 3 frames, one clip needs 61")
    stats.skip("other", "missing_file")
    assert stats.skipped_by_reason == {"too_short": 1, "missing_file": 1}
    assert not S.shard_complete(tmp_path, "train", 0)
    S.write_stats(tmp_path / S.stats_name("train", 0), stats)
    assert not S.shard_complete(tmp_path, "train", 0)  # no tar yet
    (tmp_path / S.shard_name("train", 0)).write_bytes(b"")
    assert S.shard_complete(tmp_path, "train", 0)
    back = S.read_stats(tmp_path / S.stats_name("train", 0))
    assert back == stats
    assert json.loads((tmp_path / S.stats_name("train", 0)).read_text())["skipped"]["bad/id"].startswith("too_short")
    assert S.count_samples([str(tmp_path / S.shard_name("train", 0))]) == 2
    (tmp_path / S.stats_name("train", 0)).write_text("{truncated")
    assert S.read_stats(tmp_path / S.stats_name("train", 0)) is None


def test_expand_shards_braces_globs_and_lists(tmp_path):
    for i in range(3):
        (tmp_path / S.shard_name("train", i)).write_bytes(b"")
    (tmp_path / S.shard_name("val", 0)).write_bytes(b"")
    names = [str(tmp_path / S.shard_name("train", i)) for i in range(3)]
    assert S.expand_shards(str(tmp_path / "train-{000000..000002}.tar")) == names
    assert S.expand_shards(str(tmp_path / "train-*.tar")) == names
    assert S.expand_shards([names[2], str(tmp_path / "val-*.tar")]) == [names[2], str(tmp_path / "val-000000.tar")]


def test_expand_shards_names_the_pattern_that_matches_nothing(tmp_path):
    pattern = str(tmp_path / "nothing-*.tar")
    with pytest.raises(DataError, match="nothing-"):
        S.expand_shards(pattern)
    (tmp_path / S.shard_name("train", 0)).write_bytes(b"")
    with pytest.raises(DataError, match="train-000001.tar"):
        S.expand_shards(str(tmp_path / "train-{000000..000001}.tar"))


def test_build_report_lists_counts_skips_by_reason_and_failures():
    from dv.data.shards import build_report

    text = build_report(
        "latent shards",
        2,
        1,
        {"train-000003.tar": "disk full"},
        "clips encoded: 9",
        {"undecodable": 2, "too short": 1},
        "clips",
    )
    assert text.splitlines() == [
        "latent shards: 2 written, 1 already complete, 1 failed",
        "clips encoded: 9",
        "clips skipped: 3 (too short: 1, undecodable: 2)",
        "FAILED train-000003.tar: disk full (rerun the same command to redo it)",
    ]
    assert build_report("shards", 1, 0, {}, "clips written: 4", {}, "sources").splitlines() == [
        "shards: 1 written, 0 already complete, 0 failed",
        "clips written: 4",
    ]
