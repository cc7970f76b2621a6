"""`dv claims`: sample trained models on the held-out photos and write the claims tables and figure.

    dv claims --model T2V=RECIPE,CKPT --model DreamVideo=RECIPE,CKPT \\
        --val-shards 'data/shards/camera-pans-claims/val-*.tar' --out runs/claims
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from dv.checkpoint import recipe_video_shape
from dv.claims.captions import probe_table
from dv.claims.experiment import ClaimsConfig, ClaimsRun
from dv.claims.inputs import held_out_clips, parse_model
from dv.claims.jobs import sample_all
from dv.claims.report import (
    CHANCE,
    ablation_table,
    accuracy,
    chained_table,
    comparison_table,
    confusion_table,
    figure,
    guidance_table,
)
from dv.errors import ConfigError
from dv.metrics.fvd import FVD


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `dv claims`."""
    parser.add_argument(
        "--model", action="append", required=True, help="NAME=RECIPE,CKPT (repeat; order = table order)"
    )
    parser.add_argument("--val-shards", required=True, help="held-out video shards (camera-pans val split)")
    parser.add_argument("--out", default="runs/claims")
    parser.add_argument("--figure", default=None, help="also write the figure here (e.g. docs/claims.png)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(ClaimsConfig.seeds))
    parser.add_argument("--steps", type=int, default=ClaimsConfig.steps)
    parser.add_argument("--i3d", default=None, help="i3d_torchscript.pt for FVD (left out: FVD is not measured)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes that share the sampling (each gets threads / jobs CPU threads)"
    )
    parser.add_argument("--quick", action="store_true", help="one guidance setting per model, one chain pair (tests)")


def fvd_lines(run: ClaimsRun, i3d: str | None, real: list[np.ndarray], main: tuple[float, float]) -> list[str]:
    """FVD of each model's main setting against the held-out clips, or why it is not measured."""
    if i3d is None:
        return ["FVD: not measured — no I3D detector file was given (`--i3d PATH` to i3d_torchscript.pt)."]
    lines = []
    real_videos = torch.from_numpy(np.stack(real))
    for (model, mode, s_text, s_image), frames in run.batches.items():
        if mode == "ti2v" and (s_text, s_image) != main:
            continue
        metric = FVD(i3d, num_frames=frames.shape[1])
        metric.update(real_videos, real=True)
        metric.update(torch.from_numpy(frames), real=False)
        lines.append(
            f"FVD ({model}, {mode}, {frames.shape[1]} frames, I3D {metric.detector_id.sha256[:12]}): "
            f"{float(metric.compute()):.1f}"
        )
    return lines


def report(run: ClaimsRun, args, command: str, seconds: float, fvd: list[str], captions: str) -> str:
    """The results page (markdown)."""
    c = run.config
    main = (c.s_text, c.s_image)
    image_models = list(dict.fromkeys(r["model"] for r in run.rows if r["mode"] == "ti2v"))
    truth = [r for r in run.rows if r["model"] == "ground truth"]
    parts = [
        "# What dv reproduces: the claims experiment",
        f"Held-out photos: {', '.join(c.photos)}; six motion captions each; seeds {list(c.seeds)}; "
        f"{c.steps} DDIM steps; {c.num_frames} frames at {c.frame_size}×{c.frame_size}; main scales s_t = {c.s_text:g}, "
        f"s_i = {c.s_image:g}. Every figure is mean ± std over the seeds (sample std). "
        f"Chance motion accuracy is {CHANCE:.2f}. The motion estimator recovers {accuracy(truth):.2f} of the "
        f"{len(truth)} real held-out clips' motions."
        if truth
        else "",
        "## Fidelity and text control of motion",
        comparison_table(run.rows, main),
        "## Does the model read the motion caption? (training loss per caption, no sampling)",
        captions,
    ]
    for model in image_models:
        parts += [
            f"## Condition ablation ({model})",
            ablation_table(run.rows, model, main),
            f"## Guidance scales ({model}, text + image)",
            guidance_table(run.rows, model),
            f"## Confusion matrix ({model}, text + image, s_t = {c.s_text:g}, s_i = {c.s_image:g})",
            confusion_table(
                [
                    r
                    for r in run.rows
                    if r["model"] == model and r["mode"] == "ti2v" and (r["s_text"], r["s_image"]) == main
                ]
            ),
        ]
    for model in dict.fromkeys(r["model"] for r in run.rows if r["mode"] == "t2v" and r["model"] not in image_models):
        parts += [
            f"## Confusion matrix ({model}, text only)",
            confusion_table([r for r in run.rows if r["model"] == model and r["mode"] == "t2v"]),
        ]
    if any(r["mode"].startswith("chained") for r in run.rows):
        parts += ["## Chained two-stage inference", chained_table(run.rows)]
    parts += ["## FVD", "\n".join(fvd), "## Command", f"`{command}` ({seconds / 60:.1f} min)"]
    return "\n\n".join(p for p in parts if p) + "\n"


def run(args: argparse.Namespace) -> None:
    """Run the experiment the parsed flags ask for and write results.md, rows.json and the figure."""
    started = time.time()
    command = args.command_line
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, not {args.jobs}")
    models = [parse_model(m) for m in args.model]
    frames, size = recipe_video_shape(models[0][1])
    config = ClaimsConfig(seeds=tuple(args.seeds), steps=args.steps, num_frames=frames, frame_size=size)
    if args.quick:
        config.grid_s_text, config.grid_s_image = (config.s_text,), (config.s_image,)
        config.chain_pairs = config.chain_pairs[:1]
    real = held_out_clips(args.val_shards, frames, size)
    run, caption_rows = sample_all(models, config, args.jobs, real)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fvd = fvd_lines(run, args.i3d, [f for f, _, _ in real], (config.s_text, config.s_image))
    text = report(run, args, command, time.time() - started, fvd, probe_table(caption_rows, len(real)))
    (out / "results.md").write_text(text)
    (out / "rows.json").write_text(json.dumps(run.rows, indent=1))
    for path in [out / "claims.png"] + ([Path(args.figure)] if args.figure else []):
        figure(run.videos, run.references, config.figure_photo, path)
    print(text)
    print(f"wrote {out / 'results.md'}, {out / 'rows.json'}, {out / 'claims.png'}")
