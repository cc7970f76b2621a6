"""THE shard format: sample keys, encode/decode of one sample, shard names, per-shard stats.

A shard is a plain tar of samples. Sample ``KEY`` is three members:

- ``KEY.mp4``  the clip, H.264 in mp4 (yuv420p), already at training size;
- ``KEY.txt``  the caption, UTF-8;
- ``KEY.json`` :class:`ClipMeta` (source id, source fps, source size (w, h),
  stride, source frame indices, clip index, split, clip fps and size, and
  ``extra``: what the source adapter knows, such as the UCF101 class or the
  camera move).

Shards of one split are ``PREFIX-000000.tar``, ``PREFIX-000001.tar``, ... with
``PREFIX-000000.stats.json`` beside each, written last: a shard whose stats
file exists is complete. The writer (data_prep) and the reader (the
datamodule) both import this module; nothing else knows the keys.

A *latent* shard (``dv cache-latents``) has the same names and layout, one
sample per clip of the video shard it was made from, with the video replaced:

- ``KEY.posterior.safetensors`` the VAE posterior, tensors ``mean`` and
  ``logvar`` (c, T, h, w), unscaled, bf16; its header metadata names the VAE
  (``vae``: SHA-256 over its config and weights). The lossless space-to-depth
  autoencoder stores its latents as ``mean`` and ``logvar`` = -30 (a point
  mass; nothing is drawn for it);
- ``KEY.reference.png`` the clip's first frame as decoded at the cached size,
  uint8 RGB (lossless), the Image Retention branch's reference image;
- ``KEY.txt`` and ``KEY.json`` the video sample's caption and metadata, as they were;
- ``KEY.text.safetensors`` (optional, ``--text``) tensor ``embedding`` (L, D),
  bf16, the caption's text embedding; header metadata ``text_encoder``.

Its stats file's ``settings`` say ``kind: latents`` and hold the encoders'
identities and the clip size the cache was made at.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import struct
import tarfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from braceexpand import braceexpand

from dv.atomic import atomic_write
from dv.data.video import decode_mp4, resize_crop
from dv.errors import DataError

if TYPE_CHECKING:
    import torch

# torch (latent samples, tensors) is imported where it is used: the shard builder writes video
# shards with this module, and its workers stay free of torch's import cost and memory.

VIDEO_KEY = "mp4"
CAPTION_KEY = "txt"
META_KEY = "json"
SAMPLE_KEYS = (VIDEO_KEY, CAPTION_KEY, META_KEY)
POSTERIOR_KEY = "posterior.safetensors"
REFERENCE_KEY = "reference.png"
TEXT_KEY = "text.safetensors"
LATENT_SAMPLE_KEYS = (POSTERIOR_KEY, REFERENCE_KEY, CAPTION_KEY, META_KEY)
LATENT_KIND = "latents"  # settings["kind"] of a latent shard's stats
FORMAT_VERSION = 2
"""2: clips carry ``scores`` and ``source_bit_rate``, stats carry per-clip ``clip_scores``; 1 lacks them (still read)."""
TAR_MTIME = 0.0  # fixed member mtime, so the same input gives byte-identical tars



def _latent_dtype():
    """torch.bfloat16, the dtype latent shards store, looked up when used so that importing this module needs no torch."""
    import torch

    return torch.bfloat16


def __getattr__(name: str):
    """LATENT_DTYPE (torch.bfloat16), resolved on first use so that importing this module needs no torch."""
    if name == "LATENT_DTYPE":
        return _latent_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<index>[0-9]{6})\.tar$")
_MAX_KEY_STEM = 96


def shard_name(prefix: str, index: int) -> str:
    """File name of shard `index` of a split: ``PREFIX-000000.tar``."""
    return f"{prefix}-{index:06d}.tar"


def stats_name(prefix: str, index: int) -> str:
    """File name of the completion/stats file of a shard: ``PREFIX-000000.stats.json``."""
    return f"{prefix}-{index:06d}.stats.json"


def parse_shard_name(path: str | Path) -> tuple[str, int]:
    """(prefix, index) of a shard path named like ``PREFIX-000000.tar``; DataError for any other name."""
    match = _SHARD_NAME.match(Path(path).name)
    if match is None:
        raise DataError(f"{str(path)!r} is not named like a dv shard (PREFIX-000000.tar)")
    return match["prefix"], int(match["index"])


def temp_name(prefix: str, index: int) -> str:
    """Name a shard is written under before it is renamed into place."""
    return shard_name(prefix, index) + ".tmp"


def sample_key(source_id: str, clip_index: int) -> str:
    """A safe, deterministic tar key for clip `clip_index` of `source_id`.

    Keys keep only ``[A-Za-z0-9_-]`` (no dots: webdataset splits a member name
    at the first dot; no slashes: no escaping the tar's root). An id that had
    to be changed or shortened gets 8 hex digits of its hash, so two ids never
    share a key.
    """
    stem = _UNSAFE.sub("_", str(source_id)).strip("_-")
    if stem != str(source_id) or len(stem) > _MAX_KEY_STEM or not stem:
        digest = hashlib.sha1(str(source_id).encode("utf-8", "surrogatepass")).hexdigest()[:8]
        stem = f"{stem[:_MAX_KEY_STEM]}_{digest}" if stem else digest
    return f"{stem}_c{clip_index:03d}"


@dataclass
class ClipMeta:
    """The ``.json`` member of a sample: where a clip came from."""

    source_id: str
    source: str
    split: str
    clip_index: int
    source_fps: float
    source_size: tuple[int, int]
    stride: int
    frame_indices: list[int]
    num_frames: int
    size: tuple[int, int]
    fps: float
    padded: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific: UCF class, camera move, ...
    format_version: int = FORMAT_VERSION
    scores: dict[str, Any] = field(default_factory=dict)
    """Curation scores (dv/data/scores.py): ``motion`` (% of the side per clip frame), ``cut`` (bool),
    ``cut_frame`` (source frame index of the first frame after the cut, or None), ``cut_distance``
    (largest neighbouring-frame histogram distance over the source span)."""
    source_bit_rate: int | None = None
    """Bits per second of the source video stream; None for rendered sources or when unknown."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["source_size"] = list(self.source_size)
        d["size"] = list(self.size)
        return d


def encode_sample(key: str, video_mp4: bytes, caption: str, meta: ClipMeta) -> dict[str, Any]:
    """One sample as the dict a webdataset ``TarWriter`` writes (bytes per key)."""
    if not caption or not caption.strip():
        raise DataError(f"sample {key!r} has an empty caption")
    try:
        text = caption.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(f"sample {key!r} has a caption that is not valid UTF-8") from exc
    return {
        "__key__": key,
        VIDEO_KEY: bytes(video_mp4),
        CAPTION_KEY: text,
        META_KEY: json.dumps(meta.to_dict(), sort_keys=True, ensure_ascii=False).encode("utf-8"),
    }


def decode_sample(sample: dict[str, Any], num_frames: int | None = None, frame_size: int | None = None) -> dict:
    """A raw webdataset sample to ``{"video": uint8 (T, H, W, C) tensor, "caption": str, "meta": dict}``.

    Raises DataError when a key is missing or the video does not decode.
    """
    missing = [k for k in SAMPLE_KEYS if k not in sample]
    if missing:
        raise DataError(f"sample {sample.get('__key__')!r} lacks {', '.join(missing)}")
    frames = decode_mp4(bytes(sample[VIDEO_KEY]), max_frames=num_frames)
    if num_frames is not None and frames.shape[0] < num_frames:
        raise DataError(f"sample {sample.get('__key__')!r} has {frames.shape[0]} frames, fewer than {num_frames}")
    import torch

    video = torch.from_numpy(np.ascontiguousarray(frames))
    if frame_size is not None:
        video = resize_crop(video, frame_size)
    meta = json.loads(bytes(sample[META_KEY]).decode("utf-8"))
    meta["key"] = sample.get("__key__")
    meta["url"] = sample.get("__url__")
    return {"video": video, "caption": bytes(sample[CAPTION_KEY]).decode("utf-8"), "meta": meta}


def _header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (its header is an 8-byte length, then JSON)."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]).get("__metadata__") or {}


def encode_latent_sample(
    key: str,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    reference: torch.Tensor,
    caption: str,
    meta: dict[str, Any],
    vae: str,
    text: torch.Tensor | None = None,
    text_encoder: str | None = None,
) -> dict[str, Any]:
    """One latent sample as the dict a ``TarWriter`` writes: posterior (c, T, h, w), uint8 reference (H, W, 3), caption, meta."""
    import torch
    from PIL import Image
    from safetensors.torch import save as save_tensors

    latent_dtype = _latent_dtype()
    if mean.shape != logvar.shape or mean.dim() != 4:
        raise DataError(f"sample {key!r}: posterior mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} must be (c, T, h, w)")
    if reference.dtype != torch.uint8 or reference.dim() != 3 or reference.shape[-1] != 3:
        raise DataError(f"sample {key!r}: the reference frame must be uint8 (H, W, 3), not {reference.dtype} {tuple(reference.shape)}")
    _check_finite(f"sample {key!r}: the encoders gave", mean=mean, logvar=logvar, text=text,
                  hint="; nothing of it is written (a half-precision overflow? try --precision 32-true)")
    png = io.BytesIO()
    Image.fromarray(reference.cpu().numpy()).save(png, format="PNG")
    posterior = {"mean": mean.to(latent_dtype).contiguous().cpu(), "logvar": logvar.to(latent_dtype).contiguous().cpu()}
    sample = {
        "__key__": key,
        POSTERIOR_KEY: save_tensors(posterior, metadata={"vae": vae}),
        REFERENCE_KEY: png.getvalue(),
        CAPTION_KEY: caption.encode("utf-8"),
        META_KEY: json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
    }
    if text is not None:
        embedding = {"embedding": text.to(latent_dtype).contiguous().cpu()}
        sample[TEXT_KEY] = save_tensors(embedding, metadata={"text_encoder": text_encoder or ""})
    return sample


def _check_finite(what: str, hint: str = "", **tensors) -> None:
    """DataError naming the tensors (of a latent sample) that hold NaN or inf; None entries are skipped."""
    import torch

    bad = [name for name, t in tensors.items() if t is not None and not bool(torch.isfinite(t).all())]
    if bad:
        raise DataError(f"{what} NaN or inf in its {' and '.join(bad)}{hint}")


def is_latent_sample(sample: dict[str, Any]) -> bool:
    """Whether a raw webdataset sample comes from a latent shard."""
    return POSTERIOR_KEY in sample


def decode_latent_sample(sample: dict[str, Any], num_frames: int | None = None, frame_size: int | None = None) -> dict:
    """A raw latent sample to ``{"latent_mean", "latent_logvar": bf16 (c, T, h, w), "reference": uint8 (H, W, 3),
    "caption", "meta", "vae"}`` plus ``"text_embedding"`` (L, D) and ``"text_encoder"`` when cached.

    `num_frames` keeps the first N latent frames (exact: both autoencoders work frame by frame);
    the cached frame size cannot change, so a `frame_size` other than it raises DataError.
    """
    import torch
    from PIL import Image
    from safetensors.torch import load as load_tensors

    name = sample.get("__key__")
    missing = [k for k in LATENT_SAMPLE_KEYS if k not in sample]
    if missing:
        raise DataError(f"latent sample {name!r} lacks {', '.join(missing)}")
    blob = bytes(sample[POSTERIOR_KEY])
    posterior = load_tensors(blob)
    mean, logvar = posterior["mean"], posterior["logvar"]
    _check_finite(f"latent sample {name!r} holds", mean=mean, logvar=logvar)
    if num_frames is not None:
        if mean.shape[1] < num_frames:
            raise DataError(f"latent sample {name!r} has {mean.shape[1]} frames, fewer than {num_frames}")
        mean, logvar = mean[:, :num_frames], logvar[:, :num_frames]
    with Image.open(io.BytesIO(bytes(sample[REFERENCE_KEY]))) as img:
        reference = torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8))
    if frame_size is not None and tuple(reference.shape[:2]) != (frame_size, frame_size):
        raise DataError(
            f"latent sample {name!r} was cached at {reference.shape[1]}x{reference.shape[0]}, not frame_size {frame_size}"
        )
    meta = json.loads(bytes(sample[META_KEY]).decode("utf-8"))
    meta["key"] = name
    meta["url"] = sample.get("__url__")
    out = {
        "latent_mean": mean,
        "latent_logvar": logvar,
        "reference": reference,
        "caption": bytes(sample[CAPTION_KEY]).decode("utf-8"),
        "meta": meta,
        "vae": _header_metadata(blob).get("vae", ""),
    }
    if TEXT_KEY in sample:
        text = bytes(sample[TEXT_KEY])
        out["text_embedding"] = load_tensors(text)["embedding"]
        _check_finite(f"latent sample {name!r} holds", text=out["text_embedding"])
        out["text_encoder"] = _header_metadata(text).get("text_encoder", "")
    return out


class SampleTarWriter:
    """Writes samples (``{"__key__": k, ext: bytes}``) to a tar stream, byte for byte as webdataset's
    ``TarWriter(stream, encoder=False, mtime=TAR_MTIME)`` does, without importing webdataset (which
    imports torch): members ``KEY.EXT`` in sorted order, mode 0444, owner bigdata, PAX format."""

    def __init__(self, stream, mtime: float = TAR_MTIME):
        self.tar = tarfile.open(fileobj=stream, mode="w|")
        self.mtime = mtime

    def write(self, sample: dict[str, Any]) -> None:
        """Add one sample's members."""
        key = sample["__key__"]
        for ext in sorted(k for k in sample if not k.startswith("_")):
            data = bytes(sample[ext])
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), self.mtime, 0o0444
            info.uname = info.gname = "bigdata"
            self.tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        """Write the end-of-archive blocks."""
        self.tar.close()

    def __enter__(self) -> "SampleTarWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class ShardStats:
    """The ``.stats.json`` of one shard: what went in, what came out, why sources were skipped."""

    shard: str
    split: str
    index: int
    source: str
    sources_seen: int = 0
    samples_written: int = 0
    sources_written: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # source id -> reason
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    bytes_written: int | None = None  # size of the finished tar, where the writer records it (latent shards do)
    clip_scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Sample key -> its scores, source size and bit rate (format 2 video shards), for `data_prep stats`."""
    filtered_by_reason: dict[str, int] = field(default_factory=dict)
    """Clips left out by the recipe's filters (latent shards), by reason."""

    def skip(self, source_id: str, reason: str) -> None:
        """Record that a source gave no sample, with a short reason (first word = its kind)."""
        self.skipped[str(source_id)] = reason
        kind = reason.split(":", 1)[0].strip()
        self.skipped_by_reason[kind] = self.skipped_by_reason.get(kind, 0) + 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ShardStats":
        """Rebuild stats from their JSON dict (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def write_stats(path: str | Path, stats: ShardStats) -> None:
    """Write a stats file whole or not at all (dv.atomic): its presence marks the shard complete."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(asdict(stats), indent=1, sort_keys=True, ensure_ascii=False), encoding="utf-8")


def read_stats(path: str | Path) -> ShardStats | None:
    """Stats of a shard, or None if the file is missing or unreadable."""
    try:
        return ShardStats.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def shard_complete(out_dir: str | Path, prefix: str, index: int) -> bool:
    """Whether shard `index` is finished: its tar and its readable stats file both exist."""
    out_dir = Path(out_dir)
    return (out_dir / shard_name(prefix, index)).is_file() and read_stats(
        out_dir / stats_name(prefix, index)
    ) is not None


def stats_path_for(shard_path: str | Path) -> Path:
    """The stats file beside a shard path (``x-000001.tar`` -> ``x-000001.stats.json``)."""
    shard_path = Path(shard_path)
    return shard_path.with_name(shard_path.name.removesuffix(".tar") + ".stats.json")


def expand_shards(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Shard paths from brace patterns (``train-{000000..000009}.tar``), globs (``train-*.tar``) or lists.

    Each pattern is brace-expanded, then globbed (sorted); a pattern that
    matches no file raises DataError naming it. Remote URLs pass through.
    """
    patterns = [spec] if isinstance(spec, str) else list(spec)
    if not patterns:
        raise DataError("no shard pattern given; pass a path like DIR/train-*.tar")
    out: list[str] = []
    for pattern in patterns:
        matched: list[str] = []
        missing: list[str] = []
        for part in braceexpand(str(pattern)):
            part = os.path.expanduser(part)
            if "://" in part or part.startswith("pipe:"):
                matched.append(part)
            elif glob.has_magic(part):
                matched.extend(sorted(glob.glob(part)))
            elif os.path.isfile(part):
                matched.append(part)
            else:
                missing.append(part)
        if not matched:
            raise DataError(f"shard pattern {pattern!r} matches no file; build shards with `dv shards`")
        if missing:
            raise DataError(f"shard {missing[0]!r} named by {pattern!r} does not exist ({len(missing)} missing)")
        out.extend(matched)
    return out


def count_samples(shards: list[str]) -> int | None:
    """Samples in the given shards according to their stats files, or None if any is missing."""
    total = 0
    for path in shards:
        stats = read_stats(stats_path_for(path))
        if stats is None:
            return None
        total += stats.samples_written
    return total


def build_report(
    shards: str, written: int, complete: int, failed: dict[str, str], totals: str, skipped_by_reason: dict[str, int],
    skipped: str,
) -> str:
    """The summary a shard build prints: shard counts, a totals line, what was skipped by reason, each failed shard.

    `shards` names the shards ("shards", "latent shards"), `skipped` what was skipped ("sources", "clips").
    """
    lines = [f"{shards}: {written} written, {complete} already complete, {len(failed)} failed", totals]
    if skipped_by_reason:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped_by_reason.items()))
        lines.append(f"{skipped} skipped: {sum(skipped_by_reason.values())} ({reasons})")
    for name, why in sorted(failed.items()):
        lines.append(f"FAILED {name}: {why} (rerun the same command to redo it)")
    return "\n".join(lines)
