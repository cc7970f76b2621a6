"""`dv shards --source ... --out DIR`: build webdataset video shards from one source (the shard builder's command
line; `dv shard-stats` is data_prep/stats.py). `python -m data_prep {build,stats}` parses with `make_parser`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from data_prep import camera_pans, msrvtt, pexels, stats, ucf101
from data_prep.writer import BuildConfig, build
from dv.errors import ConfigError

ADAPTERS = {"pexels": pexels, "ucf101": ucf101, "msrvtt": msrvtt, "camera-pans": camera_pans}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ConfigErrors (one line, exit 2) instead of usage dumps."""

    def error(self, message: str):
        """Raise instead of printing usage and exiting."""
        raise ConfigError(f"{message} (see `dv shards --help`)")


def _cpus() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def make_parser() -> argparse.ArgumentParser:
    """The `python -m data_prep` command line: `build` (now `dv shards`) and `stats` (now `dv shard-stats`)."""
    parser = _Parser(prog="python -m data_prep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_arguments(sub.add_parser("build", help="build shards"))
    stats.add_parser(sub)
    return parser


def add_arguments(b: argparse.ArgumentParser) -> None:
    """The flags of `dv shards` (and of `python -m data_prep build`)."""
    b.description = (
        "Build PREFIX-000000.tar shards (PREFIX = split) "
        "with a .stats.json beside each; rerunning skips complete shards."
    )
    b.add_argument("--source", required=True, choices=sorted(ADAPTERS), help="which adapter reads the source")
    b.add_argument("--out", required=True, help="output folder for the shards")
    b.add_argument("--manifest", default=None, help="metadata file of the source (pexels, msrvtt)")
    b.add_argument("--video-root", default=None, help="folder holding the source videos")
    b.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="SOURCES (videos) per shard, not clips, so the source->shard assignment is known "
        "before decoding (default: 256; camera-pans 8)",
    )
    b.add_argument(
        "--workers",
        type=int,
        default=_cpus(),
        help="processes decoding and encoding videos in parallel (shard contents do not depend on it); "
        "1 works in this process (default: CPU cores)",
    )
    b.add_argument(
        "--decode-threads",
        type=int,
        default=1,
        help="decoder threads per worker, 0 for FFmpeg's choice (default: 1; workers already use every core)",
    )
    b.add_argument("--frames", type=int, default=16, help="frames per clip (default: 16)")
    b.add_argument("--stride", type=int, default=4, help="take every Nth source frame (default: 4)")
    b.add_argument(
        "--stride-range",
        type=int,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="instead of --stride, draw each source's stride from LOW..HIGH (DynamiCrafter: 1 6); "
        "the clip's stride is in its metadata",
    )
    b.add_argument("--size", type=int, default=256, help="clip side in pixels, even (default: 256)")
    b.add_argument("--clips-per-video", type=int, default=None, help="clips per source (default: 1; camera-pans 2)")
    b.add_argument("--pad-short", action="store_true", help="repeat the last frame of videos too short for a clip")
    b.add_argument("--crf", type=int, default=18, help="x264 quality, lower is better (default: 18)")
    b.add_argument("--seed", type=int, default=0, help="seed of synthetic sources (default: 0)")
    b.add_argument("--num-nodes", type=int, default=1, help="machines sharing the build (default: 1)")
    b.add_argument("--node-rank", type=int, default=0, help="this machine's rank: builds shards i with i %% N == R")
    b.add_argument("--split", nargs="+", default=None, help="which of the source's splits to build (default: all)")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    for adapter in ADAPTERS.values():
        adapter.add_arguments(b)


def _validate(args: argparse.Namespace) -> None:
    """Reject settings that cannot work, naming the flag."""
    checks = [
        (args.frames >= 1, "--frames must be at least 1"),
        (args.stride >= 1, "--stride must be at least 1"),
        (
            args.stride_range is None or 1 <= args.stride_range[0] <= args.stride_range[1],
            "--stride-range LOW HIGH needs 1 <= LOW <= HIGH",
        ),
        (args.size >= 2 and args.size % 2 == 0, "--size must be an even number of pixels (H.264 4:2:0)"),
        (args.clips_per_video is None or args.clips_per_video >= 1, "--clips-per-video must be at least 1"),
        (args.shard_size is None or args.shard_size >= 1, "--shard-size must be at least 1"),
        (args.workers >= 0, "--workers must be 0 or more"),
        (args.decode_threads >= 0, "--decode-threads must be 0 or more"),
        (args.num_nodes >= 1, "--num-nodes must be at least 1"),
        (0 <= args.node_rank < max(args.num_nodes, 1), "--node-rank must be in [0, --num-nodes)"),
        (0 <= args.crf <= 51, "--crf must be in [0, 51]"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} exists and is not a folder")
    for flag in ("manifest", "video_root"):
        value = getattr(args, flag)
        if value and not Path(value).exists():
            raise ConfigError(f"--{flag.replace('_', '-')} {value} does not exist")


def run_build(args: argparse.Namespace) -> int:
    """Build the shards named by parsed arguments; returns the exit code."""
    _validate(args)
    adapter = ADAPTERS[args.source]
    splits = adapter.records(args)
    if args.split:
        unknown = sorted(set(args.split) - set(adapter.SPLITS))
        if unknown:
            raise ConfigError(f"--split {' '.join(unknown)}: {args.source} has splits {', '.join(adapter.SPLITS)}")
        splits = {k: v for k, v in splits.items() if k in args.split}
    splits = {k: v for k, v in splits.items() if v}
    if not splits:
        raise ConfigError(f"the {args.source} source lists no videos; check --manifest/--video-root/--split")
    cfg = BuildConfig(
        out_dir=str(args.out),
        source=args.source,
        frames=args.frames,
        stride=args.stride,
        size=args.size,
        clips_per_video=args.clips_per_video or adapter.DEFAULT_CLIPS_PER_VIDEO,
        shard_size=args.shard_size or adapter.DEFAULT_SHARD_SIZE,
        workers=max(args.workers, 1),
        num_nodes=args.num_nodes,
        node_rank=args.node_rank,
        pad_short=args.pad_short,
        crf=args.crf,
        seed=args.seed,
        stride_range=tuple(args.stride_range) if args.stride_range else None,
        decode_threads=args.decode_threads,
        source_settings=tuple(getattr(adapter, "settings", lambda _: {})(args).items()),
    )
    summary = build(splits, cfg, quiet=args.quiet)
    print(summary.report(), file=sys.stderr)
    return 1 if summary.shards_failed else 0


def run(args: argparse.Namespace) -> int:
    """The command the parsed arguments name (`dv shards` builds; `stats` summarises); returns the exit code."""
    return stats.run(args) if getattr(args, "command", None) == "stats" else run_build(args)
