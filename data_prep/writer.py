"""The one shared shard writer: records in, complete shards + stats out, resumable and node-splittable.

Sources of a split are sorted by id and cut into shards of ``shard_size``
*sources* each (shard i = sources [i*S, (i+1)*S)), so which source lands in
which shard is known before any decoding. Writing follows dv's shard rules
(dv/data/shard_output.py, shared with the latent cache): node ``r`` of ``n``
builds the shards with ``i % n == r``, a shard is written to ``NAME.tar.tmp``,
renamed when whole, and its ``.stats.json`` is written last: a shard with both
files is skipped on a rerun, anything else is redone.

Workers take *videos*, not shards: pool processes decode, score and encode
one source each, and this process writes their samples into the shards in
source order, so ``--workers N`` speeds up a build of any size and a shard's
bytes do not depend on N. Workers import no torch (only the camera-pans
renderer does), decode with one thread each, and exit when this process
dies, even by kill -9.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from dv.data.scores import luma, motion_score, scene_cut
from dv.data.shard_output import ShardOutput, ShardSummary, refuse_other_settings, shards_to_write
from dv.data.shards import ClipMeta, SampleTarWriter, ShardStats, encode_sample, sample_key, shard_name
from dv.data.video import (
    VideoError,
    clip_span,
    encode_mp4,
    index_frames,
    open_video,
    read_span,
    sample_clip_indices,
    stack_frames,
    stream_rate,
    strided_fps,
)
from dv.errors import DataError


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
    decode_threads: int = 1
    """Decoder threads per worker (0: FFmpeg's choice); one, because workers already fill the cores and
    frame threads cost 15-20% more CPU. Does not change a shard's content."""
    source_settings: tuple[tuple[str, Any], ...] = ()
    """The source's own options that shape its clips (camera-pans' `photo_views`), recorded with the others."""

    def settings(self) -> dict[str, Any]:
        """The settings that shape a shard's content, recorded in its stats."""
        keys = ("source", "frames", "stride", "size", "clips_per_video", "shard_size", "pad_short", "crf", "seed")
        settings = {k: getattr(self, k) for k in keys}
        if self.stride_range is not None:
            settings["stride_range"] = list(self.stride_range)
        settings.update(self.source_settings)
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
class BuildSummary(ShardSummary):
    """What a build did, for the closing report and for tests."""

    clips_written: int = 0
    sources_seen: int = 0

    def add(self, stats: ShardStats) -> None:
        """Fold one shard's stats into the totals."""
        self.clips_written += stats.samples_written
        self.sources_seen += stats.sources_seen
        self.skipped_by_reason.update(stats.skipped_by_reason)

    def totals(self) -> str:
        """Clips, sources and seconds."""
        return f"clips written: {self.clips_written} from {self.sources_seen} sources in {self.duration_s:.1f}s"


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
    """Decode the clips of one video file: ([(indices, frames)], source info, skip reason or None).

    The file is opened and demuxed once (the frame count and keyframes come from its packets) and
    decoded once, from the keyframe before each clip to its last frame. Source info holds the stride
    used, fps, display size, bit rate and each clip's luma thumbnails over its whole source span.
    """
    p = Path(path)
    if not p.is_file():
        return [], {}, "missing_file"
    if p.stat().st_size == 0:
        return [], {}, "empty_file"
    try:
        with open_video(p) as container:
            fps, assumed, bit_rate = stream_rate(container)
            src = {"source_fps": fps, "fps_assumed": assumed, "bit_rate": bit_rate}
            index = index_frames(container)
            n = index.num_frames
            for attempt in range(2):
                stride = src["stride"] = source_stride(cfg, source_id, n)
                clips = sample_clip_indices(n, cfg.frames, stride, cfg.clips_per_video, cfg.pad_short)
                if not clips:
                    return [], src, f"too_short: {n} frames, one clip needs {clip_span(cfg.frames, stride)}"
                span = read_span(
                    p,
                    {i for c in clips for i in c},
                    cfg.size,
                    spans=[(c[0], c[-1]) for c in clips],
                    threads=cfg.decode_threads,
                    index=index,
                    container=container,
                )
                whole = [c for c in clips if all(i in span.frames for i in c)]
                if len(whole) == len(clips) or attempt == 1:
                    break
                # The packets promised more frames than decode (a truncated file, a damaged tail):
                # sample again over the frames that really decode.
                n = span.end
    except VideoError as exc:
        return [], {}, f"{exc.kind}: {exc}"
    if not whole:
        return [], src, f"truncated: {span.end} frames decode"
    width, height = span.display_size
    if width <= 0 or height <= 0:
        return [], src, "undecodable: the video stream reports no frame size"
    src["source_size"] = (width, height)
    src["thumbs"] = [[span.thumbs[i] for i in range(c[0], c[-1] + 1) if i in span.thumbs] for c in whole]
    return [(c, stack_frames(span.frames, c)) for c in whole], src, None


def _clips_from_renderer(
    renderer: Renderer, cfg: BuildConfig, source_id: str = ""
) -> tuple[list[tuple[list[int], np.ndarray]], dict]:
    """Render the clips of a synthetic source; frame indices are the rendered frames (0..T-1 at stride 1)."""
    src = {"source_fps": float(renderer.fps), "source_size": tuple(renderer.source_size), "stride": 1, "bit_rate": None}
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
        # A rendered clip is its whole source span; a file's span thumbnails come from the decoder.
        thumbs = src["thumbs"][clip_index] if "thumbs" in src else list(luma(frames[:, ::4, ::4]))
        cut_at, cut_distance = scene_cut(thumbs, first=indices[0])
        scores = {
            "motion": round(motion_score(frames), 4),
            "cut": cut_at is not None,
            "cut_frame": cut_at,
            "cut_distance": round(cut_distance, 4),
        }
        extra = dict(record.meta)
        if src.get("fps_assumed"):
            extra["fps_assumed"] = True  # a raw stream without timing: source_fps is an assumption
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
            extra=extra,
            scores=scores,
            source_bit_rate=src["bit_rate"] or None,
        )
        mp4 = encode_mp4(frames, fps, crf=cfg.crf)
        caption = pick_caption(captions, record.source_id, clip_index)
        samples.append(encode_sample(sample_key(record.source_id, clip_index), mp4, caption, meta))
    return samples, None


def encode_source(record: Record, split: str, cfg: BuildConfig) -> tuple[list[dict], str | None]:
    """`process_record`, with any exception turned into a skip reason (one bad source must not stop a shard)."""
    try:
        return process_record(record, split, cfg)
    except Exception as exc:  # noqa: BLE001 - recorded in the shard's stats
        return [], f"error: {type(exc).__name__}: {exc}"


WORKER_DIED = "worker_died"


def _watch_parent(parent: int) -> None:
    """Exit this worker when the build process is gone (a pool worker otherwise waits on its queue for ever)."""
    if sys.platform.startswith("linux"):
        try:  # the kernel kills us the moment the parent dies, even inside a long decode
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # died before the line above took effect
        os._exit(1)

    def watch() -> None:
        """Portable fallback: poll for re-parenting."""
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _init_worker(parent: int) -> None:
    """Pool worker set-up: die with the parent; one torch thread where torch is loaded (camera-pans renders)."""
    _watch_parent(parent)
    if "torch" in sys.modules:  # only the camera-pans renderer uses torch; video sources never load it
        sys.modules["torch"].set_num_threads(1)


class _ShardWriter:
    """One shard being written in this process (dv's shard rules: temp tar, rename, stats last)."""

    def __init__(self, task: ShardTask, cfg: BuildConfig):
        stats = ShardStats(
            shard=shard_name(task.split, task.index),
            split=task.split,
            index=task.index,
            source=cfg.source,
            settings=cfg.settings(),
        )
        self.out = ShardOutput(cfg.out_dir, task.split, task.index, stats, SampleTarWriter)
        self.stats = stats
        self.keys: set[str] = set()

    def add(self, record: Record, samples: list[dict], reason: str | None) -> int:
        """Write one source's samples (or record why it has none); returns the clips written."""
        self.stats.sources_seen += 1
        if samples and samples[0]["__key__"] in self.keys:
            samples, reason = [], "duplicate_id"
        if reason:
            self.stats.skip(record.source_id, reason)
        for sample in samples:
            self.keys.add(sample["__key__"])
            self.out.tar.write(sample)
            self.stats.clip_scores[sample["__key__"]] = _score_summary(sample)
        self.stats.samples_written += len(samples)
        self.stats.sources_written += bool(samples)
        return len(samples)

    def finish(self) -> ShardStats:
        """Close the tar, rename it into place, write the stats last."""
        return self.out.finish()

    def close(self) -> None:
        """Close the temp file (a failed or interrupted shard leaves it for the rerun to overwrite)."""
        self.out.close()


def _score_summary(sample: dict) -> dict[str, Any]:
    """What `dv shard-stats` reads of a clip, kept in its shard's stats file (no need to open the tar)."""
    meta = json.loads(sample["json"])
    return {**meta["scores"], "source_size": meta["source_size"], "source_bit_rate": meta["source_bit_rate"]}


def write_shard(task: ShardTask, cfg: BuildConfig, progress: Callable[[int, int], None] | None = None) -> ShardStats:
    """Write one shard in this process (temp file, rename, stats last); a failing source is recorded, not raised."""
    shard = _ShardWriter(task, cfg)
    try:
        for record in task.records:
            clips = shard.add(record, *encode_source(record, task.split, cfg))
            if progress:
                progress(1, clips)
    finally:
        shard.close()
    return shard.finish()


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


class _Pool:
    """Sources encoded on a process pool, their results handed back in submission order.

    A dead worker breaks the whole pool, losing every source in flight. The oldest of them is
    then run alone in a fresh pool: if its worker dies again, it is the culprit and comes back as
    WORKER_DIED; the others are resubmitted.
    """

    def __init__(self, cfg: BuildConfig):
        self.cfg, self.ctx = cfg, _mp_context()
        self.executor = self._new()
        self.pending: deque[tuple[Any, Record, str, Future]] = deque()

    def _new(self) -> ProcessPoolExecutor:
        """A fresh pool whose workers die with this process."""
        return ProcessPoolExecutor(
            self.cfg.workers, mp_context=self.ctx, initializer=_init_worker, initargs=(os.getpid(),)
        )

    def _renew(self) -> None:
        """Replace a broken pool."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = self._new()

    def submit(self, tag: Any, record: Record, split: str) -> None:
        """Queue one source; `tag` comes back with its result."""
        self.pending.append((tag, record, split, self.executor.submit(encode_source, record, split, self.cfg)))

    def next(self) -> tuple[Any, Record, tuple[list[dict], str | None]]:
        """The oldest queued source's (tag, record, result)."""
        tag, record, split, future = self.pending.popleft()
        try:
            return tag, record, future.result()
        except BrokenProcessPool:
            pass
        self._renew()
        try:
            result = self.executor.submit(encode_source, record, split, self.cfg).result()
        except BrokenProcessPool:
            self._renew()
            result = ([], WORKER_DIED)
        lost, self.pending = list(self.pending), deque()
        for tag2, record2, split2, _ in lost:
            self.submit(tag2, record2, split2)
        return tag, record, result

    def drop(self, keep: Callable[[Any], bool]) -> None:
        """Forget queued sources whose tag fails `keep` (their shard failed)."""
        kept = deque()
        for item in self.pending:
            if keep(item[0]):
                kept.append(item)
            else:
                item[3].cancel()
        self.pending = kept

    def close(self) -> None:
        """Stop the workers."""
        self.executor.shutdown(wait=True, cancel_futures=True)


def _jobs(tasks: Sequence[ShardTask]) -> Iterator[tuple[ShardTask, int, Record]]:
    """Every (shard, position, source) of the build, in writing order."""
    for task in tasks:
        for position, record in enumerate(task.records):
            yield task, position, record


def _write_all(tasks: Sequence[ShardTask], cfg: BuildConfig, summary: BuildSummary, bar) -> None:
    """Write every shard, sources encoded by `cfg.workers` pool processes (or here, with one worker)."""
    open_shards: dict[tuple[str, int], _ShardWriter] = {}
    failed: set[tuple[str, int]] = set()
    pool = _Pool(cfg) if cfg.workers > 1 else None
    window = 4 * cfg.workers  # sources in flight: keeps every worker busy while the oldest is awaited
    jobs = _jobs(tasks)

    def results() -> Iterator[tuple[tuple[ShardTask, int], Record, tuple[list[dict], str | None]]]:
        if pool is None:
            for task, position, record in jobs:
                yield (task, position), record, encode_source(record, task.split, cfg)
            return
        for task, position, record in jobs:
            pool.submit((task, position), record, task.split)
            while len(pool.pending) >= window:
                yield pool.next()
        while pool.pending:
            yield pool.next()

    try:
        for (task, position), record, (samples, reason) in results():
            key = (task.split, task.index)
            name = shard_name(task.split, task.index)
            if key in failed:
                continue
            if key not in open_shards:
                open_shards[key] = _ShardWriter(task, cfg)
            shard = open_shards[key]
            try:
                if reason == WORKER_DIED:
                    raise RuntimeError(
                        f"its worker process died on source {record.source_id!r} (killed, out of memory or a crash)"
                    )
                clips = shard.add(record, samples, reason)
                _advance(bar, 1, clips)
                if position == len(task.records) - 1:
                    del open_shards[key]
                    summary.add(shard.finish())
                    summary.shards_written.append(name)
            except Exception as exc:  # noqa: BLE001 - reported, and the rerun redoes the shard
                with contextlib.suppress(OSError):  # on a full disk the close fails too
                    shard.close()
                open_shards.pop(key, None)
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    # Not this shard's fault: every later one would fail the same way. Finished shards are whole.
                    raise DataError(
                        f"no space left on device writing {shard.out.tmp}; the finished shards are whole: "
                        "free some space and rerun the same command"
                    ) from None
                failed.add(key)
                summary.shards_failed[name] = str(exc) if reason == WORKER_DIED else f"{type(exc).__name__}: {exc}"
                if pool is not None:
                    pool.drop(lambda tag, key=key: (tag[0].split, tag[0].index) != key)
    finally:
        for shard in open_shards.values():  # interrupted: temp files stay behind, and the rerun overwrites them
            with contextlib.suppress(OSError):
                shard.close()
        if pool is not None:
            pool.close()


def _advance(bar, sources: int, clips: int) -> None:
    """Count sources on the bar and show the running clip total."""
    bar.clips = getattr(bar, "clips", 0) + clips
    bar.set_postfix(clips=bar.clips, refresh=False)
    bar.update(sources)


def build(splits: dict[str, Sequence[Record]], cfg: BuildConfig, quiet: bool = False) -> BuildSummary:
    """Build every split's shards owned by this node, skipping complete ones; returns the summary."""
    start = time.monotonic()
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    summary = BuildSummary()
    planned = [task for split, records in splits.items() for task in plan_shards(records, split, cfg.shard_size)]

    def check(split: str, index: int) -> None:
        """Refuse to mix shards built with other settings into one folder."""
        refuse_other_settings(cfg.out_dir, split, index, cfg.settings(), "shards built")

    tasks, summary.shards_already_complete = shards_to_write(
        planned, lambda task: (task.split, task.index), cfg.out_dir, cfg.num_nodes, cfg.node_rank, check
    )
    total = sum(len(t.records) for t in tasks)
    with tqdm(total=total, unit="video", desc=f"{cfg.source} shards", disable=quiet, dynamic_ncols=True) as bar:
        _write_all(tasks, cfg, summary, bar)
    summary.duration_s = time.monotonic() - start
    return summary
