"""msrvtt: MSR-VTT videos with their annotation JSON, optionally the 1k-A test split.

``--manifest`` is ``videodatainfo.json`` / ``train_val_videodatainfo.json``
(``videos``: ``video_id``, ``split``; ``sentences``: ``video_id``, ``caption``);
``--video-root`` holds ``<video_id>.mp4``. Without ``--split-list``, each video
goes to the split its annotation names (``train``, ``validate`` -> ``val``,
``test``). With ``--split-list`` (the 1k-A test list: a CSV with a
``video_id`` column, such as MSRVTT_JSFUSION_test.csv, or a text file of one id
per line) the listed videos are ``test`` and all others ``train`` (the usual
9k/1k-A protocol). Each clip gets one of its video's captions, chosen by a hash
of (video id, clip index).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from data_prep.writer import Record
from dv.errors import ConfigError

SPLITS = ("train", "val", "test")
DEFAULT_SHARD_SIZE = 256
DEFAULT_CLIPS_PER_VIDEO = 1
_SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The 1k-A split list option of the msrvtt source."""
    g = parser.add_argument_group("msrvtt")
    g.add_argument("--split-list", default=None, help="1k-A test ids: CSV with a video_id column, or one id per line")


def read_split_list(path: Path) -> set[str]:
    """Video ids of a split list (CSV with ``video_id`` column, or plain lines)."""
    if not path.is_file():
        raise ConfigError(f"--split-list {path} not found")
    text = path.read_text(encoding="utf-8")
    first = text.splitlines()[0] if text.strip() else ""
    if "video_id" in first.split(","):
        return {row["video_id"].strip() for row in csv.DictReader(text.splitlines()) if row.get("video_id")}
    return {line.strip() for line in text.splitlines() if line.strip()}


def records(args: argparse.Namespace) -> dict[str, list[Record]]:
    """Records per split with all captions of each video (one is picked per clip)."""
    if not args.manifest:
        raise ConfigError("--source msrvtt needs --manifest pointing at videodatainfo.json")
    if not args.video_root:
        raise ConfigError("--source msrvtt needs --video-root with the <video_id>.mp4 files")
    try:
        # Bad bytes in a caption survive as surrogates; the writer drops such captions by name.
        with open(args.manifest, encoding="utf-8", errors="surrogateescape") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read MSR-VTT annotations {args.manifest} ({exc})") from exc
    if not isinstance(data, dict) or "videos" not in data or "sentences" not in data:
        raise ConfigError(f"{args.manifest} lacks 'videos' and 'sentences'; expected videodatainfo.json")
    captions: dict[str, list[str]] = {}
    for s in data["sentences"]:
        captions.setdefault(str(s.get("video_id")), []).append(s.get("caption"))
    test_ids = read_split_list(Path(args.split_list)) if args.split_list else None
    root = Path(args.video_root)
    out: dict[str, list[Record]] = {split: [] for split in SPLITS}
    for video in data["videos"]:
        vid = str(video.get("video_id"))
        if test_ids is not None:
            split = "test" if vid in test_ids else "train"
        else:
            split = _SPLIT_NAMES.get(str(video.get("split", "train")), "train")
        caps = tuple(c for c in captions.get(vid, ()) if isinstance(c, str))
        out[split].append(Record(vid, str(root / f"{vid}.mp4"), caps or None, {"category": video.get("category")}))
    return out
