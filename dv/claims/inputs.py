"""What the claims commands read: the models to compare (NAME=RECIPE,CKPT) and the held-out clips."""

from __future__ import annotations

import numpy as np

from dv.data.datamodule import VideoDataModule
from dv.errors import ConfigError


def parse_model(text: str) -> tuple[str, str, str]:
    """'NAME=RECIPE,CKPT' -> (name, recipe, ckpt)."""
    name, sep, rest = text.partition("=")
    recipe, sep2, ckpt = rest.partition(",")
    if not (sep and sep2 and name and recipe and ckpt):
        raise ConfigError(f"--model takes NAME=RECIPE,CKPT, not {text!r}")
    return name, recipe, ckpt


def held_out_clips(pattern: str, frames: int, size: int) -> list[tuple[np.ndarray, str, str]]:
    """(frames uint8 (T, H, W, 3), photo, motion) of every clip in the held-out shards."""
    data = VideoDataModule(
        train_shards=pattern, val_shards=pattern, batch_size=16, num_workers=0, num_frames=frames, frame_size=size
    )
    data.setup("validate")
    return [
        (v.numpy(), m["extra"]["photo"], m["extra"]["move"])
        for batch in data.val_dataloader()
        for v, m in zip(batch["video"], batch["meta"])
    ]


def per_move(clips: list[tuple[np.ndarray, str, str]], count: int) -> list[tuple[np.ndarray, str, str]]:
    """The first `count` clips of each (photo, motion), in their order: every photo and caption, fewer clips."""
    if count < 1:
        raise ConfigError(f"--clips-per-move must be 1 or more, not {count}")
    seen: dict[tuple[str, str], int] = {}
    kept = []
    for clip in clips:
        key = (clip[1], clip[2])
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= count:
            kept.append(clip)
    return kept
