"""The one shared shard writer: records in, complete shards + stats out, resumable and node-splittable.

Sources of a split are sorted by id and cut into shards of ``shard_size``
*sources* each (shard i = sources [i*S, (i+1)*S)), so which source lands in
which shard is known before any decoding. Node ``r`` of ``n`` builds the
shards with ``i % n == r``. A shard is written to ``NAME.tar.tmp``, renamed
when whole, and its ``.stats.json`` is written last: a shard with both files
is skipped on a rerun, anything else is redone.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import queue as queue_lib
import random
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import webdataset as wds
from tqdm import tqdm

from dv.data.shards import (
    TAR_MTIME,
    ClipMeta,
    ShardStats,
    build_report,
    encode_sample,
    read_stats,
    sample_key,
    shard_complete,
    shard_name,
    stats_name,
    temp_name,
    write_stats,
)
from dv.data.video import (
    VideoError,
    clip_span,
    count_frames,
    encode_mp4,
    probe,
    read_frames,
    sample_clip_indices,
    stack_frames,
    strided_fps,
)
from dv.errors import ConfigError


class Renderer(Protocol):
    """A synthetic source: renders clip `clip_index` directly at the target size."""

    fps: float
    source_size: tuple[int, int]

    def render(self, clip_index: int, frames: int, size: int) -> np.ndarray:
        """uint8 (T, size, size, 3) frames of one clip (with ``stride=s`` when built with a stride range:
        rendered frames s apart in time)."""


@dataclass(frozen=True)
class Record:
    """One source video: id, a file path or a Renderer, caption(s), meta for ``ClipMeta.extra``, or a skip reason."""

    source_id: str
    video: str | Renderer
    caption: str | tuple[str, ...] | None
    meta: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None  # set by an adapter that already knows the source is unusable


@dataclass(frozen=True)
class BuildConfig:
    """Settings of one build; every clip of every shard is made with these."""

    out_dir: str
    source: str
    frames: int = 16
    stride: int = 4
    size: int = 256
    clips_per_video: int = 1
    shard_size: int = 256
    workers: int = 1
    num_nodes: int = 1
    node_rank: int = 0
    pad_short: bool = False
    crf: int = 18
    seed: int = 0
    stride_range: tuple[int, int] | None = None
    """Draw each source's stride uniformly from [low, high] (DynamiCrafter's frame-stride conditioning);
    None uses `stride` for every clip. The stride of each clip is in its metadata (``meta.stride``)."""

    def settings(self) -> dict[str, Any]:
        """The settings that shape a shard's content, recorded in its stats."""
        keys = ("source", "frames", "stride", "size", "clips_per_video", "shard_size", "pad_short", "crf", "seed")
        settings = {k: getattr(self, k) for k in keys}
        if self.stride_range is not None:
            settings["stride_range"] = list(self.stride_range)
        return settings


def source_stride(cfg: BuildConfig, source_id: str, num_source_frames: int | None = None) -> int:
    """The stride of a source's clips: `cfg.stride`, or a draw from `cfg.stride_range` deterministic in
    (seed, source id), lowered to the largest stride whose clip fits `num_source_frames` (not below the low end)."""
    if cfg.stride_range is None:
        return cfg.stride
    low, high = cfg.stride_range
    stride = random.Random(f"{cfg.seed}/{source_id}").randint(low, high)
    if num_source_frames is not None:
        # A short video still gives a clip, at the largest stride it holds, rather than being skipped.
        while stride > low and clip_span(cfg.frames, stride) > num_source_frames:
            stride -= 1
    return stride


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its split prefix, index and sources."""

    split: str
    index: int
    records: tuple[Record, ...]


@dataclass
class BuildSummary:
    """What a build did, for the closing report and for tests."""

    shards_written: list[str] = field(default_factory=list)
    shards_already_complete: list[str] = field(default_factory=list)
    shards_failed: dict[str, str] = field(default_factory=dict)
    clips_written: int = 0
    sources_seen: int = 0
    skipped_by_reason: Counter = field(default_factory=Counter)
    duration_s: float = 0.0

    def add(self, stats: ShardStats) -> None:
        """Fold one shard's stats into the totals."""
        self.clips_written += stats.samples_written
        self.sources_seen += stats.sources_seen
        self.skipped_by_reason.update(stats.skipped_by_reason)

    def report(self) -> str:
        """A few human lines: shards, clips, skipped sources by reason, failures."""
        totals = f"clips written: {self.clips_written} from {self.sources_seen} sources in {self.duration_s:.1f}s"
        return build_report("shards", len(self.shards_written), len(self.shards_already_complete), self.shards_failed,
                            totals, self.skipped_by_reason, "sources")


def pick_caption(captions: str | Sequence[str], source_id: str, clip_index: int) -> str:
    """One caption for a clip: deterministic in (source id, clip index) when there are several."""
    if isinstance(captions, str):
        return captions
    digest = hashlib.sha1(f"{source_id}\x00{clip_index}".encode("utf-8", "surrogatepass")).digest()
    return captions[int.from_bytes(digest[:8], "big") % len(captions)]


def _valid_captions(caption: str | tuple[str, ...] | None) -> tuple[str, ...] | str:
    """Usable captions of a record, or the reason (a str starting with the kind) none is."""
    items = [caption] if isinstance(caption, str) else list(caption or ())
    items = [c.strip() for c in items if isinstance(c, str) and c.strip()]
    if not items:
        return "missing_caption"
    good = []
    for c in items:
        try:
            c.encode("utf-8")
            good.append(c)
        except UnicodeEncodeError:
            pass
    return tuple(good) if good else "caption_not_utf8"


def _clips_from_file(
    path: str, cfg: BuildConfig, source_id: str = ""
) -> tuple[list[tuple[list[int], np.ndarray]], dict, str | None]:
    """Decode the clips of one video file: ([(indices, frames)], source info with the stride used, skip reason or None)."""
    p = Path(path)
    if not p.is_file():
        return [], {}, "missing_file"
    if p.stat().st_size == 0:
        return [], {}, "empty_file"
    try:
        info = probe(p)
    except VideoError as exc:
        return [], {}, f"{exc.kind}: {exc}"
    src = {"source_fps": info.fps, "source_size": (info.width, info.height)}
    n = info.num_frames if info.num_frames > 0 else count_frames(p)
    for attempt in range(2):
        stride = src["stride"] = source_stride(cfg, source_id, n)
        clips = sample_clip_indices(n, cfg.frames, stride, cfg.clips_per_video, cfg.pad_short)
        if not clips:
            return [], src, f"too_short: {n} frames, one clip needs {clip_span(cfg.frames, stride)}"
        try:
            frames, decoded = read_frames(p, {i for c in clips for i in c}, cfg.size)
        except VideoError as exc:
            return [], src, f"{exc.kind}: {exc}"
        whole = [c for c in clips if all(i in frames for i in c)]
        if len(whole) == len(clips) or attempt == 1:
            break
        # The header promised more frames than the file holds (truncated or mis-estimated):
        # sample again over the frames that really decode.
        n = decoded
    if not whole:
        return [], src, f"truncated: {decoded} frames decode"
    return [(c, stack_frames(frames, c)) for c in whole], src, None


def _clips_from_renderer(
    renderer: Renderer, cfg: BuildConfig, source_id: str = ""
) -> tuple[list[tuple[list[int], np.ndarray]], dict]:
    """Render the clips of a synthetic source; frame indices are the rendered frames (0..T-1 at stride 1)."""
    src = {"source_fps": float(renderer.fps), "source_size": tuple(renderer.source_size), "stride": 1}
    if cfg.stride_range is None:
        indices = list(range(cfg.frames))
        return [(indices, renderer.render(k, cfg.frames, cfg.size)) for k in range(cfg.clips_per_video)], src
    stride = src["stride"] = source_stride(cfg, source_id)
    indices = [i * stride for i in range(cfg.frames)]
    clips = [(indices, renderer.render(k, cfg.frames, cfg.size, stride=stride)) for k in range(cfg.clips_per_video)]
    return clips, src


def process_record(record: Record, split: str, cfg: BuildConfig) -> tuple[list[dict], str | None]:
    """Encoded samples of one source, or ([], reason) when it must be skipped."""
    if record.skip:
        return [], record.skip
    captions = _valid_captions(record.caption)
    if isinstance(captions, str):
        return [], captions
    if isinstance(record.video, str):
        clips, src, reason = _clips_from_file(record.video, cfg, record.source_id)
        if reason:
            return [], reason
    else:
        clips, src = _clips_from_renderer(record.video, cfg, record.source_id)
    stride = src["stride"]
    samples = []
    for clip_index, (indices, frames) in enumerate(clips):
        fps = strided_fps(src["source_fps"], stride)
        meta = ClipMeta(
            source_id=record.source_id,
            source=cfg.source,
            split=split,
            clip_index=clip_index,
            source_fps=round(float(src["source_fps"]), 4),
            source_size=tuple(int(v) for v in src["source_size"]),
            stride=stride,
            frame_indices=[int(i) for i in indices],
            num_frames=int(frames.shape[0]),
            size=(int(frames.shape[2]), int(frames.shape[1])),
            fps=round(fps, 4),
            padded=len(set(indices)) < len(indices),
            extra=dict(record.meta),
        )
        mp4 = encode_mp4(frames, fps, crf=cfg.crf)
        caption = pick_caption(captions, record.source_id, clip_index)
        samples.append(encode_sample(sample_key(record.source_id, clip_index), mp4, caption, meta))
    return samples, None


_PROGRESS: Any = None  # a queue in pool workers; progress events (sources, clips) go to the parent


def _init_worker(progress_queue) -> None:
    """Pool worker set-up: progress channel, and one thread per process (libgomp after fork)."""
    global _PROGRESS
    _PROGRESS = progress_queue
    import torch

    torch.set_num_threads(1)


def write_shard(task: ShardTask, cfg: BuildConfig, progress: Callable[[int, int], None] | None = None) -> ShardStats:
    """Write one shard (temp file, rename, stats last); a failing source is recorded, not raised."""
    out = Path(cfg.out_dir)
    final, tmp, stats_path = (
        out / shard_name(task.split, task.index),
        out / temp_name(task.split, task.index),
        out / stats_name(task.split, task.index),
    )
    stats_path.unlink(missing_ok=True)  # a redone shard is incomplete until its new stats land
    stats = ShardStats(shard=final.name, split=task.split, index=task.index, source=cfg.source, settings=cfg.settings())
    report = progress or (lambda s, c: _PROGRESS.put((s, c)) if _PROGRESS is not None else None)
    start = time.monotonic()
    keys: set[str] = set()
    with open(tmp, "wb") as stream, wds.TarWriter(stream, encoder=False, mtime=TAR_MTIME) as tar:
        for record in task.records:
            stats.sources_seen += 1
            try:
                samples, reason = process_record(record, task.split, cfg)
            except Exception as exc:  # noqa: BLE001 - one bad source must not stop the shard
                samples, reason = [], f"error: {type(exc).__name__}: {exc}"
            if samples and samples[0]["__key__"] in keys:
                samples, reason = [], "duplicate_id"
            if reason:
                stats.skip(record.source_id, reason)
            for sample in samples:
                keys.add(sample["__key__"])
                tar.write(sample)
            stats.samples_written += len(samples)
            stats.sources_written += bool(samples)
            report(1, len(samples))
    os.replace(tmp, final)
    stats.duration_s = round(time.monotonic() - start, 3)
    write_stats(stats_path, stats)
    return stats


def plan_shards(records: Sequence[Record], split: str, shard_size: int) -> list[ShardTask]:
    """Cut a split's sources, sorted by id, into shards of `shard_size` sources each."""
    ordered = sorted(records, key=lambda r: r.source_id)
    return [
        ShardTask(split=split, index=i, records=tuple(ordered[i * shard_size : (i + 1) * shard_size]))
        for i in range((len(ordered) + shard_size - 1) // shard_size)
    ]


def _mp_context():
    """Fork where available (workers inherit imports; start in milliseconds), else spawn."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _run_pool(tasks, cfg, summary, bar) -> None:
    """Run shard tasks on a process pool, containing worker deaths.

    A dead worker breaks the whole pool, failing every shard in flight. Those
    shards are retried one at a time in a fresh pool, so the shard whose
    worker dies alone is the one reported failed.
    """
    ctx = _mp_context()
    progress = ctx.Queue()
    todo, solo = deque(tasks), deque()

    def new_pool():
        """A fresh pool whose workers report progress on the shared queue."""
        return ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker, initargs=(progress,))

    executor = new_pool()
    inflight: dict[Future, tuple[ShardTask, bool]] = {}
    try:
        while todo or solo or inflight:
            if solo and not inflight:
                task = solo.popleft()
                inflight[executor.submit(write_shard, task, cfg)] = (task, True)
            while not solo and todo and len(inflight) < cfg.workers:
                task = todo.popleft()
                inflight[executor.submit(write_shard, task, cfg)] = (task, False)
            done, _ = wait(inflight, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(progress, bar)
            broken = False
            for future in done:
                task, alone = inflight.pop(future)
                name = shard_name(task.split, task.index)
                try:
                    stats = future.result()
                except BrokenProcessPool:
                    broken = True
                    if alone:
                        summary.shards_failed[name] = "its worker process died (killed, out of memory or a crash)"
                    else:
                        solo.append(task)
                except Exception as exc:  # noqa: BLE001 - reported, and the rerun redoes the shard
                    summary.shards_failed[name] = f"{type(exc).__name__}: {exc}"
                else:
                    summary.shards_written.append(name)
                    summary.add(stats)
            if broken:
                solo.extend(task for task, alone in inflight.values())
                inflight.clear()
                executor.shutdown(wait=False, cancel_futures=True)
                executor = new_pool()
        _drain(progress, bar, settle_s=1.0)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _drain(progress, bar, settle_s: float = 0.0) -> None:
    """Move queued progress events from workers onto the bar (waiting up to `settle_s` for stragglers)."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            wait_s = max(0.0, deadline - time.monotonic()) if bar.n < bar.total else 0.0
            sources, clips = progress.get(timeout=wait_s) if wait_s else progress.get_nowait()
        except (queue_lib.Empty, OSError, ValueError):
            return
        _advance(bar, sources, clips)


def _advance(bar, sources: int, clips: int) -> None:
    """Count sources on the bar and show the running clip total."""
    bar.clips = getattr(bar, "clips", 0) + clips
    bar.set_postfix(clips=bar.clips, refresh=False)
    bar.update(sources)


def _check_same_settings(cfg: BuildConfig, split: str, index: int) -> None:
    """Refuse to mix shards built with other settings into one folder."""
    old = read_stats(Path(cfg.out_dir) / stats_name(split, index)).settings
    diff = {k: (old.get(k), v) for k, v in cfg.settings().items() if k in old and old[k] != v}
    if diff:
        what = ", ".join(f"{k} {a} (now {b})" for k, (a, b) in sorted(diff.items()))
        raise ConfigError(f"{cfg.out_dir} holds shards built with {what}; use another --out or delete them")


def build(splits: dict[str, Sequence[Record]], cfg: BuildConfig, quiet: bool = False) -> BuildSummary:
    """Build every split's shards owned by this node, skipping complete ones; returns the summary."""
    start = time.monotonic()
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    summary = BuildSummary()
    tasks: list[ShardTask] = []
    for split, records in splits.items():
        for task in plan_shards(records, split, cfg.shard_size):
            if task.index % cfg.num_nodes != cfg.node_rank:
                continue
            if shard_complete(cfg.out_dir, split, task.index):
                _check_same_settings(cfg, split, task.index)
                summary.shards_already_complete.append(shard_name(split, task.index))
            else:
                tasks.append(task)
    total = sum(len(t.records) for t in tasks)
    with tqdm(total=total, unit="video", desc=f"{cfg.source} shards", disable=quiet, dynamic_ncols=True) as bar:
        if cfg.workers <= 1:
            for task in tasks:
                name = shard_name(task.split, task.index)
                try:
                    stats = write_shard(task, cfg, progress=lambda s, c: _advance(bar, s, c))
                except Exception as exc:  # noqa: BLE001 - reported, and the rerun redoes the shard
                    summary.shards_failed[name] = f"{type(exc).__name__}: {exc}"
                else:
                    summary.shards_written.append(name)
                    summary.add(stats)
        else:
            _run_pool(tasks, cfg, summary, bar)
    summary.duration_s = time.monotonic() - start
    return summary
