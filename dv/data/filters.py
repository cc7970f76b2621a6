"""Clip filters on the curation scores (dv/data/scores.py), set in a recipe's ``data.init_args.filters``.

``{min_motion: 0.3, max_motion: 8.0, drop_cuts: true}`` keeps clips whose motion score lies in
[min_motion, max_motion] and that span no scene cut. The training loader and ``dv cache-latents``
apply them to each clip's metadata before decoding it. Clips from format-1 shards carry no
scores: they are kept and counted as ``unscored`` (rebuild the shards to filter them).
``dv shard-stats`` shows the score distributions to choose thresholds from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from dv.errors import ConfigError

__all__ = ["ClipFilter", "UNSCORED"]

UNSCORED = "unscored"
"""Count key of clips kept because they carry no scores (format-1 shards)."""


@dataclass(frozen=True)
class ClipFilter:
    """Which clips to keep, by their scores; the default keeps every clip."""

    min_motion: float | None = None
    max_motion: float | None = None
    drop_cuts: bool = False

    def __post_init__(self):
        """Refuse values that cannot work, naming the key."""
        for key in ("min_motion", "max_motion"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise ConfigError(f"data.filters.{key} must be a number >= 0 or null, not {v!r}")
        if not isinstance(self.drop_cuts, bool):
            raise ConfigError(f"data.filters.drop_cuts must be true or false, not {self.drop_cuts!r}")
        if self.min_motion is not None and self.max_motion is not None and self.min_motion > self.max_motion:
            raise ConfigError(f"data.filters.min_motion {self.min_motion} is above max_motion {self.max_motion}")

    @classmethod
    def from_config(cls, value: "dict[str, Any] | ClipFilter | None") -> "ClipFilter":
        """A filter from a recipe's ``filters`` mapping or parsed namespace (None: keep all); ConfigError naming a bad key or value."""
        if value is None or isinstance(value, ClipFilter):
            return value or cls()
        if hasattr(value, "as_dict"):  # the section as a parsed recipe (dv.recipe.Recipe) holds it
            value = value.as_dict()
        if not isinstance(value, dict):
            raise ConfigError(f"data.filters must be a mapping like {{min_motion: 0.3, drop_cuts: true}}, not {value!r}")
        unknown = sorted(set(value) - {"min_motion", "max_motion", "drop_cuts"})
        if unknown:
            raise ConfigError(f"data.filters has unknown key(s) {', '.join(unknown)}; known: min_motion, max_motion, drop_cuts")
        return cls(value.get("min_motion"), value.get("max_motion"), value.get("drop_cuts", False))

    @property
    def active(self) -> bool:
        """Whether any clip can be dropped."""
        return self.min_motion is not None or self.max_motion is not None or self.drop_cuts

    def settings(self) -> dict[str, Any] | None:
        """The filter as a JSON-ready dict (None when inactive), for stats files."""
        return asdict(self) if self.active else None

    def reason(self, meta: dict[str, Any]) -> str | None:
        """Why a clip with metadata `meta` is dropped (``cut``, ``motion_below_min``, ``motion_above_max``),
        UNSCORED when it has no scores to judge (kept), or None when it is kept."""
        if not self.active:
            return None
        scores = meta.get("scores")
        if not scores:
            return UNSCORED
        if self.drop_cuts and scores.get("cut"):
            return "cut"
        motion = scores.get("motion")
        if self.min_motion is not None and motion is not None and motion < self.min_motion:
            return "motion_below_min"
        if self.max_motion is not None and motion is not None and motion > self.max_motion:
            return "motion_above_max"
        return None

    def drops(self, raw_meta: bytes, counts: dict[str, int]) -> bool:
        """Whether to drop the clip whose ``.json`` member is `raw_meta`; counts the reason in `counts`."""
        if not self.active:
            return False
        why = self.reason(json.loads(bytes(raw_meta).decode("utf-8")))
        if why:
            counts[why] = counts.get(why, 0) + 1
        return why is not None and why != UNSCORED
