"""Loader throughput: clips/s of decoding video shards through the real VideoDataModule (dv bench, benchmarks/loader.py)."""

from __future__ import annotations

import statistics
import time

from lightning import LightningDataModule

from dv.data.datamodule import VideoDataModule
from dv.errors import ConfigError
from dv.recipe import build_datamodule


def time_epochs(dm: LightningDataModule, repeats: int) -> dict:
    """Median clips/s over `repeats` timed epochs of the training loader, after one warm-up epoch.

    The warm-up epoch pays worker start-up, shuffle-buffer fill and first decodes; the timed epochs
    run on the same (persistent) workers.
    """
    dm.setup("fit")
    loader = dm.train_dataloader()
    start = time.perf_counter()
    epoch = iter(loader)
    first = next(epoch)
    key = "video" if "video" in first else "latent_mean"  # video shards, or latent shards (dv cache-latents)
    shape = tuple(first[key].shape)
    for _ in epoch:
        pass
    warmup = time.perf_counter() - start
    rates = []
    for _ in range(repeats):
        start, n = time.perf_counter(), 0
        for batch in loader:
            n += batch[key].shape[0]
        rates.append(n / (time.perf_counter() - start))
    del loader
    return {
        "workers": dm.num_workers,
        "clips_per_s": statistics.median(rates),
        "rates": rates,
        "warmup_s": warmup,
        "shape": shape,
        "kind": "uint8" if key == "video" else "bf16 latent",
        "skipped": dm.skipped_samples,
    }


def measure(shards: str, workers: int, batch_size: int, clips: int, repeats: int, frame_size: int | None) -> dict:
    """time_epochs of a VideoDataModule over `shards` with `workers` workers and `clips` clips per epoch."""
    dm = VideoDataModule(
        train_shards=shards,
        batch_size=batch_size,
        num_workers=workers,
        shuffle_buffer=64,
        samples_per_epoch=clips,
        frame_size=frame_size,
        seed=0,
    )
    return time_epochs(dm, repeats)


def recipe_loader(recipe: str, batch_size: int | None, batches: int, repeats: int) -> dict:
    """time_epochs of the recipe's data module, `batches` batches per epoch (its batch size unless given)."""
    dm = build_datamodule(recipe)
    if not isinstance(dm, VideoDataModule):
        raise ConfigError(f"dv bench --what loader measures a VideoDataModule, not {type(dm).__name__}")
    if not dm.train_shards:
        raise ConfigError(f"recipe {recipe!r} names no data.train_shards to read")
    dm.batch_size = batch_size or dm.batch_size
    dm.samples_per_epoch = dm.batch_size * batches
    return time_epochs(dm, repeats)
