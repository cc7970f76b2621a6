"""Does a model read the motion caption? Its training loss on held-out clips under each motion's caption.

A model that learned text control of motion predicts a held-out clip best when the caption names the clip's own
motion. This asks that directly, with one denoiser call per (caption, timestep) over all clips and no sampling:
where the clip's own caption is no better than the others, sampled videos cannot follow the caption either.
Same noise and timestep for every caption, so the losses differ only through the caption.

    dv probe-captions --val-shards 'data/shards/camera-pans-claims/val-*.tar' --model NAME=RECIPE,CKPT ...
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from dv.checkpoint import load_trained, recipe_video_shape
from dv.claims.inputs import held_out_clips, parse_model, per_move
from dv.claims.motion import MOTIONS
from dv.data.camera_pans import caption_for
from dv.diffusion.loss import TrainInputs, denoising_loss
from dv.models.conditions import video_to_model

TIMESTEPS = (200, 500, 800, 950)
"""Where the caption is probed: low, middle, high and nearly pure noise (sampling's first DDIM step, t = 901 at
10 steps, is where a video's layout and motion are decided)."""


def top1_rate(losses: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of clips (rows of `losses`, clips × captions) whose own caption `truth[i]` has the lowest loss.

    Tied lowest losses share the credit (a model that ignores the caption scores 1 / captions, chance).
    """
    lowest = losses == losses.min(axis=1, keepdims=True)
    return float(np.mean(lowest[np.arange(len(truth)), truth] / lowest.sum(axis=1)))


def clips_video(module, clips: list[tuple[np.ndarray, str, str]]) -> torch.Tensor:
    """The clips' frames as one model-range video batch on the module's device."""
    return video_to_model(torch.from_numpy(np.stack([f for f, _, _ in clips])).to(module.device))


@torch.no_grad()
def motion_conditions(module, clips: list[tuple[np.ndarray, str, str]]) -> list:
    """For each of MOTIONS, the module's conditions (text, image) with every clip captioned with that motion."""
    video = clips_video(module, clips)
    return [
        module.batch_conditions(
            {"caption": [caption_for(photo, motion) for _, photo, _ in clips]}, video, drop=False, generator=None
        )
        for motion in MOTIONS
    ]


@torch.no_grad()
def caption_losses(
    module, clips: list[tuple[np.ndarray, str, str]], t: int, seed: int = 0, conditions: list | None = None
) -> np.ndarray:
    """Per-clip loss (clips × MOTIONS) of the module's prediction at timestep t under each motion's caption.

    `clips` are (uint8 frames (T, H, W, 3), photo, motion) as `held_out_clips` gives them; the loss is the
    module's training loss (MSE against its prediction target), with the same latent draw and noise for every caption.
    `conditions` are `motion_conditions(module, clips)`, computed here when not given (they do not depend on t).
    """
    conditions = conditions if conditions is not None else motion_conditions(module, clips)
    generator = torch.Generator(device=module.device).manual_seed(seed)
    latents = module.encode_video(clips_video(module, clips), generator=generator)
    noise = torch.randn(latents.shape, generator=generator, device=generator.device, dtype=latents.dtype)
    timesteps = torch.full((len(clips),), t, device=module.device)
    losses = np.zeros((len(clips), len(MOTIONS)))
    for j, (text, image) in enumerate(conditions):
        inputs = TrainInputs(latents, text, image)
        losses[:, j] = denoising_loss(module.denoiser, module.noise_scheduler, inputs, timesteps, noise).cpu().numpy()
    return losses


def probe(module, clips: list[tuple[np.ndarray, str, str]], timesteps=TIMESTEPS, seed: int = 0) -> list[dict]:
    """One row per timestep: the own caption's mean loss, the mean over all captions, and the top-1 rate."""
    truth = np.array([MOTIONS.index(motion) for _, _, motion in clips])
    conditions = motion_conditions(module, clips)  # once: the captions' text and the clips' images do not depend on t
    rows = []
    for t in timesteps:
        losses = caption_losses(module, clips, t, seed, conditions)
        rows.append(
            dict(
                t=t,
                own_loss=float(losses[np.arange(len(clips)), truth].mean()),
                mean_loss=float(losses.mean()),
                top1=top1_rate(losses, truth),
            )
        )
    return rows


def probe_table(results: dict[str, list[dict]], clips: int) -> str:
    """Markdown: per model and timestep, the top-1 rate (chance 1/6) and the own caption's loss against the mean."""
    lines = [
        f"Loss on {clips} held-out clips under each of the six motion captions, same noise and timestep; "
        f"top-1 = share of clips whose own caption gives the lowest loss (chance {1 / len(MOTIONS):.2f}).",
        "",
        "| model | t | top-1 | own caption's loss | mean over captions | own / mean − 1 |",
        "|---|---|---|---|---|---|",
    ]
    for model, rows in results.items():
        for r in rows:
            lines.append(
                f"| {model} | {r['t']} | {r['top1']:.2f} | {r['own_loss']:.5f} | {r['mean_loss']:.5f} | "
                f"{r['own_loss'] / r['mean_loss'] - 1:+.2%} |"
            )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `dv probe-captions`."""
    parser.add_argument("--model", action="append", required=True, help="NAME=RECIPE,CKPT (repeat)")
    parser.add_argument("--val-shards", required=True, help="held-out video shards (camera-pans val split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timesteps", type=int, nargs="+", default=list(TIMESTEPS), help="training timesteps to probe at"
    )
    parser.add_argument(
        "--clips-per-move",
        type=int,
        default=None,
        help="probe only the first N clips of each photo and move (default: every clip; the 384 clips of the tiny"
        " val split take the 2-core machine over half an hour per model)",
    )


def run(args: argparse.Namespace) -> None:
    """Probe every model the parsed flags name and print the table."""
    models = [parse_model(m) for m in args.model]
    frames, size = recipe_video_shape(models[0][1])
    clips = held_out_clips(args.val_shards, frames, size)
    if args.clips_per_move is not None:
        clips = per_move(clips, args.clips_per_move)
    results = {
        name: probe(load_trained(recipe, ckpt), clips, args.timesteps, seed=args.seed) for name, recipe, ckpt in models
    }
    print(probe_table(results, len(clips)))


if __name__ == "__main__":
    from dv.cli import run_old_form  # only the old command form needs the CLI (the CLI imports this module)

    sys.exit(run_old_form("python -m dv.claims.captions"))
