"""VideoDataModule: a LightningDataModule streaming video shards through webdataset.

Training resamples shards: every (rank, worker) draws shards at random, with
replacement, from its own seeded stream (``ResampledShards``), so no rank runs
out early and every rank sees the same number of batches per epoch. An epoch
is ``samples_per_epoch`` samples *per rank* (default: the samples listed in the
shards' stats files divided by the world size), rounded up to whole batches
and then to a multiple of the worker count (each worker yields an equal share).
Validation reads each shard exactly once across ranks (split by node, then by
worker), unshuffled, in a deterministic order.

Batches: ``{"video": uint8 (B, T, H, W, C), "caption": list[str], "meta": list[dict]}``,
plus ``"stride"`` (B,) int64, each clip's frame stride from its metadata;
shards written by ``dv cache-latents`` give latent batches instead (dv/data/latents.py).
A sample that fails to decode is skipped with a logged warning and counted.
``filters`` (dv/data/filters.py) drop clips by their scores before they are decoded;
each worker logs what it dropped and why when its stream ends, and
``filtered_by_reason`` counts the main process's.
"""

from __future__ import annotations

import logging
import math
import random
import runpy
import sys
import warnings
from itertools import islice
from typing import Any

import torch
import webdataset as wds
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, default_collate, get_worker_info

from dv.data.filters import ClipFilter
from dv.data.latents import check_latent_shards, collate_latents, is_latent_batch
from dv.data.shards import META_KEY, count_samples, decode_latent_sample, decode_sample, expand_shards, is_latent_sample
from dv.errors import ConfigError, DataError

log = logging.getLogger("dv.data")


def _worker() -> tuple[int, int]:
    """(worker id, worker count) of the current DataLoader process; (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def collate_batch(samples: list[dict]) -> dict[str, Any]:
    """Stack decoded samples into ``{"video": (B, T, H, W, C) uint8, "caption": [...], "meta": [...]}``.

    Samples of latent shards stack into a latent batch instead (dv/data/latents.py).
    """
    if is_latent_batch(samples):
        return with_stride(collate_latents(samples))
    shapes = {tuple(s["video"].shape) for s in samples}
    if len(shapes) > 1:
        raise DataError(f"clips in one batch differ in shape {sorted(shapes)}; set num_frames and frame_size")
    # default_collate stacks to (B, T, H, W, C) and, inside a worker, straight into shared memory,
    # saving the copy the DataLoader would otherwise make to hand the batch to the main process.
    video = default_collate([s["video"] for s in samples])
    return with_stride({"video": video, "caption": [s["caption"] for s in samples], "meta": [s["meta"] for s in samples]})


def with_stride(batch: dict[str, Any]) -> dict[str, Any]:
    """Add ``batch["stride"]`` (B,) int64, each clip's frame stride from its metadata, when every clip has one."""
    strides = [meta.get("stride") for meta in batch["meta"]]
    if all(isinstance(s, int) for s in strides):
        batch["stride"] = torch.tensor(strides, dtype=torch.long)
    return batch


class _DecodeStage(wds.PipelineStage):
    """Raw samples -> decoded samples; a failure is logged, counted and skipped (a stream that reads nothing stops)."""

    def __init__(
        self,
        num_frames: int | None,
        frame_size: int | None,
        name: str,
        filters: ClipFilter | None = None,
        give_up_after: int | None = None,
    ):
        self.num_frames, self.frame_size, self.name = num_frames, frame_size, name
        self.filters = filters or ClipFilter()
        self.skipped = 0
        self.filtered: dict[str, int] = {}  # reason -> clips dropped by the filters (and "unscored": kept)
        # A resampled stream never ends: with no readable sample at all it would skip and warn forever. Counts of
        # this worker: samples read from tars, samples decoded, and failures of each kind.
        self.give_up_after = give_up_after
        self.read = self.decoded = self.tar_errors = self.decode_errors = 0

    def skip(self, what: str, exc: BaseException) -> None:
        """Count one skipped sample or shard and warn about it."""
        self.skipped += 1
        worker, _ = _worker()
        log.warning(
            "dv.data %s worker %d: skipping %s (%s: %s); %d skipped so far in this process",
            self.name,
            worker,
            what,
            type(exc).__name__,
            exc,
            self.skipped,
        )

    def _give_up_if_nothing_reads(self, what: str, exc: BaseException) -> None:
        """DataError once `give_up_after` failures came and no sample was ever read (or decoded) by this worker.

        A bad shard among good ones is skipped and counted, never fatal: the good ones read and decode at once.
        """
        failures = self.tar_errors if self.read == 0 else self.decode_errors
        if self.give_up_after is None or self.decoded > 0 or failures < self.give_up_after:
            return
        raise DataError(
            f"the {self.name} shards gave no readable sample in {failures} tries (last: {what}: {type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); check them with `dv check-data --shards ...`"
        )

    def handle_tar_error(self, exc: BaseException) -> bool:
        """webdataset handler for unreadable shards/members: warn, count, continue (or stop, see above)."""
        self.tar_errors += 1
        self.skip("unreadable tar data", exc)
        self._give_up_if_nothing_reads("unreadable tar data", exc)
        return True

    def count_read(self, src):
        """Pass raw samples through, counting them (a pipeline stage right after the tar reader)."""
        for sample in src:
            self.read += 1
            yield sample

    def run(self, src):
        """Yield decoded samples of `src`, skipping those that fail and those the filters drop."""
        try:
            for sample in src:
                # Filtered on the metadata, before the clip is decoded: a dropped clip costs no decode.
                if META_KEY in sample and self.filters.drops(sample[META_KEY], self.filtered):
                    continue
                try:
                    decode = decode_latent_sample if is_latent_sample(sample) else decode_sample
                    decoded = decode(sample, self.num_frames, self.frame_size)
                except Exception as exc:  # noqa: BLE001 - a bad sample must not kill a worker
                    self.decode_errors += 1
                    what = f"sample {sample.get('__key__')!r} of {sample.get('__url__')}"
                    self.skip(what, exc)
                    self._give_up_if_nothing_reads(what, exc)
                    continue
                self.decoded += 1
                yield decoded
        finally:
            if self.filtered:
                log.info("dv.data %s worker %d: filters dropped %s so far", self.name, _worker()[0], _counts(self.filtered))


def _counts(counts: dict[str, int]) -> str:
    """`{"cut": 3, "unscored": 2}` as "cut: 3, unscored: 2 (kept: no scores)"."""
    return ", ".join(f"{k}: {v}" + (" (kept: no scores)" if k == "unscored" else "") for k, v in sorted(counts.items()))


class _Shuffle(wds.PipelineStage):
    """Shuffle buffer seeded by (seed, rank, worker, epoch): reproducible, different per stream."""

    def __init__(self, bufsize: int, seed: int, rank: int):
        self.bufsize, self.seed, self.rank, self.epoch = bufsize, seed, rank, -1

    def run(self, src):
        """Shuffle `src` through the buffer."""
        self.epoch += 1
        rng = random.Random(hash((self.seed, self.rank, _worker()[0], self.epoch)))
        return wds.shuffle(self.bufsize, initial=self.bufsize, rng=rng)(src)


class _SplitByNode(wds.PipelineStage):
    """Keep every `world_size`-th shard starting at `rank` (explicit rank, not read from the environment)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def run(self, src):
        """This rank's share of the shard stream."""
        return islice(src, self.rank, None, self.world_size)


class _RankWorkerSeed:
    """ResampledShards' worker seed: distinct per (rank, worker), the same on every run."""

    def __init__(self, rank: int):
        self.rank = rank

    def __call__(self) -> int:
        """rank * 1000 + worker id."""
        return self.rank * 1000 + _worker()[0]


class _EpochPipeline(wds.DataPipeline):
    """A DataPipeline with a ``__len__`` (batches per epoch), so progress bars know the epoch length."""

    def __init__(self, *stages, length: int):
        super().__init__(*stages)
        self.size = length

    def __len__(self) -> int:
        """Batches per epoch of this rank."""
        return self.size

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration stream epoch `epoch` (shard draws and shuffle are seeded by it)."""
        for stage in self.pipeline:
            if isinstance(stage, (wds.ResampledShards, _Shuffle)):
                stage.epoch = epoch - 1  # both increment before use


class _EpochLoader(DataLoader):
    """A DataLoader that tells its pipeline, before each pass, which training epoch is starting.

    The epoch comes from the Trainer, which restores it from a checkpoint: a run resumed at an
    epoch boundary streams exactly the data the uninterrupted run would have streamed.
    """

    def __init__(self, dataset: _EpochPipeline, epoch_fn, **kwargs):
        super().__init__(dataset, **kwargs)
        self._epoch_fn = epoch_fn

    def __iter__(self):
        epoch = self._epoch_fn()
        if epoch is not None:
            self.dataset.set_epoch(epoch)
        return super().__iter__()


class VideoDataModule(LightningDataModule):
    """Train/val dataloaders over webdataset video shards (see the module docstring for epochs)."""

    def __init__(
        self,
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        test_shards: str | list[str] | None = None,
        batch_size: int = 4,
        num_workers: int = 2,
        shuffle_buffer: int = 256,
        samples_per_epoch: int | None = None,
        num_frames: int | None = None,
        frame_size: int | None = None,
        seed: int = 0,
        val_batch_size: int | None = None,
        filters: ClipFilter | None = None,
    ):
        """Configure the data.

        Args:
            train_shards: training shards: a brace pattern (``DIR/train-{000000..000099}.tar``),
                a glob (``DIR/train-*.tar``) or a list of either.
            val_shards: validation shards, same forms; None for no validation.
            test_shards: shards of `dv test`, read like the validation shards; None for none.
            batch_size: training clips per batch, per rank.
            num_workers: DataLoader worker processes per rank (0 decodes in the main process).
            shuffle_buffer: samples held in each worker's shuffle buffer (training only).
            samples_per_epoch: training samples per rank that make one epoch; None counts the
                samples in the train shards' stats files and divides by the world size.
            num_frames: keep the first N frames of each clip; None keeps all.
            frame_size: resize (short side) and centre-crop frames to this size at load time;
                None keeps the stored size.
            seed: seed of shard resampling and shuffling.
            val_batch_size: validation clips per batch; None uses ``batch_size``.
            filters: drop training and validation clips by their scores (format-2 shards):
                ``{min_motion: 0.3, max_motion: 8.0, drop_cuts: true}``; None keeps every clip.
                Motion is in % of the frame side per clip frame (``dv shard-stats``
                shows its distribution).
        """
        super().__init__()
        problems = []
        if batch_size < 1:
            problems.append(f"batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            problems.append(f"num_workers must be 0 or more, got {num_workers}")
        if shuffle_buffer < 0:
            problems.append(f"shuffle_buffer must be 0 or more, got {shuffle_buffer}")
        for name, value in (
            ("samples_per_epoch", samples_per_epoch),
            ("num_frames", num_frames),
            ("frame_size", frame_size),
            ("val_batch_size", val_batch_size),
        ):
            if value is not None and value < 1:
                problems.append(f"{name} must be at least 1 or null, got {value}")
        if problems:
            raise ConfigError("; ".join(problems))
        self.filters = ClipFilter.from_config(filters)
        # No save_hyperparameters(): it keeps the caller's frame in a reference cycle, which delays
        # freeing the DataLoader until a gc pass that drops its worker-shutdown messages (a 5 s hang
        # per persistent worker). LightningCLI records the datamodule's config anyway.
        self.train_shards, self.val_shards, self.test_shards = train_shards, val_shards, test_shards
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle_buffer, self.samples_per_epoch = shuffle_buffer, samples_per_epoch
        self.num_frames, self.frame_size, self.seed = num_frames, frame_size, seed
        self.val_batch_size = val_batch_size or batch_size
        self.rank, self.world_size = 0, 1
        self._next_epoch, self._pass_epoch = 0, None  # training passes: see state_dict
        self._decoders: list[_DecodeStage] = []

    @property
    def skipped_samples(self) -> int:
        """Samples (and unreadable shard data) skipped so far in this process (workers log their own)."""
        return sum(d.skipped for d in self._decoders)

    @property
    def filtered_by_reason(self) -> dict[str, int]:
        """Clips the filters dropped so far in this process, by reason ("unscored": kept, no scores)."""
        total: dict[str, int] = {}
        for decoder in self._decoders:
            for reason, n in decoder.filtered.items():
                total[reason] = total.get(reason, 0) + n
        return total

    def setup(self, stage: str | None = None, rank: int | None = None, world_size: int | None = None) -> None:
        """Find this process's rank and world size (explicit, the Trainer's, torch.distributed's, or 0/1)."""
        if rank is None and self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        elif rank is None and torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.rank, self.world_size = int(rank or 0), int(world_size or 1)
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} is outside world size {self.world_size}")

    def _decoder(self, name: str, give_up_after: int | None = None) -> _DecodeStage:
        """A new decode stage whose skip count this module reports."""
        stage = _DecodeStage(self.num_frames, self.frame_size, name, self.filters, give_up_after)
        self._decoders.append(stage)
        return stage

    def batches_per_epoch(self) -> int:
        """Training batches per rank in one epoch (a multiple of max(num_workers, 1))."""
        samples = self.samples_per_epoch
        if samples is None:
            total = count_samples(expand_shards(self.train_shards))
            if total is None:
                raise DataError("some train shards have no .stats.json to count samples; set samples_per_epoch")
            samples = max(1, total // self.world_size)
        workers = max(self.num_workers, 1)
        return math.ceil(math.ceil(samples / self.batch_size) / workers) * workers

    def train_dataset(self) -> wds.DataPipeline:
        """The training pipeline of this rank: resampled shards, shuffle, decode, batch, fixed epoch."""
        if not self.train_shards:
            raise ConfigError("train_shards is not set; point it at DIR/train-*.tar")
        urls = expand_shards(self.train_shards)
        check_latent_shards(urls, self.num_frames, self.frame_size)
        # Every shard is drawn ~4 times in 4 * len(urls) draws: shards that all fail stop training within seconds.
        decoder = self._decoder("train", give_up_after=max(32, 4 * len(urls)))
        nbatches = self.batches_per_epoch()
        pipeline = _EpochPipeline(
            wds.ResampledShards(urls, seed=self.seed, worker_seed=_RankWorkerSeed(self.rank), deterministic=True),
            wds.tarfile_to_samples(handler=decoder.handle_tar_error),
            decoder.count_read,
            _Shuffle(self.shuffle_buffer, self.seed, self.rank) if self.shuffle_buffer > 1 else None,
            decoder,
            wds.batched(self.batch_size, collation_fn=collate_batch, partial=False),
            length=nbatches,
        )
        # with_epoch counts per worker: each of the W workers yields nbatches / W batches.
        return pipeline.with_epoch(nbatches // max(self.num_workers, 1))

    def val_dataset(
        self, rank: int | None = None, world_size: int | None = None, split: str = "val"
    ) -> wds.DataPipeline:
        """The validation (or test) pipeline of a rank: its shards (split by node, then worker), in order, decoded."""
        shards = self.test_shards if split == "test" else self.val_shards
        if not shards:
            raise ConfigError(f"{split}_shards is not set; point it at DIR/{split}-*.tar")
        rank = self.rank if rank is None else rank
        world_size = self.world_size if world_size is None else world_size
        urls = expand_shards(shards)
        check_latent_shards(urls, self.num_frames, self.frame_size)
        if len(urls) < world_size and rank == 0:
            log.warning("dv.data: %d val shards for %d ranks; some ranks validate on nothing", len(urls), world_size)
        decoder = self._decoder(split)
        return wds.DataPipeline(
            wds.SimpleShardList(urls),
            _SplitByNode(rank, world_size),
            wds.split_by_worker,
            wds.tarfile_to_samples(handler=decoder.handle_tar_error),
            decoder,
            wds.batched(self.val_batch_size, collation_fn=collate_batch, partial=True),
        )

    def _loader(self, dataset, epoch_fn=None) -> DataLoader:
        """A DataLoader over a pipeline that batches itself; `epoch_fn` gives the epoch of each pass."""
        # A DataLoader rather than wds.WebLoader: Lightning inspects DataLoader attributes
        # (length, workers), which WebLoader hides inside its own pipeline. Workers are not
        # persistent, so each pass's workers receive the pipeline with its epoch set.
        return _EpochLoader(
            dataset,
            epoch_fn or (lambda: None),
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),  # page-locked batches copy to the GPU asynchronously
        )

    def train_dataloader(self) -> DataLoader:
        """Training batches of this rank; each epoch's stream is seeded by the Trainer's epoch."""
        # Lightning warns that __len__ may be wrong with several workers; here each worker is
        # configured on its own (own seed, nbatches / W batches), so the length is exact.
        warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
        return self._loader(self.train_dataset(), self._start_pass)

    def _start_pass(self) -> int:
        """The epoch number the training pass now starting streams (0, 1, ...; restored on resume)."""
        self._pass_epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        return self._pass_epoch

    def state_dict(self) -> dict[str, int]:
        """The data position Lightning stores in checkpoints: the epoch the next training pass streams.

        A checkpoint written on an epoch's last batch resumes with the next epoch's stream, exactly
        as the uninterrupted run continues; one written mid-epoch restarts that epoch's stream.
        """
        finished = False
        if self.trainer is not None:
            finished = bool(self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        epoch = self._pass_epoch if self._pass_epoch is not None else self._next_epoch
        return {"next_epoch": epoch + 1 if finished else epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a checkpoint's data position."""
        self._next_epoch = int(state.get("next_epoch", 0))
        self._pass_epoch = None

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches of this rank, or no loader when val_shards is unset."""
        return self._loader(self.val_dataset()) if self.val_shards else []

    def test_dataloader(self) -> DataLoader | list:
        """Test batches of this rank (`dv test`), read like validation."""
        return self._loader(self.val_dataset(split="test")) if self.test_shards else []


if __name__ == "__main__":  # the old form of `dv check-data`, kept for one release; the command is dv/check_data.py
    print("python -m dv.data.datamodule is deprecated and goes in the next release; use `dv check-data`", file=sys.stderr)
    sys.argv[1:1] = ["check-data"]
    runpy.run_module("dv", run_name="__main__")
