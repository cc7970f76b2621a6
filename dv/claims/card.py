"""`dv card`: the figures of a model card, for one model in one setting, in a minute or two.

Samples the held-out camera-pans photos under all six motion captions and prints motion accuracy, first-frame
fidelity, how far the samples move per frame against the held-out clips (a still sample scores chance accuracy
too: this tells it from one that moves the wrong way), and the samples' pixel-to-pixel energy against the real
held-out clips' (1 = as much fine detail as the clips; noise left in a sample raises it), with the confusion matrix.
`--steps 1` scores the first sampling step's prediction of the clean video: where the motion must be decided.
The full experiment is `dv claims`.

    dv card --recipe pretrained/tiny-dreamvideo/config.yaml \\
        --ckpt pretrained/tiny-dreamvideo/model.safetensors --mode ti2v --val-shards 'data/shards/camera-pans-64/val-*.tar'
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from einops import rearrange

from dv.checkpoint import load_trained, recipe_video_shape
from dv.claims.experiment import ClaimsConfig, ClaimsRun
from dv.claims.inputs import held_out_clips, per_move
from dv.claims.motion import estimate_motion
from dv.claims.report import CHANCE, accuracy, confusion_table
from dv.data.camera_pans import PHOTOS, VAL_PHOTOS
from dv.diffusion.pipeline import BRANCH_MODES
from dv.diffusion.trajectory import pixel_energy

MODES = ("t2v", *BRANCH_MODES)
"""The card's modes: dv.diffusion.pipeline's, less zero_shot (the claims experiment measures that one)."""


def energy(frames: np.ndarray) -> float:
    """Pixel-to-pixel energy of uint8 videos (B, T, H, W, 3)."""
    return pixel_energy(rearrange(torch.from_numpy(frames).float(), "b t h w c -> b c t h w"))


def clips_motion_size(clips: list[tuple[np.ndarray, str, str]]) -> float:
    """Mean motion size (pixels per frame) of the first held-out clip of each (photo, motion): the real clips' 1x."""
    return float(np.mean([estimate_motion(frames).size for frames, _, _ in per_move(clips, 1)]))


def card_figures(module, config: ClaimsConfig, mode: str, s_text: float, s_image: float, real: np.ndarray) -> dict:
    """Sample one setting on the held-out photos and score it: a dict of the card's figures and its rows."""
    run = ClaimsRun(config, progress=False)
    run.run_setting("model", module, mode, s_text, s_image)
    frames = run.batches[("model", mode, s_text, s_image)]
    return dict(
        accuracy=accuracy(run.rows),
        fff_ssim=float(np.mean([r["ssim"] for r in run.rows])),
        psnr=float(np.mean([r["psnr"] for r in run.rows if np.isfinite(r["psnr"])])),
        energy_ratio=energy(frames) / energy(real),
        motion_size=float(np.mean([r["motion_size"] for r in run.rows])),
        rows=run.rows,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `dv card`."""
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--ckpt", required=True, help="a training checkpoint or a dv export")
    parser.add_argument("--val-shards", required=True, help="held-out camera-pans clips (their pixel energy is the 1x)")
    parser.add_argument("--mode", choices=MODES, default="ti2v")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--s-text", type=float, default=3.0)
    parser.add_argument("--s-image", type=float, default=2.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--photos",
        nargs="+",
        choices=PHOTOS,
        default=list(VAL_PHOTOS),
        help="the camera-pans photos to animate (default: the four held-out ones; a training photo shows what the"
        " model fitted)",
    )


def run(args: argparse.Namespace) -> None:
    """Sample the card's setting and print its figures."""
    started = time.time()
    frames, size = recipe_video_shape(args.recipe)
    clips = held_out_clips(args.val_shards, frames, size)
    real = np.stack([clip for clip, _, _ in clips])
    module = load_trained(args.recipe, args.ckpt)
    config = ClaimsConfig(
        seeds=tuple(args.seeds), steps=args.steps, num_frames=frames, frame_size=size, photos=tuple(args.photos)
    )
    s_image = args.s_image if args.mode != "t2v" else 1.0
    s_text = args.s_text if args.mode != "i2v" else 1.0
    figures = card_figures(module, config, args.mode, s_text, s_image, real)
    rows = figures["rows"]
    print(
        f"{args.mode}, {args.steps} DDIM steps, s_t = {s_text}, s_i = {s_image}, seeds {args.seeds}: "
        f"{len(rows)} videos of {len(config.photos)} photos ({', '.join(config.photos)}) x 6 captions "
        f"({time.time() - started:.0f} s)"
    )
    print(f"motion accuracy {figures['accuracy']:.2f} (chance {CHANCE:.2f})")
    print(
        f"motion size {figures['motion_size']:.2f} px/frame (the held-out clips' {clips_motion_size(clips):.2f}; "
        "a still video is near 0)"
    )
    if args.mode != "t2v":
        print(f"FFF_SSIM {figures['fff_ssim']:.3f}, first-frame PSNR {figures['psnr']:.2f} dB")
    print(f"pixel energy {figures['energy_ratio']:.2f}x the held-out clips'")
    print(confusion_table(rows))


if __name__ == "__main__":
    from dv.cli import run_old_form  # only the old command form needs the CLI (the CLI imports this module)

    sys.exit(run_old_form("python -m dv.claims.card"))
