"""NaN or inf in latent shards: `dv cache-latents` never writes one; a training or validation stream skips and counts a
sample that holds one (and stops within seconds when no sample is finite)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import webdataset as wds
from safetensors.torch import save as save_tensors

from dv.data.datamodule import VideoDataModule
from dv.data.latent_cache import CacheConfig, Encoders, build_cache
from dv.data.shards import POSTERIOR_KEY, TAR_MTIME, decode_latent_sample, encode_latent_sample
from dv.errors import DataError
from tests.unit.test_latent_cache import video_shards  # noqa: F401 - the module's video shard fixture

SHAPE = (12, 4, 8, 8)


def sample(key: str, bad: float | None = None) -> dict:
    """A latent sample; with `bad`, one value of its stored mean is that (as a corrupted file would hold it)."""
    g = torch.Generator().manual_seed(len(key))
    mean, logvar = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    raw = encode_latent_sample(
        key, mean, logvar, torch.zeros(16, 16, 3, dtype=torch.uint8), f"caption {key}", {"source_id": key}, "vae-sha"
    )
    if bad is not None:
        mean[0, 0, 0, 0] = bad
        raw[POSTERIOR_KEY] = save_tensors(
            {"mean": mean.to(torch.bfloat16), "logvar": logvar.to(torch.bfloat16)}, metadata={"vae": "vae-sha"}
        )
    return raw


def write_shard(path: Path, samples: list[dict]) -> None:
    with wds.TarWriter(str(path), encoder=False, mtime=TAR_MTIME) as tar:
        for s in samples:
            tar.write(s)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_decoding_a_non_finite_latent_is_a_data_error(bad):
    with pytest.raises(DataError, match="NaN or inf in its mean"):
        decode_latent_sample(sample("x", bad))


def test_a_non_finite_sample_is_skipped_and_counted(tmp_path):
    write_shard(tmp_path / "val-000000.tar", [sample("a"), sample("b", float("nan")), sample("c"), sample("d")])
    write_shard(tmp_path / "val-000001.tar", [sample("e", float("inf")), sample("f")])
    dm = VideoDataModule(val_shards=str(tmp_path / "val-*.tar"), batch_size=2, num_workers=0)
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    captions = sorted(c for b in batches for c in b["caption"])
    assert captions == ["caption a", "caption c", "caption d", "caption f"]
    assert all(torch.isfinite(b["latent_mean"].float()).all() for b in batches)
    assert dm.skipped_samples == 2


def test_training_shards_without_a_finite_sample_stop_within_seconds(tmp_path):
    for i in range(2):
        write_shard(tmp_path / f"train-{i:06d}.tar", [sample(f"s{i}{j}", float("nan")) for j in range(3)])
    dm = VideoDataModule(train_shards=str(tmp_path / "train-*.tar"), batch_size=2, num_workers=0, samples_per_epoch=8)
    dm.setup("fit")
    start = time.monotonic()
    with pytest.raises(DataError, match="no readable sample.*NaN or inf"):
        next(iter(dm.train_dataloader()))
    assert time.monotonic() - start < 30


def test_cache_latents_writes_no_non_finite_latent(video_shards, tmp_path):  # noqa: F811
    def posterior(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """An encoder that overflows (as a half-precision VAE can): NaN in every clip's mean."""
        b, t = video.shape[:2]
        return torch.full((b, 12, t, 8, 8), float("nan")), torch.zeros(b, 12, t, 8, 8)

    urls = sorted(str(p) for p in video_shards.glob("train-*.tar"))
    with pytest.raises(DataError, match="NaN or inf in its mean.*32-true"):
        build_cache(
            urls,
            Encoders(posterior=posterior, vae="vae-sha"),
            CacheConfig(out_dir=str(tmp_path), workers=0),
            quiet=True,
        )
    assert not list(tmp_path.glob("*.tar")) and not list(tmp_path.glob("*.stats.json")), "nothing under a final name"
