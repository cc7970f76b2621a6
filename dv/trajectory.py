"""`dv trajectory`: where along the DDIM trajectory a trained model loses held-out clips (dv.diffusion.trajectory).

dv trajectory --ckpt runs/demo-t2v/latest/checkpoints/last.ckpt --shards 'data/shards/camera-pans/val-*.tar'
"""

from __future__ import annotations

import argparse

from dv.checkpoint import load_trained, trained_recipe
from dv.diffusion.trajectory import first_clips, format_table, trajectory_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `dv trajectory`."""
    parser.add_argument(
        "--recipe", default=None, help="the recipe the checkpoint was trained with (default: the one a .ckpt carries)"
    )
    parser.add_argument("--ckpt", required=True, help="a dv checkpoint (.ckpt) or export (.safetensors)")
    parser.add_argument("--shards", required=True, help="held-out video shards")
    parser.add_argument("--clips", type=int, default=8, help="how many clips of the shards")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps over the whole schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ema", action="store_true", help="the raw trained weights even when an EMA was kept")


def run(args: argparse.Namespace) -> None:
    """Noise the first clips of the shards to each start, sample back, and print the table."""
    recipe = trained_recipe(args.recipe, args.ckpt)  # parsed once: the clip shape and the model come from it
    frames, size = recipe.video_shape()
    video, captions = first_clips(args.shards, frames, size, args.clips)
    module = load_trained(recipe, args.ckpt, use_ema=not args.no_ema)
    rows = trajectory_table(module, video, captions, steps=args.steps, seed=args.seed)
    print(format_table(rows, len(captions), args.steps))
