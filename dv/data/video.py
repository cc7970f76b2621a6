"""Video I/O with PyAV, frame-index sampling, and resize + centre crop.

Frame indices count decoded frames in presentation order, starting at 0. A
variable-frame-rate file is therefore sampled "in order": a stride of 4 means
every 4th decoded frame, whatever the timestamps between them say. The nominal
rate (``average_rate``) is recorded as the source fps; a raw elementary stream
(``.h264``), whose container has no timing, takes its rate from the bitstream
(the SPS timing), or else a stated assumption of 25 (``fps_assumed``). A
display-matrix rotation (phone videos) is applied while decoding, so frames
come out upright and sizes are display sizes.

Reading seeks: :func:`index_frames` demuxes the packets once (no decoding) to
map frame index -> presentation timestamp and to find the keyframes;
:func:`read_span` then seeks to the keyframe at or before each wanted frame,
decodes only up to the last wanted one and converts only the wanted frames.
It checks every decoded frame's timestamp against the map and decodes from
the start instead wherever the map cannot be trusted (no timestamps, duplicate
timestamps, a seek that lands elsewhere, a frame the decoder drops), so the
answer is always that of decoding from the start. Decoding uses one thread by
default: shard builders run one process per core, and frame threads cost CPU.
"""

from __future__ import annotations

import io
from bisect import bisect_right
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import av
import numpy as np

from dv.errors import DataError

if TYPE_CHECKING:
    import torch

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
    "FrameIndex",
    "Span",
    "index_frames",
    "open_video",
    "stream_rate",
    "read_span",
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
    bit_rate: int = 0
    """Bits per second of the video stream (the container's total where the stream does not say; 0 unknown)."""
    fps_assumed: bool = False
    """True when neither the container nor the bitstream gives a frame rate and `fps` is the assumed 25."""


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


_NO_TIMESTAMPS = 0x80  # AVFMT_NOTIMESTAMPS: a raw elementary stream (.h264, .hevc, .m4v), no container timing
ASSUMED_FPS = 25.0
"""The rate assumed for a raw stream whose bitstream carries no timing (FFmpeg's default for raw streams)."""


def _is_raw_stream(container) -> bool:
    """Whether the container is a raw elementary stream, whose 'average rate' is only FFmpeg's default of 25."""
    return bool(container.format.flags & _NO_TIMESTAMPS)


def _nominal_fps(stream, container=None) -> tuple[float, bool]:
    """(frame rate, assumed?): the average rate, else guessed, else base; for a raw stream the bitstream's timing."""
    if container is not None and _is_raw_stream(container):
        # A raw stream's average_rate is the demuxer's default (25), not the video's: the
        # decoder's framerate comes from the bitstream (H.264 SPS timing info) when present.
        rate = stream.codec_context.framerate
        return (float(rate), False) if rate else (ASSUMED_FPS, True)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return (float(rate), False) if rate else (0.0, False)


def _bit_rate(container, stream) -> int:
    """Bits per second of the video stream, else of the whole container, else 0."""
    return int(stream.bit_rate or container.bit_rate or 0)


def open_video(source: str | Path | bytes):
    """An open PyAV input container of a file path or in-memory bytes (close it, or use it in ``with``)."""
    return _open(source)


def stream_rate(container) -> tuple[float, bool, int]:
    """(fps, whether that fps is an assumption, bit rate) of an open container's first video stream."""
    stream = _video_stream(container)
    fps, assumed = _nominal_fps(stream, container)
    return fps, assumed, _bit_rate(container, stream)


def probe(path: str | Path) -> VideoInfo:
    """Read the fps, display size, frame count (or estimate) and rotation of a video file."""
    with _open(path) as container:
        stream = _video_stream(container)
        ctx = stream.codec_context
        fps, assumed = _nominal_fps(stream, container)
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
        return VideoInfo(
            fps=fps, width=width, height=height, num_frames=num, rotation=rotation, codec=ctx.name,
            bit_rate=_bit_rate(container, stream), fps_assumed=assumed,
        )


def count_frames(path: str | Path) -> int:
    """Frames a file holds, for containers that do not say: its video packets, counted without decoding.

    One packet is one frame for the codecs dv reads (raw streams go through FFmpeg's parser, which
    splits them into frames). A file whose packets do not decode to as many frames is caught by
    the reader, which reports how far decoding really got.
    """
    with _open(path) as container:
        return index_frames(container).num_frames


def _open_gop(packets: list[tuple[int | None, int | None, bool]]) -> bool:
    """Whether a packet after a (non-first) keyframe, in decode order, shows before that keyframe."""
    key_pts = None
    for i, (pts, _, key) in enumerate(packets):
        if key:
            key_pts = pts if i else None
        elif key_pts is not None and pts is not None and pts < key_pts:
            return True
    return False


@dataclass(frozen=True)
class FrameIndex:
    """Where a stream's frames are, from its packets alone: frame i (presentation order) has timestamp ``pts[i]``.

    ``keyframes`` lists (frame index, timestamp) of each keyframe in presentation order; ``seekable``
    is False, with ``why`` saying so, when the timestamps cannot be trusted, and readers then decode
    from the start.
    """

    num_frames: int
    pts: tuple[int, ...] = ()
    keyframes: tuple[tuple[int, int], ...] = ()
    seekable: bool = False
    why: str = ""


def index_frames(container) -> FrameIndex:
    """Demux the first video stream of an open container (no decoding) into a :class:`FrameIndex`.

    The container is left at its end; readers seek before decoding.
    """
    stream = _video_stream(container)
    packets: list[tuple[int | None, int | None, bool]] = []
    why = ""
    try:
        for packet in container.demux(stream):
            if packet.size and not packet.is_discard:  # size 0: the demuxer's end-of-stream flush packet
                packets.append((packet.pts, packet.dts, packet.is_keyframe))
    except av.FFmpegError as exc:
        why = f"demuxing stopped early ({exc})"  # a damaged file: count what is there, decode from the start
    n = len(packets)
    pts = [p for p, _, _ in packets]
    if why:
        pass
    elif _open_gop(packets):
        why = "open GOP (frames decoded after a keyframe show before it and may need the previous GOP)"
    elif _is_raw_stream(container) or any(p is None for p in pts):
        why = "the stream has no timestamps (a raw stream)"
    elif len(set(pts)) != n:
        why = "two packets share a timestamp (hidden frames or a broken muxer)"
    elif not any(key for _, _, key in packets):
        why = "no packet is marked as a keyframe"
    if why:
        return FrameIndex(num_frames=n, why=why)
    order = sorted(pts)
    position = {p: i for i, p in enumerate(order)}
    # Seek by presentation timestamp: mp4 and matroska index keyframes by it (seeking to a
    # keyframe's earlier dts lands on the keyframe before).
    keys = sorted((position[p], p) for p, _, key in packets if key)
    return FrameIndex(num_frames=n, pts=tuple(order), keyframes=tuple(keys), seekable=True)


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
    # Imported here: the shard builder reads video without torch (a worker then holds no torch).
    import torch
    import torch.nn.functional as F
    from einops import rearrange

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


@dataclass
class Span:
    """What :func:`read_span` decoded: the wanted frames, luma thumbnails over the spans, and how it went."""

    frames: dict[int, np.ndarray] = field(default_factory=dict)
    """Wanted frame index -> upright RGB frame (resized and cropped when a size was given)."""
    thumbs: dict[int, np.ndarray] = field(default_factory=dict)
    """Frame index -> small uint8 luma image, for every frame inside one of the requested spans."""
    end: int = 0
    """Frames known to exist: one past the last frame decoded (a file that ends early says so here)."""
    decoded: int = 0
    """Frames the decoder produced (the work done)."""
    seeks: int = 0
    """Seeks made (0 when decoding from the start)."""
    fallback: str = ""
    """Why the frames were decoded from the start instead of seeking ('' when seeking worked)."""
    display_size: tuple[int, int] = (0, 0)
    """(w, h) of the decoded frames, upright."""


_LUMA_FIRST = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}
THUMB_SIDE = 64
"""Short side of the luma thumbnails scores are computed on (about; a whole-pixel stride of the frame)."""


def _luma_thumb(frame: av.VideoFrame) -> np.ndarray:
    """A small uint8 luma image of a frame: every k-th pixel of its Y plane, no colour conversion."""
    step = max(1, min(frame.width, frame.height) // THUMB_SIDE)
    if frame.format.name in _LUMA_FIRST:
        # Strided view of the decoder's own luma plane: microseconds, where a swscale call costs a millisecond at 4K.
        plane = frame.planes[0]
        rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: frame.height, : frame.width]
        return rows[::step, ::step].copy()
    w, h = max(1, frame.width // step), max(1, frame.height // step)
    return frame.reformat(width=w, height=h, format="gray").to_ndarray()


class _Reader:
    """Collects wanted frames and span thumbnails from decoded frames, by frame index."""

    def __init__(self, wanted: set[int], size: int | None, spans: Sequence[tuple[int, int]]):
        self.wanted, self.size, self.spans = wanted, size, sorted(spans)
        self.span = Span()

    def take(self, index: int, frame: av.VideoFrame) -> None:
        """Keep what is wanted of frame `index`."""
        span = self.span
        span.decoded += 1
        span.end = max(span.end, index + 1)
        rotation = _frame_rotation(frame)
        if not span.display_size[0]:
            span.display_size = (frame.height, frame.width) if rotation % 180 else (frame.width, frame.height)
        if index in self.wanted:
            span.frames[index] = _frame_to_square(frame, self.size, rotation)
        if any(a <= index <= b for a, b in self.spans):
            span.thumbs[index] = _luma_thumb(frame)

    def reset(self) -> None:
        """Forget everything (a seek went wrong: decode from the start instead)."""
        work, seeks = self.span.decoded, self.span.seeks
        self.span = Span(decoded=work, seeks=seeks)


def _decode_from_start(container, stream, reader: _Reader, last: int) -> None:
    """Decode in order from the first frame up to frame `last`; a damaged file keeps what came before the damage."""
    index = 0
    try:
        for frame in container.decode(stream):
            reader.take(index, frame)
            index += 1
            if index > last:
                break
    except av.FFmpegError as exc:
        if index == 0:
            raise VideoError("undecodable", f"cannot decode video ({exc})") from exc


def _decode_seeking(container, stream, reader: _Reader, index: FrameIndex, todo: list[int]) -> str:
    """Seek to the keyframe before each group of wanted frames and decode forward; '' or why it must start over.

    A group continues while the next wanted frame's keyframe is not ahead of where decoding
    stands (seeking would decode no less). Every decoded frame's timestamp must be the next one
    the index expects, or the index is wrong and the caller decodes from the start.
    """
    key_frames = [k for k, _ in index.keyframes]
    position = {p: i for i, p in enumerate(index.pts)}
    j = 0
    while j < len(todo):
        k = key_frames[bisect_right(key_frames, todo[j]) - 1] if key_frames[0] <= todo[j] else 0
        seek_ts = dict(index.keyframes).get(k, index.pts[0])
        try:
            container.seek(seek_ts, stream=stream, backward=True, any_frame=False)
        except av.FFmpegError as exc:
            return f"seek failed ({exc})"
        reader.span.seeks += 1
        expect = k
        try:
            for frame in container.decode(stream):
                i = position.get(frame.pts)
                if i is None:
                    return f"a decoded frame has a timestamp ({frame.pts}) no packet had"
                if i < expect:
                    reader.span.decoded += 1
                    continue  # decoded on the way to the keyframe (the seek landed earlier): not needed
                if i != expect:
                    return f"frame {expect} did not come out of the decoder after a seek (got {i})"
                reader.take(i, frame)
                expect += 1
                while j < len(todo) and todo[j] < expect:
                    j += 1
                if j == len(todo):
                    return ""
                ahead = bisect_right(key_frames, todo[j]) - 1
                if key_frames[ahead] > expect:
                    break  # a keyframe lies between here and the next wanted frame: seek to it
            else:
                return ""  # the end of the stream: the caller sees which frames are missing
        except av.FFmpegError as exc:
            if reader.span.decoded == 0:
                return f"cannot decode after a seek ({exc})"
            return ""  # a damaged tail: frames before it were kept
    return ""


def read_span(
    source: str | Path | bytes,
    indices: Iterable[int],
    size: int | None = None,
    spans: Sequence[tuple[int, int]] = (),
    threads: int = 1,
    index: FrameIndex | None = None,
    container=None,
) -> Span:
    """Decode the frames at `indices` (upright RGB, optionally resized + cropped to `size`), seeking first.

    `spans` are inclusive (first, last) frame ranges whose every frame also gives a luma thumbnail
    (scene-cut tests). `threads` is the decoder's thread count (0: FFmpeg's choice). `index` and an
    open `container` can be passed when the caller already has them (one open, one demux pass per file).
    A file that ends early returns fewer frames (``end`` says where it ended); a file broken from the
    start raises DataError.
    """
    wanted = {int(i) for i in indices}
    spans = [(int(a), int(b)) for a, b in spans]
    reader = _Reader(wanted, size, spans)
    if not wanted and not spans:
        return reader.span
    # Every frame of a span is needed (for its thumbnail), so decoding never seeks past one.
    todo = sorted(wanted.union(*(range(a, b + 1) for a, b in spans)))
    owned = container is None
    container = _open(source) if owned else container
    try:
        if index is None:
            index = index_frames(container)
        why = index.why or _decode_seeking(container, _decoder(container, threads), reader, index, todo)
    finally:
        if owned:
            container.close()
    if why:
        # Decode from the start in a fresh container: the demux pass (or a failed seek) left this one
        # elsewhere, and raw streams cannot seek back at all.
        reader.reset()
        with _open(source) as again:
            _decode_from_start(again, _decoder(again, threads), reader, todo[-1])
        reader.span.fallback = why
    return reader.span


def _decoder(container, threads: int):
    """The first video stream of a container, its decoder set to `threads` threads (0: FFmpeg's choice)."""
    stream = _video_stream(container)
    if threads != 1:
        stream.thread_type = "AUTO"
    stream.thread_count = threads
    return stream


def read_frames(
    source: str | Path | bytes, indices: Iterable[int], size: int | None = None, threads: int = 1
) -> tuple[dict[int, np.ndarray], int]:
    """Decode the frames at `indices` (upright RGB, optionally resized + cropped to `size`), seeking first.

    Returns ({index: frame}, frames known to exist: one past the last frame decoded). Decoding
    stops after the largest wanted index; a file that ends early simply returns fewer frames. A
    file that is broken from the start raises DataError. See :func:`read_span`.
    """
    span = read_span(source, indices, size, threads=threads)
    return span.frames, span.end


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 18, preset: str = "fast") -> bytes:
    """H.264 mp4 (libx264, yuv420p) bytes of uint8 `(T, H, W, 3)` frames; H and W must be even."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 (T, H, W, 3) frames, got {frames.dtype} {tuple(frames.shape)}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes, got {w}x{h}")
    buf = io.BytesIO()
    # mbtree off: x264's macroblock-tree rate control gave different bytes for the same small frames from one encode
    # to the next (19 distinct files in 60 encodes of one 64 px clip), so shard builds did not repeat.
    options = {"crf": str(crf), "preset": preset, "x264-params": "mbtree=0"}
    write_video(buf, frames, fps, codec="libx264", pix_fmt="yuv420p", options=options)
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
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            # Explicit timestamps: left unset, x264's macroblock-tree rate control sometimes saw
            # varying ones, and small clips then encoded to different bytes from run to run.
            video_frame.pts = i
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
