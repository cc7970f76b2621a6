"""The rules of writing shards, shared by the shard builder (data_prep/writer.py) and the latent cache (latent_cache.py).

- A shard is written under a temp name (``NAME.tar.tmp``) and renamed when whole; its ``.stats.json`` is written
  last, so a shard with both files is complete, and anything else is redone by a rerun (`ShardOutput`).
- Node ``r`` of ``n`` writes the shards whose index ``i`` has ``i % n == r``; a rerun skips complete shards, and
  refuses a folder whose complete shards were made with other settings (`shards_to_write`, `refuse_other_settings`).
- A build ends with a summary: shards written, already complete and failed, and what was skipped (`ShardSummary`).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, TypeVar

from dv.data.shards import (
    ShardStats,
    build_report,
    read_stats,
    shard_complete,
    shard_name,
    stats_name,
    temp_name,
    write_stats,
)
from dv.errors import ConfigError

T = TypeVar("T")


class ShardOutput:
    """One shard being written: a temp tar (`tar`, made by `open_tar` on the file), renamed whole, stats last."""

    def __init__(self, out_dir: str | Path, prefix: str, index: int, stats: ShardStats,
                 open_tar: Callable[[BinaryIO], Any]) -> None:
        out = Path(out_dir)
        self.final, self.tmp = out / shard_name(prefix, index), out / temp_name(prefix, index)
        self.stats_path = out / stats_name(prefix, index)
        self.stats_path.unlink(missing_ok=True)  # a redone shard is incomplete until its new stats land
        self.stats = stats
        self.start = time.monotonic()
        self.stream = open(self.tmp, "wb")
        self.tar = open_tar(self.stream)

    def finish(self, before_stats: Callable[[ShardStats], None] | None = None) -> ShardStats:
        """Close the tar, rename it into place, then write the stats (after `before_stats` adds to them)."""
        self.close()
        os.replace(self.tmp, self.final)
        self.stats.duration_s = round(time.monotonic() - self.start, 3)
        if before_stats is not None:
            before_stats(self.stats)
        write_stats(self.stats_path, self.stats)
        return self.stats

    def close(self) -> None:
        """Close the temp file (a failed or interrupted shard leaves it for the rerun to overwrite)."""
        if not self.stream.closed:
            self.tar.close()
            self.stream.close()


def refuse_other_settings(out_dir: str | Path, prefix: str, index: int, settings: dict[str, Any], what: str,
                          keys: Iterable[str] | None = None, width: int | None = None) -> None:
    """ConfigError when complete shard `index` of `out_dir` was made with other settings than `settings`.

    `keys` are the settings compared (None: every one both record); `width` shortens long values (hashes) in the
    message; `what` names the shards ("shards built", "latent shards made").
    """
    old = read_stats(Path(out_dir) / stats_name(prefix, index)).settings
    if keys is None:
        diff = [k for k, v in settings.items() if k in old and old[k] != v]
    else:
        diff = [k for k in keys if old.get(k) != settings.get(k)]
    if diff:
        def shown(value: Any) -> str:
            return str(value)[:width] if width else str(value)

        changes = ", ".join(f"{k} {shown(old.get(k))} (now {shown(settings.get(k))})"
                            for k in (sorted(diff) if keys is None else diff))
        raise ConfigError(f"{out_dir} holds {what} with {changes}; use another --out or delete them")


def shards_to_write(items: Iterable[T], name_of: Callable[[T], tuple[str, int]], out_dir: str | Path, num_nodes: int,
                node_rank: int, check: Callable[[str, int], None]) -> tuple[list[T], list[str]]:
    """(items whose shards this node must write, names of its complete shards, which it skips).

    `name_of(item)` is the (prefix, index) of the item's shard; `check(prefix, index)` vets each complete one.
    """
    todo, done = [], []
    for item in items:
        prefix, index = name_of(item)
        if index % num_nodes != node_rank:
            continue
        if shard_complete(out_dir, prefix, index):
            check(prefix, index)
            done.append(shard_name(prefix, index))
        else:
            todo.append(item)
    return todo, done


@dataclass
class ShardSummary:
    """What a shard build did: shards written, already complete and failed, and what was skipped by reason."""

    shards_written: list[str] = field(default_factory=list)
    shards_already_complete: list[str] = field(default_factory=list)
    shards_failed: dict[str, str] = field(default_factory=dict)
    skipped_by_reason: Counter = field(default_factory=Counter)
    duration_s: float = 0.0

    kind = "shards"
    """How the report names the shards."""
    skipped = "sources"
    """What the skipped counts count."""

    def totals(self) -> str:
        """The report's totals line (what was written)."""
        raise NotImplementedError

    def report(self) -> str:
        """A few human lines: shards, the totals, skipped items by reason, failures."""
        return build_report(self.kind, len(self.shards_written), len(self.shards_already_complete),
                            self.shards_failed, self.totals(), self.skipped_by_reason, self.skipped)
