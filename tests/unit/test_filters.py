"""Recipe filters on clip scores: the loader and the latent cache drop what they say and count why."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dv.data.datamodule import VideoDataModule
from dv.data.filters import ClipFilter
from dv.data.latent_cache import CacheConfig, Encoders, build_cache
from dv.data.shards import ClipMeta, SampleTarWriter, ShardStats, encode_sample, read_stats, stats_name, write_stats
from dv.data.video import encode_mp4
from dv.errors import ConfigError

META = ClipMeta(
    source_id="s",
    source="t",
    split="train",
    clip_index=0,
    source_fps=8.0,
    source_size=(16, 16),
    stride=1,
    frame_indices=[0, 1, 2, 3],
    num_frames=4,
    size=(16, 16),
    fps=8.0,
)
CLIPS = {  # key -> scores (None: a format-1 clip without scores)
    "still": {"motion": 0.01, "cut": False, "cut_frame": None, "cut_distance": 0.01},
    "pan": {"motion": 1.5, "cut": False, "cut_frame": None, "cut_distance": 0.03},
    "cut": {"motion": 1.4, "cut": True, "cut_frame": 2, "cut_distance": 0.6},
    "wild": {"motion": 30.0, "cut": False, "cut_frame": None, "cut_distance": 0.1},
    "old": None,
}


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> Path:
    """One video shard of five 4-frame clips with the scores above."""
    out = tmp_path_factory.mktemp("filters")
    video = encode_mp4(np.full((4, 16, 16, 3), 90, np.uint8), 8)
    path = out / "train-000000.tar"
    with open(path, "wb") as stream, SampleTarWriter(stream) as tar:
        for key, scores in CLIPS.items():
            meta = replace(META, source_id=key, scores=scores or {})
            sample = encode_sample(f"{key}_c000", video, key, meta)
            if scores is None:  # as a format-1 shard wrote it
                d = json.loads(sample["json"])
                d = {k: v for k, v in d.items() if k not in ("scores", "source_bit_rate")} | {"format_version": 1}
                sample["json"] = json.dumps(d).encode()
            tar.write(sample)
    write_stats(
        out / stats_name("train", 0),
        ShardStats(shard=path.name, split="train", index=0, source="t", samples_written=len(CLIPS)),
    )
    return path


FILTERS = {"min_motion": 0.5, "max_motion": 10.0, "drop_cuts": True}
DROPPED = {"motion_below_min": 1, "cut": 1, "motion_above_max": 1, "unscored": 1}


def test_the_loader_keeps_only_clips_inside_the_filters(shard):
    dm = VideoDataModule(val_shards=str(shard), batch_size=8, num_workers=0, filters=FILTERS)
    dm.setup("validate")
    (batch,) = list(dm.val_dataloader())
    assert sorted(batch["caption"]) == ["old", "pan"]  # the unscored clip is kept, and counted
    assert dm.filtered_by_reason == DROPPED
    plain = VideoDataModule(val_shards=str(shard), batch_size=8, num_workers=0)
    plain.setup("validate")
    assert len(next(iter(plain.val_dataloader()))["caption"]) == 5 and plain.filtered_by_reason == {}


def test_the_latent_cache_leaves_filtered_clips_out_and_counts_them(shard, tmp_path):
    enc = Encoders(
        posterior=lambda v: (torch.zeros(v.shape[0], 2, 4, 2, 2), torch.zeros(v.shape[0], 2, 4, 2, 2)), vae="test"
    )
    cfg = CacheConfig(out_dir=str(tmp_path), workers=0, filters=ClipFilter.from_config(FILTERS))
    summary = build_cache([str(shard)], enc, cfg, quiet=True)
    stats = read_stats(tmp_path / stats_name("train", 0))
    assert stats.samples_written == 2 and stats.filtered_by_reason == DROPPED
    assert stats.settings["filters"] == FILTERS and dict(summary.filtered_by_reason) == DROPPED
    with pytest.raises(ConfigError, match="filters"):  # a rerun with other filters must not mix shards
        build_cache([str(shard)], enc, replace(cfg, filters=ClipFilter(drop_cuts=True)), quiet=True)


@pytest.mark.parametrize(
    "value, message",
    [
        ({"min_motoin": 1}, "unknown key"),
        ({"min_motion": "fast"}, "min_motion"),
        ({"drop_cuts": "yes"}, "drop_cuts"),
        ({"min_motion": 3, "max_motion": 1}, "above max_motion"),
        ([1, 2], "mapping"),
    ],
)
def test_bad_filters_are_config_errors(value, message):
    with pytest.raises(ConfigError, match=message):
        VideoDataModule(train_shards="x", filters=value)


def test_stats_command_prints_the_distributions_and_what_filters_would_drop(shard, capsys):
    from data_prep.__main__ import main

    assert (
        main(["stats", "--shards", str(shard), "--min-motion", "0.5", "--max-motion", "10", "--drop-cuts", "--json"])
        == 0
    )
    s = json.loads(capsys.readouterr().out)
    assert (s["clips"], s["unscored"], s["cuts"]) == (5, 1, 1)
    assert s["motion_quantiles"]["p0"] == 0.01 and s["motion_quantiles"]["p100"] == 30.0
    assert s["filters"]["kept"] == 2 and s["filters"]["dropped_by_reason"] == DROPPED
    assert main(["stats", "--shards", str(shard)]) == 0
    text = capsys.readouterr().out
    assert "clips spanning a scene cut: 1 (20.0%)" in text and "unscored (format-1 shards): 1" in text


def test_stats_reads_scores_from_the_stats_files_of_a_build(tmp_path, capsys):
    from data_prep import camera_pans
    from data_prep.__main__ import main
    from data_prep.writer import BuildConfig, build

    records = camera_pans.records(type("Args", (), {"seed": 0})())["val"][:3]
    build({"val": records}, BuildConfig(out_dir=str(tmp_path), source="camera-pans", frames=4, size=32), quiet=True)
    assert len(read_stats(tmp_path / stats_name("val", 0)).clip_scores) == 3
    (tmp_path / "val-000000.tar").write_bytes(b"")  # proves the tar is not opened: the stats file suffices
    assert main(["stats", "--shards", str(tmp_path / "val-*.tar"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["clips"] == 3 and s["unscored"] == 0 and s["resolutions"] == {"600x400": 3}  # coffee.png
