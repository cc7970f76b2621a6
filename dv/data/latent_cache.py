"""Latent shards from video shards: every clip encoded once by given encoders; whole shards, resumable, node-split.

Video shard ``PREFIX-000007.tar`` becomes latent shard ``OUT/PREFIX-000007.tar``
(the format: dv/data/shards.py). The shard builder's rules apply (dv/data/shard_output.py):
a shard is written under a temp name and renamed when whole, its
``.stats.json`` (clips, seconds, bytes, the encoders' identities) is written
last, a rerun skips shards that have both files and redoes the rest, and node
``r`` of ``n`` takes the shards whose index ``i`` has ``i % n == r``.
DataLoader workers decode whole video shards; this process runs the encoders.
The encoders are callables handed in by the caller (``dv cache-latents`` wires
a recipe's autoencoder), so this module imports no model code.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from dv.data.filters import ClipFilter
from dv.data.shard_output import ShardOutput, ShardSummary, refuse_other_settings, shards_to_write
from dv.data.shards import (
    LATENT_DTYPE,
    LATENT_KIND,
    META_KEY,
    TAR_MTIME,
    ShardStats,
    count_samples,
    decode_sample,
    encode_latent_sample,
    parse_shard_name,
    read_stats,
    shard_name,
    stats_path_for,
)
from dv.errors import ConfigError

_SAME = ("kind", "num_frames", "frame_size", "vae", "text_encoder", "dtype", "filters")
"""Settings a finished latent shard must share with a rerun that would otherwise skip it."""


@dataclass(frozen=True)
class Encoders:
    """What the cache runs on each batch of clips, and the identities it records."""

    posterior: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    """uint8 clips (B, T, H, W, C) -> VAE posterior mean and log-variance (B, c, T, h, w), unscaled."""
    vae: str
    """The VAE's identity (SHA-256 over its config and weights)."""
    text: Callable[[list[str]], torch.Tensor] | None = None
    """Captions -> text embeddings (B, L, D); None caches no text."""
    text_encoder: str | None = None
    """The text encoder's identity, when `text` is given."""


@dataclass(frozen=True)
class CacheConfig:
    """Settings of one cache build."""

    out_dir: str
    num_frames: int | None = None
    """Keep the first N frames of each clip (the recipe's data.num_frames); None keeps all."""
    frame_size: int | None = None
    """Resize and centre-crop frames to this size first (the recipe's data.frame_size); None keeps the stored size."""
    batch_size: int = 8
    """Clips per encoder call."""
    workers: int = 2
    """DataLoader processes decoding video shards (0 decodes in this process)."""
    num_nodes: int = 1
    node_rank: int = 0
    filters: ClipFilter | None = None
    """Leave out clips by their scores (the recipe's data.filters); counted in each shard's stats."""

    def validate(self, shards: list[str]) -> None:
        """Refuse settings that cannot work and outputs that would overwrite each other or the video shards."""
        if self.batch_size < 1 or self.workers < 0 or not 0 <= self.node_rank < self.num_nodes:
            raise ConfigError("--batch-size must be >= 1, --workers >= 0 and 0 <= --node-rank < --num-nodes")
        out, seen = Path(self.out_dir).resolve(), {}
        for url in shards:
            name = shard_name(*parse_shard_name(url))
            if name in seen:
                raise ConfigError(f"{seen[name]} and {url} would both become {name}; cache them into different --out folders")
            seen[name] = url
            if "://" not in url and Path(url).resolve().parent == out:
                raise ConfigError(f"--out {self.out_dir} holds the video shards themselves; choose another folder")

    def settings(self, encoders: Encoders) -> dict[str, Any]:
        """What shapes a latent shard's content, recorded in its stats."""
        return {
            "kind": LATENT_KIND,
            "num_frames": self.num_frames,
            "frame_size": self.frame_size,
            "vae": encoders.vae,
            "text_encoder": encoders.text_encoder if encoders.text is not None else None,
            "dtype": str(LATENT_DTYPE).removeprefix("torch."),
            "filters": ClipFilter.from_config(self.filters).settings(),
        }


@dataclass
class CacheSummary(ShardSummary):
    """What a cache build did: shards written, skipped and failed; clips, bytes and seconds."""

    clips_written: int = 0
    bytes_written: int = 0
    filtered_by_reason: Counter = field(default_factory=Counter)

    kind = "latent shards"
    skipped = "clips"

    def totals(self) -> str:
        """Clips, bytes and seconds, and what the filters left out."""
        totals = f"clips encoded: {self.clips_written} ({self.bytes_written / 2**20:.1f} MiB) in {self.duration_s:.1f}s"
        if self.filtered_by_reason:
            totals += "; filters: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.filtered_by_reason.items()))
        return totals


class _ShardClips(IterableDataset):
    """Decoded clips of whole video shards (each DataLoader worker takes every W-th shard), each shard closed by an end item.

    Items: ``{"shard", "key", "video", "caption", "meta"}`` for a clip, ``{"shard", "key", "skip"}``
    for a clip that does not decode, ``{"shard", "key", "filtered"}`` for a clip the filters leave out,
    ``{"shard", "end": True, "error"}`` when a shard is read through (``error`` says why reading
    stopped early, which fails the shard).
    """

    def __init__(self, shards: list[str], num_frames: int | None, frame_size: int | None, filters: ClipFilter | None = None):
        self.shards, self.num_frames, self.frame_size = shards, num_frames, frame_size
        self.filters = filters or ClipFilter()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for url in self.shards[worker::workers]:
            error = None
            try:
                for raw in wds.tarfile_samples([{"url": url}]):
                    key = raw.get("__key__")
                    counts: dict[str, int] = {}
                    dropped = META_KEY in raw and self.filters.drops(raw[META_KEY], counts)
                    if counts:  # dropped (with its reason), or kept unscored (counted as such)
                        yield {"shard": url, "key": key, "filtered": next(iter(counts)), "dropped": dropped}
                    if dropped:
                        continue
                    try:
                        clip = decode_sample(raw, self.num_frames, self.frame_size)
                    except Exception as exc:  # noqa: BLE001 - one bad clip must not stop the shard
                        yield {"shard": url, "key": key, "skip": f"{type(exc).__name__}: {exc}"}
                        continue
                    # The caption and metadata go into the latent shard as they were in the video shard.
                    meta = json.loads(bytes(raw[META_KEY]).decode("utf-8"))
                    yield {"shard": url, "key": key, "video": clip["video"], "caption": clip["caption"], "meta": meta}
            except Exception as exc:  # noqa: BLE001 - an unreadable tar fails its shard, not the build
                error = f"{type(exc).__name__}: {exc}"
            yield {"shard": url, "end": True, "error": error}


class _OpenShard:
    """A latent shard being written: its temp tar, stats and the clips waiting for the encoder."""

    def __init__(self, url: str, cfg: CacheConfig, encoders: Encoders):
        prefix, index = parse_shard_name(url)
        source = read_stats(stats_path_for(url)) if "://" not in url else None
        settings = {**cfg.settings(encoders), "from": url}
        self.stats = ShardStats(
            shard=shard_name(prefix, index), split=prefix, index=index, source=source.source if source else "unknown",
            settings=settings,
        )
        self.out = ShardOutput(cfg.out_dir, prefix, index, self.stats,
                               lambda stream: wds.TarWriter(stream, encoder=False, mtime=TAR_MTIME))
        self.final = self.out.final
        self.encoders, self.batch_size = encoders, cfg.batch_size
        self.pending: list[dict[str, Any]] = []
        self.frames: set[int] = set()
        self.sizes: set[int] = set()

    def add(self, item: dict[str, Any]) -> int:
        """Take one item from the reader; returns the clips written by it (a full batch is encoded)."""
        if "filtered" in item:
            counts = self.stats.filtered_by_reason
            counts[item["filtered"]] = counts.get(item["filtered"], 0) + 1
            self.stats.sources_seen += item["dropped"]  # a kept unscored clip is seen when it arrives
            return 0
        self.stats.sources_seen += 1
        if "skip" in item:
            self.stats.skip(item["key"], item["skip"])
            return 0
        if self.pending and self.pending[0]["video"].shape != item["video"].shape:
            written = self.flush()  # clips of one call must share a shape
        else:
            written = 0
        self.pending.append(item)
        return written + (self.flush() if len(self.pending) >= self.batch_size else 0)

    @torch.no_grad()
    def flush(self) -> int:
        """Encode the waiting clips and write their latent samples."""
        if not self.pending:
            return 0
        clips, self.pending = self.pending, []
        video = torch.stack([c["video"] for c in clips])
        mean, logvar = self.encoders.posterior(video)
        mean, logvar = mean.to("cpu", LATENT_DTYPE), logvar.to("cpu", LATENT_DTYPE)
        text = self.encoders.text([c["caption"] for c in clips]).to("cpu", LATENT_DTYPE) if self.encoders.text else None
        for i, clip in enumerate(clips):
            sample = encode_latent_sample(
                clip["key"], mean[i], logvar[i], clip["video"][0], clip["caption"], clip["meta"], self.encoders.vae,
                text=None if text is None else text[i], text_encoder=self.encoders.text_encoder,
            )
            self.out.tar.write(sample)
        self.frames.add(int(video.shape[1]))
        self.sizes.add(int(video.shape[2]))
        self.stats.samples_written += len(clips)
        self.stats.sources_written += len(clips)
        return len(clips)

    def finish(self) -> tuple[int, ShardStats]:
        """Encode what is left, close the tar, rename it into place, write the stats last."""
        written = self.flush()

        def record(stats: ShardStats) -> None:
            stats.settings.update(frames=sorted(self.frames), sizes=sorted(self.sizes))
            stats.bytes_written = self.final.stat().st_size

        return written, self.out.finish(record)

    def close(self) -> None:
        """Close the temp file (left for the next run to overwrite when the shard is not finished)."""
        self.out.close()


def plan(shards: list[str], cfg: CacheConfig, encoders: Encoders) -> tuple[list[str], list[str]]:
    """(shards this node must encode, finished ones it skips); refuses a folder holding another cache."""
    def check(prefix: str, index: int) -> None:
        """Refuse to mix latent shards made with other encoders or sizes into one folder."""
        refuse_other_settings(cfg.out_dir, prefix, index, cfg.settings(encoders), "latent shards made", keys=_SAME,
                              width=12)

    return shards_to_write(shards, parse_shard_name, cfg.out_dir, cfg.num_nodes, cfg.node_rank, check)


def build_cache(shards: list[str], encoders: Encoders, cfg: CacheConfig, quiet: bool = False) -> CacheSummary:
    """Encode this node's unfinished video shards into latent shards under cfg.out_dir; returns the summary."""
    cfg.validate(shards)
    if encoders.text is not None and not encoders.text_encoder:
        raise ConfigError("caching text embeddings needs the text encoder's identity")
    start = time.monotonic()
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    todo, done = plan(shards, cfg, encoders)
    summary = CacheSummary(shards_already_complete=done)
    reader = DataLoader(
        _ShardClips(todo, cfg.num_frames, cfg.frame_size, ClipFilter.from_config(cfg.filters)),
        batch_size=None,
        num_workers=min(cfg.workers, len(todo)),
    )
    open_shards: dict[str, _OpenShard] = {}
    total = count_samples(todo) if todo else 0
    try:
        with tqdm(total=total, unit="clip", desc="latent shards", disable=quiet, dynamic_ncols=True) as bar:
            for item in reader:
                url = item["shard"]
                if url not in open_shards:
                    open_shards[url] = _OpenShard(url, cfg, encoders)
                shard = open_shards[url]
                if not item.get("end"):
                    bar.update(int("skip" in item or bool(item.get("dropped"))))
                    bar.update(shard.add(item))
                    continue
                del open_shards[url]
                if item["error"]:
                    shard.close()
                    summary.shards_failed[shard.final.name] = item["error"]
                    continue
                written, stats = shard.finish()
                bar.update(written)
                summary.shards_written.append(shard.final.name)
                summary.clips_written += stats.samples_written
                summary.bytes_written += stats.bytes_written
                summary.skipped_by_reason.update(stats.skipped_by_reason)
                summary.filtered_by_reason.update(stats.filtered_by_reason)
    finally:
        for shard in open_shards.values():  # interrupted: temp files stay behind, and the next run overwrites them
            with contextlib.suppress(OSError):  # on a full disk the close fails too; the first error is the one
                shard.close()
    summary.duration_s = time.monotonic() - start
    return summary
