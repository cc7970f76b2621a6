"""Loader throughput: clips/s of decoding video shards through the real VideoDataModule.

Measures 0 (in-process), 1 and N DataLoader workers: one warm-up epoch (worker
start-up, shuffle-buffer fill), then the median clips/s of a few timed epochs
on the same persistent workers. Prints a table and writes the loader section
of benchmarks/README.md (between its markers), with the CPU, date, command, and
the CPU cores one GPU needs at the measured per-worker rate.

    python benchmarks/loader.py --shards "data/shards/camera-pans/train-*.tar"
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
from pathlib import Path

from dv.bench.device import cpu_name
from dv.bench.loader import measure

README = Path(__file__).with_name("README.md")
BEGIN, END = "<!-- loader:begin -->", "<!-- loader:end -->"
# Training-step consumption, per GPU (../shared/anchors-h100.md): plain DreamVideo step at batch 8
# with checkpointing, and dv's target.
ANCHORS = {"plain DreamVideo step (batch 8, H100)": 6.15, "dv target": 25.0}


def render(results: list[dict], args, command: str) -> str:
    """The README section: setting, table, and cores per GPU."""
    per_worker = next(r["clips_per_s"] for r in results if r["workers"] == 1)
    b, t, h, w, c = results[0]["shape"]
    lines = [
        BEGIN,
        "## Loader: clips/s decoding video shards",
        "",
        f"- device: {cpu_name()}",
        f"- date: {dt.date.today().isoformat()}; 1-minute load average {args.load[0]:.1f} before, "
        f"{args.load[1]:.1f} after (other processes share the cores: figures move with it)",
        f"- command: `{command}`",
        f"- clips: uint8 {t}×{h}×{w}×{c} (H.264 mp4 in webdataset shards), batch {b}, "
        f"{args.clips} clips per timed epoch, median of {args.repeats} epochs after a warm-up epoch",
        "",
        "| DataLoader workers | clips/s | epochs (clips/s) |",
        "|---|---|---|",
    ]
    for r in results:
        label = "0 (in-process)" if r["workers"] == 0 else str(r["workers"])
        lines.append(f"| {label} | {r['clips_per_s']:.1f} | {', '.join(f'{x:.1f}' for x in r['rates'])} |")
    lines += [
        "",
        f"One worker decodes {per_worker:.1f} clips/s. What a training step consumes, per GPU "
        "(shared/anchors-h100.md), and the CPU cores (one worker each) that feeds:",
        "",
        "| consumer | clips/s per GPU | cores per GPU at the measured rate |",
        "|---|---|---|",
    ]
    for name, rate in ANCHORS.items():
        lines.append(f"| {name} | {rate:g} | {rate / per_worker:.2f} |")
    lines += [
        "",
        "Workers stack each batch straight into shared memory (torch's `default_collate`); stacking it",
        "privately and letting the DataLoader copy it over halved the per-worker rate (about 25 clips/s",
        "on this machine). Workers beyond the machine's cores only contend: on a 2-core machine the main",
        "process and two workers share two cores. With a latent cache (DESIGN.md, step 3b) the loader",
        "reads latents instead of decoding video, and these figures stop being the bound.",
        END,
    ]
    return "\n".join(lines)


def write_readme(section: str) -> None:
    """Replace the loader section of benchmarks/README.md, or append it (creating the file if needed)."""
    text = README.read_text(encoding="utf-8") if README.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    README.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, update the README."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="data/shards/camera-pans/train-*.tar", help="shard pattern")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts to measure")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--clips", type=int, default=160, help="clips per timed epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frame-size", type=int, default=None, help="resize at load time (default: as stored)")
    parser.add_argument("--no-readme", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if 1 not in args.workers:
        parser.error("--workers must include 1 (the per-worker rate)")
    command = "python benchmarks/loader.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    results = []
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for workers in args.workers:
        r = measure(args.shards, workers, args.batch_size, args.clips, args.repeats, args.frame_size)
        print(
            f"workers={workers}: {r['clips_per_s']:.1f} clips/s (epochs {[round(x, 1) for x in r['rates']]}, "
            f"warm-up {r['warmup_s']:.1f}s, batch {r['shape']})",
            flush=True,
        )
        results.append(r)
    args.load = (load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))
    section = render(results, args, command)
    print("\n" + section)
    if not args.no_readme:
        write_readme(section)
        print(f"\nwrote the loader section of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
