"""VideoDataModule: batch contract under workers, epochs, split by node for val, broken samples skipped."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import webdataset as wds

from data_prep import camera_pans
from data_prep.writer import BuildConfig, Record, build
from dv.cli import main as dv_main
from dv.data.datamodule import VideoDataModule
from dv.data.shards import TAR_MTIME, ClipMeta, encode_sample
from dv.data.video import encode_mp4
from dv.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """8 train clips in 4 shards and 6 val clips in 3 shards of 4 frames at 16x16 (camera-pans)."""
    out = tmp_path_factory.mktemp("shards")
    photos, moves = ["astronaut", "coins", "grass", "text", "coffee", "moon", "page"], list(camera_pans.MOVES)
    recs = [
        Record(f"{p}-{m}", camera_pans.PanRenderer(p, m, 0), camera_pans.caption_for(p, m))
        for p, m in itertools.product(photos, moves[:2])
    ]
    cfg = BuildConfig(out_dir=str(out), source="camera-pans", frames=4, size=16, shard_size=2, workers=1)
    summary = build({"train": recs[:8], "val": recs[8:14]}, cfg, quiet=True)
    assert len(summary.shards_written) == 7
    return out


def keys_of(batches) -> list[str]:
    """Sample keys of a sequence of batches, in order."""
    return [m["key"] for b in batches for m in b["meta"]]


def test_batches_keep_the_contract_under_two_workers(shards):
    dm = VideoDataModule(
        train_shards=str(shards / "train-*.tar"),
        batch_size=3,
        num_workers=2,
        shuffle_buffer=4,
        samples_per_epoch=12,
        seed=1,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    epoch = list(loader)
    assert len(epoch) == len(loader) == 4  # ceil(12 / 3) batches, a multiple of the 2 workers
    for batch in epoch:
        assert set(batch) == {"video", "caption", "meta", "stride"}
        assert batch["stride"].tolist() == [m["stride"] for m in batch["meta"]]
        assert batch["video"].dtype == torch.uint8 and tuple(batch["video"].shape) == (3, 4, 16, 16, 3)
        assert len(batch["caption"]) == len(batch["meta"]) == 3
        assert all(isinstance(c, str) and c.startswith("the camera") for c in batch["caption"])
        assert all(isinstance(m, dict) and m["num_frames"] == 4 for m in batch["meta"])
    second = list(loader)
    assert len(second) == 4 and keys_of(second) != keys_of(epoch)  # resampling moves on each epoch


def test_epoch_length_defaults_to_the_stats_count_per_rank(shards):
    dm = VideoDataModule(train_shards=str(shards / "train-{000000..000003}.tar"), batch_size=3, num_workers=0)
    dm.setup("fit", rank=0, world_size=1)
    assert dm.batches_per_epoch() == 3  # 8 samples -> ceil(8 / 3)
    dm.setup("fit", rank=1, world_size=2)
    assert dm.batches_per_epoch() == 2  # 4 samples per rank


def test_each_rank_streams_its_own_training_batches_the_same_on_every_run(shards):
    # 2 nodes x 2 GPUs: global ranks 0..3. Every rank resamples shards from its own seeded stream, so the
    # ranks' batches differ and a rank restarted (e.g. after a failure) streams what it streamed before.
    def first_epoch(rank: int) -> list[str]:
        dm = VideoDataModule(train_shards=str(shards / "train-*.tar"), batch_size=2, num_workers=0, shuffle_buffer=4)
        dm.setup("fit", rank=rank, world_size=4)
        return keys_of(dm.train_dataloader())

    epochs = [first_epoch(rank) for rank in range(4)]
    assert all(len(e) == 2 for e in epochs), "8 samples over 4 ranks: one batch of 2 each"
    assert len({tuple(e) for e in epochs}) == 4, f"two ranks streamed the same batches: {epochs}"
    assert first_epoch(3) == epochs[3]


_SHUTDOWN_CHECK = """
import gc, sys, time
from dv.data.datamodule import VideoDataModule
def one_epoch():
    dm = VideoDataModule(train_shards=sys.argv[1], batch_size=2, num_workers=2, samples_per_epoch=4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(list(loader)) == 2
gc.disable()
one_epoch()
start = time.monotonic()
gc.collect()
print(time.monotonic() - start)
"""


def test_persistent_workers_shut_down_promptly(shards):
    # A loader caught in a reference cycle (Lightning's save_hyperparameters makes one) is freed
    # by gc, which drops the workers' shutdown messages: each join then waits 5 s. Checked in a
    # fresh interpreter, where gc timing is not pytest's.
    out = subprocess.run(
        [sys.executable, "-c", _SHUTDOWN_CHECK, str(shards / "train-*.tar")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert float(out.stdout.strip().splitlines()[-1]) < 3


def test_load_time_frames_and_size(shards):
    dm = VideoDataModule(
        train_shards=[str(shards / "train-000000.tar"), str(shards / "train-000001.tar")],
        batch_size=2,
        num_workers=0,
        samples_per_epoch=2,
        num_frames=2,
        frame_size=8,
    )
    dm.setup("fit")
    (batch,) = list(dm.train_dataloader())
    assert tuple(batch["video"].shape) == (2, 2, 8, 8, 3)


def test_val_is_split_by_node_into_a_disjoint_cover(shards):
    dm = VideoDataModule(val_shards=str(shards / "val-*.tar"), batch_size=2, num_workers=0)
    everything = keys_of(dm.val_dataset(rank=0, world_size=1))
    assert len(everything) == 6 == len(set(everything))
    parts = [keys_of(dm.val_dataset(rank=r, world_size=2)) for r in (0, 1)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(everything)
    assert keys_of(dm.val_dataset(rank=1, world_size=2)) == parts[1]  # same order every time


def test_val_reads_each_sample_once_with_workers(shards):
    dm = VideoDataModule(val_shards=str(shards / "val-*.tar"), batch_size=4, num_workers=2)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    assert sorted(keys_of(batches)) == sorted(keys_of(dm.val_dataset(0, 1)))
    assert [len(b["caption"]) for b in batches][-1] <= 4


def test_broken_samples_are_skipped_and_counted(tmp_path):
    frames = np.full((4, 16, 16, 3), 100, np.uint8)
    meta = ClipMeta(
        source_id="s",
        source="t",
        split="val",
        clip_index=0,
        source_fps=8.0,
        source_size=(16, 16),
        stride=1,
        frame_indices=[0, 1, 2, 3],
        num_frames=4,
        size=(16, 16),
        fps=8.0,
    )
    good = encode_sample("good_c000", encode_mp4(frames, 8), "fine", meta)
    garbage = {**encode_sample("garbage_c000", encode_mp4(frames, 8), "bad video", meta), "mp4": b"\x00" * 64}
    no_json = {k: v for k, v in encode_sample("nojson_c000", encode_mp4(frames, 8), "x", meta).items() if k != "json"}
    path = tmp_path / "val-000000.tar"
    with open(path, "wb") as stream, wds.TarWriter(stream, encoder=False, mtime=TAR_MTIME) as tar:
        for sample in (garbage, good, no_json):
            tar.write(sample)
    dm = VideoDataModule(val_shards=str(path), batch_size=4, num_workers=0)
    dm.setup("validate")
    (batch,) = list(dm.val_dataloader())
    assert batch["caption"] == ["fine"] and dm.skipped_samples == 2
    dm_workers = VideoDataModule(val_shards=str(path), batch_size=4, num_workers=1)
    dm_workers.setup("validate")
    assert [b["caption"] for b in dm_workers.val_dataloader()] == [["fine"]]  # the worker survives


def test_missing_shards_and_bad_settings_are_dv_errors(tmp_path):
    dm = VideoDataModule(train_shards=str(tmp_path / "train-*.tar"), samples_per_epoch=4)
    dm.setup("fit")
    with pytest.raises(DataError, match="train-\\*"):
        dm.train_dataloader()
    with pytest.raises(ConfigError, match="batch_size"):
        VideoDataModule(batch_size=0)


class _Consumer(pl.LightningModule):
    """The least a LightningModule needs to eat these batches."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def training_step(self, batch, _):
        self.seen.append(tuple(batch["video"].shape))
        return (batch["video"].float().mean() * self.w) ** 2

    def validation_step(self, batch, _):
        self.seen.append(("val", len(batch["caption"])))

    def configure_optimizers(self):
        return torch.optim.SGD([self.w], lr=0.1)


def test_a_trainer_runs_an_epoch_on_it(shards):
    dm = VideoDataModule(
        train_shards=str(shards / "train-*.tar"),
        val_shards=str(shards / "val-*.tar"),
        batch_size=2,
        num_workers=0,
        samples_per_epoch=4,
    )
    model = _Consumer()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert model.seen.count((2, 4, 16, 16, 3)) == 2 and ("val", 2) in model.seen


def test_command_line_prints_one_batch(shards, capsys):
    assert dv_main(["check-data", "--shards", str(shards / "train-*.tar"), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "(2, 4, 16, 16, 3) torch.uint8" in out and "the camera" in out
    assert dv_main(["check-data", "--shards", str(shards / "nothing-*.tar")]) == 2
