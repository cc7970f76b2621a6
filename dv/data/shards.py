"""THE shard format: sample keys, encode/decode of one sample, shard names, per-shard stats.

A shard is a plain tar of samples. Sample ``KEY`` is three members:

- ``KEY.mp4``  the clip, H.264 in mp4 (yuv420p), already at training size;
- ``KEY.txt``  the caption, UTF-8;
- ``KEY.json`` :class:`ClipMeta` (source id, source fps, source size (w, h),
  stride, source frame indices, clip index, split, clip fps and size, and
  ``extra``: what the source adapter knows, such as the UCF101 class or the
  camera move).

Shards of one split are ``PREFIX-000000.tar``, ``PREFIX-000001.tar``, ... with
``PREFIX-000000.stats.json`` beside each, written last: a shard whose stats
file exists is complete. The writer (data_prep) and the reader (the
datamodule) both import this module; nothing else knows the keys.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from braceexpand import braceexpand

from dv.data.video import decode_mp4, resize_crop
from dv.errors import DataError

VIDEO_KEY = "mp4"
CAPTION_KEY = "txt"
META_KEY = "json"
SAMPLE_KEYS = (VIDEO_KEY, CAPTION_KEY, META_KEY)
FORMAT_VERSION = 1
TAR_MTIME = 0.0  # fixed member mtime, so the same input gives byte-identical tars

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_KEY_STEM = 96


def shard_name(prefix: str, index: int) -> str:
    """File name of shard `index` of a split: ``PREFIX-000000.tar``."""
    return f"{prefix}-{index:06d}.tar"


def stats_name(prefix: str, index: int) -> str:
    """File name of the completion/stats file of a shard: ``PREFIX-000000.stats.json``."""
    return f"{prefix}-{index:06d}.stats.json"


def temp_name(prefix: str, index: int) -> str:
    """Name a shard is written under before it is renamed into place."""
    return shard_name(prefix, index) + ".tmp"


def sample_key(source_id: str, clip_index: int) -> str:
    """A safe, deterministic tar key for clip `clip_index` of `source_id`.

    Keys keep only ``[A-Za-z0-9_-]`` (no dots: webdataset splits a member name
    at the first dot; no slashes: no escaping the tar's root). An id that had
    to be changed or shortened gets 8 hex digits of its hash, so two ids never
    share a key.
    """
    stem = _UNSAFE.sub("_", str(source_id)).strip("_-")
    if stem != str(source_id) or len(stem) > _MAX_KEY_STEM or not stem:
        digest = hashlib.sha1(str(source_id).encode("utf-8", "surrogatepass")).hexdigest()[:8]
        stem = f"{stem[:_MAX_KEY_STEM]}_{digest}" if stem else digest
    return f"{stem}_c{clip_index:03d}"


@dataclass
class ClipMeta:
    """The ``.json`` member of a sample: where a clip came from."""

    source_id: str
    source: str
    split: str
    clip_index: int
    source_fps: float
    source_size: tuple[int, int]
    stride: int
    frame_indices: list[int]
    num_frames: int
    size: tuple[int, int]
    fps: float
    padded: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific: UCF class, camera move, ...
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["source_size"] = list(self.source_size)
        d["size"] = list(self.size)
        return d


def encode_sample(key: str, video_mp4: bytes, caption: str, meta: ClipMeta) -> dict[str, Any]:
    """One sample as the dict a webdataset ``TarWriter`` writes (bytes per key)."""
    if not caption or not caption.strip():
        raise DataError(f"sample {key!r} has an empty caption")
    try:
        text = caption.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"sample {key!r} has a caption that is not valid UTF-8") from exc
    return {
        "__key__": key,
        VIDEO_KEY: bytes(video_mp4),
        CAPTION_KEY: text,
        META_KEY: json.dumps(meta.to_dict(), sort_keys=True, ensure_ascii=False).encode("utf-8"),
    }


def decode_sample(sample: dict[str, Any], num_frames: int | None = None, frame_size: int | None = None) -> dict:
    """A raw webdataset sample to ``{"video": uint8 (T, H, W, C) tensor, "caption": str, "meta": dict}``.

    Raises DataError when a key is missing or the video does not decode.
    """
    missing = [k for k in SAMPLE_KEYS if k not in sample]
    if missing:
        raise DataError(f"sample {sample.get('__key__')!r} lacks {', '.join(missing)}")
    frames = decode_mp4(bytes(sample[VIDEO_KEY]), max_frames=num_frames)
    if num_frames is not None and frames.shape[0] < num_frames:
        raise DataError(f"sample {sample.get('__key__')!r} has {frames.shape[0]} frames, fewer than {num_frames}")
    video = torch.from_numpy(np.ascontiguousarray(frames))
    if frame_size is not None:
        video = resize_crop(video, frame_size)
    meta = json.loads(bytes(sample[META_KEY]).decode("utf-8"))
    meta["key"] = sample.get("__key__")
    meta["url"] = sample.get("__url__")
    return {"video": video, "caption": bytes(sample[CAPTION_KEY]).decode("utf-8"), "meta": meta}


@dataclass
class ShardStats:
    """The ``.stats.json`` of one shard: what went in, what came out, why sources were skipped."""

    shard: str
    split: str
    index: int
    source: str
    sources_seen: int = 0
    samples_written: int = 0
    sources_written: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # source id -> reason
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def skip(self, source_id: str, reason: str) -> None:
        """Record that a source gave no sample, with a short reason (first word = its kind)."""
        self.skipped[str(source_id)] = reason
        kind = reason.split(":", 1)[0].strip()
        self.skipped_by_reason[kind] = self.skipped_by_reason.get(kind, 0) + 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ShardStats":
        """Rebuild stats from their JSON dict (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def write_stats(path: str | Path, stats: ShardStats) -> None:
    """Write a stats file atomically (temp file, then rename): its presence marks the shard complete."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(stats), indent=1, sort_keys=True, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def read_stats(path: str | Path) -> ShardStats | None:
    """Stats of a shard, or None if the file is missing or unreadable."""
    try:
        return ShardStats.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def shard_complete(out_dir: str | Path, prefix: str, index: int) -> bool:
    """Whether shard `index` is finished: its tar and its readable stats file both exist."""
    out_dir = Path(out_dir)
    return (out_dir / shard_name(prefix, index)).is_file() and read_stats(
        out_dir / stats_name(prefix, index)
    ) is not None


def stats_path_for(shard_path: str | Path) -> Path:
    """The stats file beside a shard path (``x-000001.tar`` -> ``x-000001.stats.json``)."""
    shard_path = Path(shard_path)
    return shard_path.with_name(shard_path.name.removesuffix(".tar") + ".stats.json")


def expand_shards(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Shard paths from brace patterns (``train-{000000..000009}.tar``), globs (``train-*.tar``) or lists.

    Each pattern is brace-expanded, then globbed (sorted); a pattern that
    matches no file raises DataError naming it. Remote URLs pass through.
    """
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not patterns:
        raise DataError("no shard pattern given; pass a path like DIR/train-*.tar")
    out: list[str] = []
    for pattern in patterns:
        matched: list[str] = []
        missing: list[str] = []
        for part in braceexpand(str(pattern)):
            part = os.path.expanduser(part)
            if "://" in part or part.startswith("pipe:"):
                matched.append(part)
            elif glob.has_magic(part):
                matched.extend(sorted(glob.glob(part)))
            elif os.path.isfile(part):
                matched.append(part)
            else:
                missing.append(part)
        if not matched:
            raise DataError(f"shard pattern {pattern!r} matches no file; build shards with `python -m data_prep build`")
        if missing:
            raise DataError(f"shard {missing[0]!r} named by {pattern!r} does not exist ({len(missing)} missing)")
        out.extend(matched)
    return out


def count_samples(shards: list[str]) -> int | None:
    """Samples in the given shards according to their stats files, or None if any is missing."""
    total = 0
    for path in shards:
        stats = read_stats(stats_path_for(path))
        if stats is None:
            return None
        total += stats.samples_written
    return total
