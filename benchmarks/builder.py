"""Shard builder cost per video against a hand-written seek-first PyAV floor, before and after, side by side.

    python benchmarks/builder.py [--before DIR] [--seconds 20] [--out-json FILE]

Makes H.264 sources (Main profile, 3 B-frames, a fixed keyframe interval, a frame counter burnt
in) at 1080p and 4K, then times one source per run, each in a fresh process, in CPU-seconds
(user + system, all threads: x264 encodes with its own threads):

- ``dv``: ``data_prep.writer.process_record`` (probe, decode, scores, encode one 16x256 clip at stride 4
  from the middle) of this checkout;
- ``dv before``: the same of another checkout (``--before``, e.g. ``git worktree add /tmp/before 76dae15``);
- ``floor``: the least a builder must do, written by hand with PyAV: seek to the keyframe before the
  clip, decode the span with one thread, convert the 16 wanted frames, encode them with dv's encoder
  settings.

Also reported: peak RSS of a process that builds one 4K source (what a pool worker holds), the share
of the scores in dv's time, and Pexels-300K core-hours at these rates.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"1080p": (1920, 1080), "4K": (3840, 2160)}
FPS = 30

_WORKER = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
mode, path = sys.argv[2], sys.argv[3]
from data_prep.writer import BuildConfig, Record, process_record
cfg = BuildConfig(out_dir="unused", source="bench")
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.process_time()
samples, reason = process_record(Record("v", path, "a clip"), "train", cfg)
cpu = time.process_time() - t0
assert not reason and len(samples) == 1, reason
print(json.dumps({"cpu_s": cpu, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_mb": rss0 / 1024, "torch": "torch" in sys.modules}))
"""


def make_source(path: Path, size: str, keyint: int, seconds: float, grain: bool = True) -> Path:
    """A panning photo with camera-like grain and a frame counter, H.264 Main with B-frames, keyframes exactly
    every `keyint` (the grain brings the bit rate near a stock video's: a clean pan codes to a fraction of it)."""
    import av
    import skimage.data
    from skimage.transform import resize

    if path.exists():
        return path
    w, h = SIZES[size]
    frames = int(seconds * FPS)
    photo = resize(skimage.data.astronaut(), (h, h), preserve_range=True).astype(np.uint8)
    canvas = np.concatenate([photo, photo[:, ::-1], photo, photo[:, ::-1]], axis=1)  # room to pan across
    rng = np.random.default_rng(0)
    noise = [rng.integers(-6, 7, (h, w, 1), dtype=np.int16) if grain else np.int16(0) for _ in range(4)]
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {
            "preset": "veryfast",
            "profile": "main",
            "bf": "3",
            "g": str(keyint),
            "keyint_min": str(keyint),
            "sc_threshold": "0",
            "crf": "23",
        }
        for i in range(frames):
            x = (i * 3) % (canvas.shape[1] - w)
            frame = np.clip(canvas[:, x : x + w] + noise[i % 4], 0, 255).astype(np.uint8)
            for bit in range(10):  # the frame number in 10 blocks along the top (white = 1)
                frame[: h // 20, bit * w // 10 : (bit + 1) * w // 10 - 8] = 255 if i >> bit & 1 else 0
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = i
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.rename(path)
    return path


def floor(path: str) -> float:
    """CPU-seconds of the hand-written seek-first pipeline on one source (this process)."""
    import av

    t0 = time.process_time()
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        n, rate = stream.frames, stream.average_rate
        span = 15 * 4 + 1
        start = (n - span) // 2
        wanted = {start + 4 * i for i in range(16)}
        # Constant frame rate: frame i shows at i / rate (this pipeline need not handle anything else).
        to_pts = lambda i: int(Fraction(i) / rate / stream.time_base)  # noqa: E731
        container.seek(to_pts(start), stream=stream, backward=True)
        want_pts = {to_pts(i) for i in wanted}
        out = []
        for frame in container.decode(stream):
            if frame.pts in want_pts:
                w = round(frame.width * 256 / frame.height)
                rgb = frame.reformat(width=w, height=256, format="rgb24", interpolation="AREA").to_ndarray()
                out.append(rgb[:, (w - 256) // 2 : (w - 256) // 2 + 256])
            if frame.pts >= max(want_pts):
                break
    assert len(out) == 16, len(out)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as enc:
        s = enc.add_stream("libx264", rate=Fraction(FPS, 4))
        s.width = s.height = 256
        s.pix_fmt = "yuv420p"
        s.options = {"crf": "18", "preset": "fast"}
        for i, rgb in enumerate(out):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            vf.pts = i
            for p in s.encode(vf):
                enc.mux(p)
        for p in s.encode():
            enc.mux(p)
    return time.process_time() - t0


def run_dv(code: Path, path: Path) -> dict:
    """One process_record of checkout `code` on `path`, in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(code)}
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, str(code), "dv", str(path)],
        env=env,
        cwd=code,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def score_cpu(path: Path) -> float:
    """CPU-seconds dv spends on scores for one source: span thumbnails, motion and the cut test."""
    # dv is imported here, from this checkout, because the rest of the script times checkouts in fresh processes.
    sys.path.insert(0, str(ROOT))
    from dv.data import video
    from dv.data.scores import motion_score, scene_cut

    n = video.count_frames(path)
    (clip,) = video.sample_clip_indices(n, 16, 4)
    spent = [0.0]
    thumb = video._luma_thumb

    def timed(frame):
        t = time.process_time()
        out = thumb(frame)
        spent[0] += time.process_time() - t
        return out

    video._luma_thumb = timed
    try:
        span = video.read_span(path, clip, 256, spans=[(clip[0], clip[-1])])
    finally:
        video._luma_thumb = thumb
    t0 = time.process_time()
    motion_score(np.stack([span.frames[i] for i in clip]))
    scene_cut([span.thumbs[i] for i in range(clip[0], clip[-1] + 1)])
    return spent[0] + time.process_time() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, default=None, help="a checkout of the builder to compare with")
    parser.add_argument("--seconds", type=float, default=20.0, help="source length (default 20)")
    parser.add_argument("--sizes", nargs="+", default=["1080p", "4K"], choices=sorted(SIZES))
    parser.add_argument("--keyints", nargs="+", type=int, default=[60, 250])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no-grain", action="store_true", help="sources without grain (quicker to make, lower bit rate)"
    )
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/dv-bench-builder"))
    parser.add_argument("--out-json", type=Path, default=None)
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    rows, results = [], {}
    for size in args.sizes:
        for keyint in args.keyints:
            name = f"{size}, keyframe every {keyint}"
            suffix = "" if args.no_grain else "-grain"
            src = make_source(
                args.work_dir / f"{size}-k{keyint}-{args.seconds:g}s{suffix}.mp4",
                size,
                keyint,
                args.seconds,
                grain=not args.no_grain,
            )
            r: dict = {"floor": [], "dv": [], "before": []}
            for _ in range(args.repeats):  # interleaved, so a load change on the machine hits every column alike
                r["floor"].append(floor(str(src)))
                r["dv"].append(run_dv(ROOT, src))
                if args.before:
                    r["before"].append(run_dv(args.before, src))
            med = {k: statistics.median(x["cpu_s"] if isinstance(x, dict) else x for x in v) for k, v in r.items() if v}
            rss = {k: max(x["rss_mb"] for x in v) for k, v in r.items() if v and isinstance(v[0], dict)}
            torch = {k: v[0]["torch"] for k, v in r.items() if v and isinstance(v[0], dict)}
            share = statistics.median(score_cpu(src) for _ in range(3)) / med["dv"]
            results[name] = {
                "cpu_s": med,
                "peak_rss_mb": rss,
                "imports_torch": torch,
                "score_share": share,
                "runs": r,
                "source_mb": src.stat().st_size / 2**20,
            }
            rows.append((name, med, rss, share))
            print(f"{name}: {json.dumps(results[name]['cpu_s'])} rss {json.dumps(rss)} scores {share:.1%}", flush=True)
    print(
        "\n| source | floor (CPU-s) | dv before | dv now | before / floor | now / floor | scores' share of now | peak RSS before / now (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, med, rss, share in rows:
        before = med.get("before")
        print(
            f"| {name} | {med['floor']:.2f} | {before:.2f} | {med['dv']:.2f} | {before / med['floor']:.1f}× | "
            f"{med['dv'] / med['floor']:.2f}× | {share:.1%} | {rss.get('before', 0):.0f} / {rss['dv']:.0f} |"
            if before
            else f"| {name} | {med['floor']:.2f} | - | {med['dv']:.2f} | - | {med['dv'] / med['floor']:.2f}× | {share:.1%} | - / {rss['dv']:.0f} |"
        )
    if args.out_json:
        args.out_json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
