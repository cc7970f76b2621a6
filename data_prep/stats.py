"""`dv shard-stats --shards GLOB`: the distribution of clip scores over a set of video shards.

Prints how many clips span a scene cut, motion quantiles, source resolutions and bit rates, and,
given the same thresholds as a recipe's ``data.filters``, how many clips those would drop and why:
the numbers to choose thresholds from. Scores come from each shard's ``.stats.json``
(``clip_scores``, format 2); a shard without them is read from its clips' ``.json`` members, and
format-1 clips, which carry no scores, are counted as unscored.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from dv.data.filters import UNSCORED, ClipFilter
from dv.data.shards import META_KEY, expand_shards, read_stats, stats_path_for

QUANTILES = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)
SHORT_SIDES = ((0, "<480"), (480, "480-719"), (720, "720-1079"), (1080, "1080-2159"), (2160, ">=2160"))


def clip_records(shards: list[str]) -> Iterator[dict[str, Any]]:
    """One dict per clip: its scores (absent for format-1 clips), source_size and source_bit_rate."""
    for url in shards:
        stats = read_stats(stats_path_for(url))
        if stats is not None and stats.clip_scores and stats.samples_written == len(stats.clip_scores):
            yield from stats.clip_scores.values()
            continue
        with tarfile.open(url) as tar:  # no scores in the stats: read the clips' metadata members
            for member in tar:
                if member.name.endswith("." + META_KEY):
                    meta = json.loads(tar.extractfile(member).read())
                    yield {
                        **(meta.get("scores") or {}),
                        "source_size": meta.get("source_size"),
                        "source_bit_rate": meta.get("source_bit_rate"),
                    }


def summarize(shards: list[str], filters: ClipFilter | None = None) -> dict[str, Any]:
    """Score distributions over the clips of `shards` (and what `filters` would drop), JSON-ready."""
    clips = list(clip_records(shards))
    scored = [c for c in clips if "motion" in c]
    motion = np.array([c["motion"] for c in scored], dtype=np.float64)
    rates = np.array([c["source_bit_rate"] for c in clips if c.get("source_bit_rate")], dtype=np.float64)
    sizes = Counter(f"{w}x{h}" for w, h in (c["source_size"] for c in clips if c.get("source_size")))
    sides = Counter()
    for c in clips:
        if c.get("source_size"):
            short = min(c["source_size"])
            sides[[name for low, name in SHORT_SIDES if short >= low][-1]] += 1
    out: dict[str, Any] = {
        "shards": len(shards),
        "clips": len(clips),
        "unscored": len(clips) - len(scored),
        "cuts": sum(bool(c.get("cut")) for c in scored),
        "motion_quantiles": {f"p{round(q * 100)}": round(float(np.quantile(motion, q)), 4) for q in QUANTILES}
        if len(motion)
        else {},
        "short_side": dict(sorted(sides.items(), key=lambda kv: [n for _, n in SHORT_SIDES].index(kv[0]))),
        "resolutions": dict(sizes.most_common(10)),
        "bit_rate_mbps_quantiles": {
            f"p{round(q * 100)}": round(float(np.quantile(rates, q)) / 1e6, 3) for q in QUANTILES
        }
        if len(rates)
        else {},
    }
    if filters is not None and filters.active:
        reasons = Counter(filters.reason({"scores": {k: c[k] for k in ("motion", "cut") if k in c}}) for c in clips)
        kept = reasons.pop(None, 0) + reasons.get(UNSCORED, 0)
        out["filters"] = {
            "settings": filters.settings(),
            "kept": kept,
            "dropped_by_reason": dict(sorted(reasons.items())),
        }
    return out


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a few human lines."""
    pct = (lambda n: f"{100.0 * n / s['clips']:.1f}%") if s["clips"] else (lambda n: "-")
    lines = [f"{s['clips']} clips in {s['shards']} shards"]
    if s["unscored"]:
        lines.append(f"unscored (format-1 shards): {s['unscored']} ({pct(s['unscored'])}); rebuild them to score them")
    lines.append(f"clips spanning a scene cut: {s['cuts']} ({pct(s['cuts'])})")
    if s["motion_quantiles"]:
        lines.append(
            "motion (% of the frame side per clip frame): "
            + "  ".join(f"{k} {v:.3g}" for k, v in s["motion_quantiles"].items())
        )
    if s["short_side"]:
        lines.append("source short side: " + ", ".join(f"{k}: {v} ({pct(v)})" for k, v in s["short_side"].items()))
    if s["resolutions"]:
        lines.append("source resolutions: " + ", ".join(f"{k}: {v}" for k, v in s["resolutions"].items()))
    if s["bit_rate_mbps_quantiles"]:
        lines.append(
            "source bit rate (Mb/s): " + "  ".join(f"{k} {v:.3g}" for k, v in s["bit_rate_mbps_quantiles"].items())
        )
    if "filters" in s:
        f = s["filters"]
        why = ", ".join(f"{k}: {v}" for k, v in f["dropped_by_reason"].items() if k != UNSCORED) or "none"
        lines.append(f"filters {f['settings']}: keep {f['kept']} ({pct(f['kept'])}); drop {why}")
    return "\n".join(lines)


def run(args) -> int:
    """The `stats` command on parsed arguments; prints the summary (JSON with --json)."""
    shards = expand_shards(args.shards)
    filters = ClipFilter.from_config(
        {
            k: v
            for k, v in (
                ("min_motion", args.min_motion),
                ("max_motion", args.max_motion),
                ("drop_cuts", args.drop_cuts),
            )
            if v is not None
        }
    )
    summary = summarize(shards, filters)
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


def add_parser(sub) -> None:
    """Add the `stats` subcommand to the `python -m data_prep` command line."""
    add_arguments(sub.add_parser("stats", help="score distributions of a shard set", description=__doc__))


def add_arguments(p) -> None:
    """The flags of `dv shard-stats` (and of `python -m data_prep stats`)."""
    p.add_argument("--shards", required=True, nargs="+", help="shard paths, globs or brace patterns (DIR/train-*.tar)")
    p.add_argument("--min-motion", type=float, default=None, help="also count the clips this min_motion would drop")
    p.add_argument("--max-motion", type=float, default=None, help="also count the clips this max_motion would drop")
    p.add_argument("--drop-cuts", action="store_true", default=None, help="also count the clips drop_cuts would drop")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
