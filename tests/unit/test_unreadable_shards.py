"""Training shards with no readable sample stop with one DataError within seconds; a bad shard among good ones is skipped."""

from __future__ import annotations

import shutil
import time

import pytest

from dv.data.datamodule import VideoDataModule
from dv.errors import DataError
from tests.unit.test_datamodule import shards  # noqa: F401 - the module's shard fixture


def train_module(pattern: str, num_workers: int = 0) -> VideoDataModule:
    dm = VideoDataModule(train_shards=pattern, batch_size=2, num_workers=num_workers, samples_per_epoch=8)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("content", [b"", b"not a tar at all" * 64])
@pytest.mark.parametrize("num_workers", [0, 1])
def test_shards_without_a_readable_sample_stop_within_seconds(tmp_path, content, num_workers):
    for i in range(3):
        (tmp_path / f"train-{i:06d}.tar").write_bytes(content)
    start = time.monotonic()
    with pytest.raises(DataError, match="no readable sample"):
        next(iter(train_module(str(tmp_path / "train-*.tar"), num_workers).train_dataloader()))
    assert time.monotonic() - start < 30


def test_a_truncated_shard_among_good_ones_is_skipped_and_counted(tmp_path, shards):  # noqa: F811
    for src in sorted(shards.glob("train-*.tar")):
        shutil.copy(src, tmp_path / src.name)
    first = sorted(tmp_path.glob("train-*.tar"))[0]
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 3])
    dm = train_module(str(tmp_path / "train-*.tar"))
    batches = list(dm.train_dataloader())
    assert len(batches) == 4 and all(len(b["caption"]) == 2 for b in batches)
    assert dm.skipped_samples > 0, "the truncated shard's unreadable part is counted"
