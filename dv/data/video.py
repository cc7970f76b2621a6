"""Video I/O with PyAV, frame-index sampling, and resize + centre crop.

Frame indices count decoded frames in presentation order, starting at 0. A
variable-frame-rate file is therefore sampled "in order": a stride of 4 means
every 4th decoded frame, whatever the timestamps between them say. The nominal
rate (``average_rate``) is recorded as the source fps. A display-matrix
rotation (phone videos) is applied while decoding, so frames come out upright
and sizes are display sizes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import av
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from dv.errors import DataError

__all__ = [
    "VideoError",
    "VideoInfo",
    "probe",
    "count_frames",
    "clip_span",
    "sample_clip_indices",
    "scaled_size",
    "center_crop",
    "resize_crop",
    "read_frames",
    "encode_mp4",
    "decode_mp4",
    "write_video",
    "strided_fps",
    "stack_frames",
]


class VideoError(DataError):
    """A video that cannot be used; `kind` names why in one word (for shard stats)."""

    def __init__(self, kind: str, message: str):
        """An error of one `kind` (not_video, no_video_stream, unsupported_codec, undecodable)."""
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):
        """Pickle with the kind (errors cross process boundaries in worker pools)."""
        return type(self), (self.kind, str(self))


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about its first video stream (display orientation)."""

    fps: float
    width: int
    height: int
    num_frames: int
    rotation: int
    codec: str


def _open(source: str | Path | bytes) -> av.container.InputContainer:
    """Open a file path or in-memory bytes for reading, as a DataError on failure."""
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError("not_video", f"cannot open as video ({type(exc).__name__}: {exc})") from exc


def _video_stream(container) -> av.video.stream.VideoStream:
    """The first video stream of an open container, or a DataError if it has none."""
    if not container.streams.video:
        raise VideoError("no_video_stream", "the file has no video stream (audio-only or not a video)")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        tag = getattr(stream, "codec_tag", "") or "?"
        raise VideoError("unsupported_codec", f"no decoder for the video codec (tag {tag!r})")
    return stream


def _nominal_fps(stream) -> float:
    """Nominal frame rate of a stream: average rate, else guessed rate, else 0."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe(path: str | Path) -> VideoInfo:
    """Read the fps, display size, frame count (or estimate) and rotation of a video file."""
    with _open(path) as container:
        stream = _video_stream(container)
        ctx = stream.codec_context
        fps = _nominal_fps(stream)
        num = int(stream.frames or 0)
        if num <= 0:
            # Containers such as mkv/webm carry no frame count: estimate from duration.
            duration = None
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            num = int(round(duration * fps)) if duration and fps else 0
        rotation = 0
        width, height = ctx.width, ctx.height
        try:
            for frame in container.decode(stream):
                rotation = _frame_rotation(frame)
                width, height = frame.width, frame.height
                break
        except av.FFmpegError as exc:
            raise VideoError("undecodable", f"cannot decode the first frame ({exc})") from exc
        if rotation % 180:
            width, height = height, width
        if width <= 0 or height <= 0:
            raise VideoError("undecodable", "the video stream reports no frame size")
        return VideoInfo(fps=fps, width=width, height=height, num_frames=num, rotation=rotation, codec=ctx.name)


def count_frames(path: str | Path) -> int:
    """Frames that really decode from a file (for containers that do not say)."""
    n = 0
    with _open(path) as container:
        try:
            for _ in container.decode(_video_stream(container)):
                n += 1
        except av.FFmpegError:
            pass  # a damaged tail: the frames before it count
    return n


def _frame_rotation(frame: av.VideoFrame) -> int:
    """Counter-clockwise display rotation of a decoded frame, snapped to a multiple of 90."""
    try:
        angle = frame.rotation
    except (AttributeError, av.FFmpegError):
        return 0
    return int(round((angle or 0) / 90.0)) * 90 % 360


def clip_span(frames: int, stride: int) -> int:
    """Number of source frames one clip of `frames` frames at `stride` covers."""
    return (frames - 1) * stride + 1


def sample_clip_indices(
    num_source_frames: int, frames: int, stride: int, clips_per_video: int = 1, pad_short: bool = False
) -> list[list[int]]:
    """Source frame indices of up to `clips_per_video` clips spread evenly over a video.

    One clip is taken from the middle; k clips start at evenly spaced positions
    from the first to the last possible start (fewer if the video has fewer
    distinct starts). A video shorter than one clip gives no clip, unless
    `pad_short`, which repeats its last frame to fill one clip.
    """
    if frames < 1 or stride < 1 or clips_per_video < 1:
        raise ValueError("frames, stride and clips_per_video must be at least 1")
    span = clip_span(frames, stride)
    if num_source_frames < span:
        if pad_short and num_source_frames > 0:
            return [[min(i * stride, num_source_frames - 1) for i in range(frames)]]
        return []
    last_start = num_source_frames - span
    k = min(clips_per_video, last_start + 1)
    if k == 1:
        starts = [last_start // 2]
    else:
        starts = [round(i * last_start / (k - 1)) for i in range(k)]
    return [[s + i * stride for i in range(frames)] for s in starts]


def scaled_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) after scaling so the short side is `size`; the long side rounds, never below `size`."""
    if width <= 0 or height <= 0:
        raise ValueError(f"bad frame size {width}x{height}")
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def center_crop(frames: np.ndarray | torch.Tensor, size: int):
    """Centre `size`×`size` crop of `(..., H, W, C)` frames (H and W at least `size`)."""
    h, w = frames.shape[-3], frames.shape[-2]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from {w}x{h}")
    top, left = (h - size) // 2, (w - size) // 2
    return frames[..., top : top + size, left : left + size, :]


def resize_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 `(T, H, W, C)` frames so the short side is `size`, then centre-crop to square."""
    t, h, w, c = video.shape
    if (h, w) == (size, size):
        return video
    new_w, new_h = scaled_size(w, h, size)
    x = rearrange(video, "t h w c -> t c h w").float()
    # antialias matters when shrinking: plain bilinear aliases fine texture into moiré.
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=new_h < h, align_corners=False)
    x = rearrange(x.round().clamp(0, 255).to(torch.uint8), "t c h w -> t h w c")
    return center_crop(x, size).contiguous()


def _frame_to_square(frame: av.VideoFrame, size: int | None, rotation: int) -> np.ndarray:
    """One decoded frame as upright RGB `(H, W, 3)`, scaled to short side `size` and centre-cropped."""
    if size is None:
        rgb = frame.to_ndarray(format="rgb24")
    else:
        disp_w, disp_h = (frame.height, frame.width) if rotation % 180 else (frame.width, frame.height)
        out_w, out_h = scaled_size(disp_w, disp_h, size)
        coded_w, coded_h = (out_h, out_w) if rotation % 180 else (out_w, out_h)
        # swscale's area filter averages when shrinking and is fast on full-HD sources.
        rgb = frame.reformat(width=coded_w, height=coded_h, format="rgb24", interpolation="AREA").to_ndarray()
    if rotation:
        rgb = np.rot90(rgb, k=rotation // 90)
    if size is not None:
        rgb = center_crop(rgb, size)
    return np.ascontiguousarray(rgb)


def read_frames(
    source: str | Path | bytes, indices: Iterable[int], size: int | None = None
) -> tuple[dict[int, np.ndarray], int]:
    """Decode the frames at `indices` (upright RGB, optionally resized + cropped to `size`).

    Returns ({index: frame}, number of frames decoded). Decoding stops after the
    largest wanted index; a file that ends early simply returns fewer frames.
    A file that is broken from the start raises DataError.
    """
    wanted = set(int(i) for i in indices)
    last = max(wanted) if wanted else -1
    out: dict[int, np.ndarray] = {}
    decoded = 0
    with _open(source) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if decoded in wanted:
                    out[decoded] = _frame_to_square(frame, size, _frame_rotation(frame))
                decoded += 1
                if decoded > last:
                    break
        except av.FFmpegError as exc:
            # A truncated file decodes up to the damage; keep what came out, if anything.
            if decoded == 0:
                raise VideoError("undecodable", f"cannot decode video ({exc})") from exc
    return out, decoded


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 18, preset: str = "fast") -> bytes:
    """H.264 mp4 (libx264, yuv420p) bytes of uint8 `(T, H, W, 3)` frames; H and W must be even."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 (T, H, W, 3) frames, got {frames.dtype} {tuple(frames.shape)}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes, got {w}x{h}")
    buf = io.BytesIO()
    write_video(buf, frames, fps, codec="libx264", pix_fmt="yuv420p", options={"crf": str(crf), "preset": preset})
    return buf.getvalue()


def write_video(
    target,
    frames: np.ndarray,
    fps: float,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    container_format: str | None = "mp4",
    rotation: int | None = None,
) -> None:
    """Write uint8 `(T, H, W, 3)` frames to a path or binary stream with PyAV."""
    rate = Fraction(fps).limit_denominator(1001)
    kwargs = {"format": container_format} if container_format else {}
    with av.open(target if not isinstance(target, Path) else str(target), mode="w", **kwargs) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = options
        if rotation:
            stream.set_display_rotation(rotation)
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decode_mp4(data: bytes, max_frames: int | None = None) -> np.ndarray:
    """Decode video bytes to uint8 `(T, H, W, 3)`, the first `max_frames` frames if given."""
    frames: list[np.ndarray] = []
    with _open(data) as container:
        stream = _video_stream(container)
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise VideoError("undecodable", "the video has no frames")
    return np.stack(frames)


def strided_fps(source_fps: float, stride: int) -> float:
    """Frame rate of a clip taking every `stride`-th frame of a `source_fps` video."""
    return source_fps / stride if source_fps > 0 else 8.0


def stack_frames(frames: dict[int, np.ndarray], indices: Sequence[int]) -> np.ndarray:
    """Frames at `indices` from a decoded dict, stacked to `(T, H, W, 3)`."""
    return np.stack([frames[i] for i in indices])
