"""Reading latent shards (``dv cache-latents``): their batches, and the checks the data module runs on them.

The data module reads video and latent shards alike: point ``train_shards`` (or
``val_shards``) at a cache and its batches carry the stored VAE posterior instead
of the video:

``{"latent_mean", "latent_logvar": bf16 (B, c, T, h, w), "reference": uint8 (B, H, W, C),
"caption": list[str], "meta": list[dict], "vae": list[str]}``, plus
``"text_embedding"`` bf16 (B, L, D) and ``"text_encoder"`` when every sample has
its text cached. The training module draws the latent from the posterior at
every step, as encoding on the fly would, and refuses a batch whose ``vae``
(or ``text_encoder``) identity is not its own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import default_collate

from dv.data.shards import LATENT_KIND, read_stats, stats_path_for
from dv.errors import ConfigError, DataError


def is_latent_batch(samples: list[dict]) -> bool:
    """Whether decoded samples come from latent shards; a batch mixing kinds is a DataError."""
    kinds = {"latent_mean" in s for s in samples}
    if len(kinds) > 1:
        raise DataError("a batch mixes video and latent samples; keep video and latent shards in separate patterns")
    return kinds == {True}


def collate_latents(samples: list[dict]) -> dict[str, Any]:
    """Stack decoded latent samples into a latent batch (see the module docstring)."""
    shapes = {(tuple(s["latent_mean"].shape), tuple(s["reference"].shape)) for s in samples}
    if len(shapes) > 1:
        raise DataError(f"latent clips in one batch differ in shape {sorted(shapes)}; set num_frames")
    batch = {
        "latent_mean": default_collate([s["latent_mean"] for s in samples]),
        "latent_logvar": default_collate([s["latent_logvar"] for s in samples]),
        "reference": default_collate([s["reference"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "meta": [s["meta"] for s in samples],
        "vae": [s["vae"] for s in samples],
    }
    # Text embeddings go along only when all samples have them; otherwise the module encodes the captions.
    if all("text_embedding" in s for s in samples):
        batch["text_embedding"] = default_collate([s["text_embedding"] for s in samples])
        batch["text_encoder"] = [s["text_encoder"] for s in samples]
    return batch


def check_latent_shards(urls: list[str], num_frames: int | None, frame_size: int | None) -> None:
    """Refuse, before any sample is read, latent shards whose cached clips cannot give the asked size.

    (A mismatch found sample by sample would skip every sample, and a resampled training stream
    would never end.) Video shards, and shards without a stats file, pass unchecked.
    """
    for url in urls:
        stats = read_stats(stats_path_for(url)) if "://" not in url else None
        if stats is None or stats.settings.get("kind") != LATENT_KIND:
            continue
        sizes, frames = stats.settings.get("sizes") or [], stats.settings.get("frames") or []
        if frame_size is not None and any(size != frame_size for size in sizes):
            raise ConfigError(
                f"latent shard {url} holds clips cached at {sizes[0]}x{sizes[0]}, not frame_size {frame_size}; "
                f"set data frame_size to {sizes[0]} (or null), or cache again with --frame-size {frame_size}"
            )
        if num_frames is not None and frames and min(frames) < num_frames:
            raise ConfigError(
                f"latent shard {url} holds clips of {min(frames)} frames, fewer than num_frames {num_frames}; "
                f"cache again from longer clips or lower num_frames"
            )


def clips_and_frames(batch: dict[str, Any]) -> tuple[int, int]:
    """(clips, frames per clip) of a video or latent batch."""
    if "video" in batch:
        b, t = batch["video"].shape[:2]
    else:
        b, _, t = batch["latent_mean"].shape[:3]
    return int(b), int(t)


def check_identity(batch: dict[str, Any], key: str, expected: str, what: str) -> None:
    """DataError unless every sample of a latent batch was encoded by the network whose identity is `expected`."""
    found = sorted(set(batch[key]))
    if found != [expected]:
        other = next((f for f in found if f != expected), "")
        raise DataError(
            f"these latent shards were made by another {what} (sha256 {other[:12] or 'unknown'}) than this recipe's "
            f"({expected[:12]}); cache them again with `dv cache-latents --recipe` of this recipe"
        )


def cached_video(batch: dict[str, Any]) -> torch.Tensor:
    """The pixels a latent batch keeps, as a one-frame uint8 video (B, 1, H, W, C): the reference frames."""
    return batch["reference"][:, None]
