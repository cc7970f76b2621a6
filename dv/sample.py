"""`dv sample`: a video from a trained checkpoint, a reference image and prompts (one prompt per chained stage).

    dv sample --ckpt runs/demo/latest/checkpoints/last.ckpt --image photo.png --prompt "the camera pans left"

The flags and the work are dv.render's, which `dv app` runs for each request too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dv import render


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `dv sample`."""
    render.add_arguments(parser)


def run(args: argparse.Namespace) -> list[Path]:
    """Sample the video the parsed flags ask for and write it; returns the written paths."""
    return render.render(args)
