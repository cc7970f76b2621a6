"""The data engine: shard format, video I/O and the LightningDataModule over shards.

``VideoDataModule`` is imported lazily so that shard building (data_prep) does
not pay for importing Lightning.
"""

from dv.data.shards import (
    CAPTION_KEY,
    META_KEY,
    SAMPLE_KEYS,
    VIDEO_KEY,
    ClipMeta,
    ShardStats,
    decode_sample,
    encode_sample,
    expand_shards,
    sample_key,
    shard_name,
    stats_name,
)

__all__ = [
    "CAPTION_KEY",
    "META_KEY",
    "SAMPLE_KEYS",
    "VIDEO_KEY",
    "ClipMeta",
    "ShardStats",
    "VideoDataModule",
    "decode_sample",
    "encode_sample",
    "expand_shards",
    "sample_key",
    "shard_name",
    "stats_name",
]


def __getattr__(name: str):
    """Import VideoDataModule on first use."""
    if name == "VideoDataModule":
        from dv.data.datamodule import VideoDataModule

        return VideoDataModule
    raise AttributeError(f"module 'dv.data' has no attribute {name!r}")
