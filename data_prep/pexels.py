"""pexels: Pexels videos from a metadata manifest (parquet, CSV or JSONL) and local files. No downloading.

The defaults follow the Corran/pexelvideos metadata (``PexelVideos.parquet.gzip``,
358k rows scraped from Pexels' video sitemap): ``loc`` is the page URL, which ends
in the numeric video id (``.../a-girl-playing-trumpet-7603863/``), ``title`` is
the caption, ``content_loc`` the URL of the mp4. So by default the source id is
the trailing number of ``loc``; when the ``--file-column`` cell (``content_loc``)
is a URL or empty, the file is ``VIDEO_ROOT/<id>.mp4``, the name download
scripts commonly give it, and when it is a local path (relative to
``--video-root``) that path is used. A row whose file is missing is skipped as
``missing_file``; one with only a URL and no local copy as ``url_only``.

All rows go to ``train``, except a deterministic ``--val-fraction`` (by hash of
the id) that goes to ``val``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import re
from pathlib import Path

from data_prep.writer import Record
from dv.errors import ConfigError, DataError

SPLITS = ("train", "val")
DEFAULT_SHARD_SIZE = 256
DEFAULT_CLIPS_PER_VIDEO = 1
_TRAILING_ID = re.compile(r"-(\d+)/?$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Manifest column names and the val split of the pexels source."""
    g = parser.add_argument_group("pexels")
    g.add_argument(
        "--id-column", default="loc", help="column with the video id or a page URL ending in -ID/ (default: loc)"
    )
    g.add_argument("--caption-column", default="title", help="column with the caption (default: title)")
    g.add_argument(
        "--file-column",
        default="content_loc",
        help="column with a file path relative to --video-root; a URL or empty cell means VIDEO_ROOT/ID.mp4 "
        "(default: content_loc)",
    )
    g.add_argument("--val-fraction", type=float, default=0.0, help="fraction of ids (by hash) held out as val")


def video_id(value) -> str:
    """The id of a row: the trailing number of a Pexels page URL, else the value as text."""
    text = str(value).strip()
    match = _TRAILING_ID.search(text) if "://" in text else None
    return match.group(1) if match else text


def read_manifest(path: Path) -> list[dict]:
    """Rows of a parquet, CSV or JSONL manifest as dicts (text read with bad bytes kept as surrogates)."""
    name = path.name.lower()
    if ".parquet" in name:
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ConfigError(
                "reading a parquet manifest needs pyarrow: `pip install pyarrow`, or pass CSV/JSONL"
            ) from exc
        return pq.read_table(path).to_pylist()
    if name.endswith((".jsonl", ".json", ".ndjson")):
        rows = []
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as exc:
                        raise DataError(f"{path}:{n} is not a JSON line ({exc})") from exc
        return rows
    if name.endswith((".csv", ".tsv")):
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t" if name.endswith(".tsv") else ","))
    raise ConfigError(f"manifest {path} must be .parquet, .csv, .tsv or .jsonl")


def _text(value) -> str | None:
    """A cell as stripped text, None when empty or missing (NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _is_val(source_id: str, fraction: float) -> bool:
    """Deterministic val membership by hash of the id."""
    digest = hashlib.sha1(source_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def records(args: argparse.Namespace) -> dict[str, list[Record]]:
    """Records per split from the manifest; rows without a usable local file get a missing path."""
    if not args.manifest:
        raise ConfigError("--source pexels needs --manifest FILE (the Pexels metadata as parquet, CSV or JSONL)")
    if not args.video_root:
        raise ConfigError("--source pexels needs --video-root DIR (where the downloaded videos are)")
    if not 0.0 <= args.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    rows = read_manifest(Path(args.manifest))
    if rows and args.id_column not in rows[0]:
        raise ConfigError(f"manifest has no column {args.id_column!r} (columns: {', '.join(rows[0])}); set --id-column")
    root = Path(args.video_root)
    out: dict[str, list[Record]] = {"train": [], "val": []}
    for row in rows:
        raw_id = _text(row.get(args.id_column))
        if raw_id is None:
            continue
        source_id = video_id(raw_id)
        file_value = _text(row.get(args.file_column)) if args.file_column else None
        if file_value and "://" not in file_value:
            path = root / file_value
        else:
            # No local path in the manifest (or only a URL): look for the conventional local name.
            path = root / f"{source_id}.mp4"
        skip = None
        if file_value and "://" in file_value and not path.is_file():
            skip = "url_only: no local copy (dv never downloads; fetch the file into --video-root first)"
        split = "val" if _is_val(source_id, args.val_fraction) else "train"
        caption = _text(row.get(args.caption_column))
        extra = {"page": raw_id} if raw_id != source_id else {}
        out[split].append(Record(source_id, str(path), caption, extra, skip=skip))
    return out
