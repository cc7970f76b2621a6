"""One sampling request rendered to files: a video from a trained checkpoint, a reference image and prompts (one
prompt per chained stage). The engine of `dv sample` (dv/sample.py) and of every `dv app` request, with its flags:
the app parses the `dv sample` command line it shows with them, so the command reproduces the page's video."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dv.checkpoint import load_trained, trained_recipe
from dv.data.images import image_to_model, load_image
from dv.data.video import encode_mp4
from dv.diffusion.pipeline import generate, mode_of
from dv.diffusion.sampling import SamplerConfig
from dv.errors import ConfigError
from dv.models.conditions import video_from_model
from dv.recipe import Recipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a sampling request (`dv sample`'s)."""
    parser.add_argument(
        "--recipe", default=None, help="the recipe the checkpoint was trained with (default: the one a .ckpt carries)"
    )
    parser.add_argument(
        "--ckpt", required=True, help="a dv training checkpoint (.ckpt) or a `dv export` (.safetensors)"
    )
    parser.add_argument("--image", help="reference image (PNG/JPEG/WebP...); without it: text-to-video")
    parser.add_argument(
        "--prompt", action="append", help="caption; repeat for chained stages; without it: image-to-video"
    )
    parser.add_argument("--stages", type=int, default=None, help="chained stages (default: one per --prompt, or 1)")
    parser.add_argument("--guidance-text", type=float, default=SamplerConfig.s_text, help="s_t of Eq. 5")
    parser.add_argument("--guidance-image", type=float, default=SamplerConfig.s_image, help="s_i of Eq. 5")
    parser.add_argument("--steps", type=int, default=SamplerConfig.steps, help="DDIM steps")
    parser.add_argument("--eta", type=float, default=SamplerConfig.eta, help="DDIM eta")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=None, help="frames per stage (default: the recipe's)")
    parser.add_argument("--size", type=int, default=None, help="frame size (default: the recipe's)")
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate of the written video")
    parser.add_argument("--out", default="out.mp4", help="the H.264 mp4 to write")
    parser.add_argument("--gif", action="store_true", help="also write a GIF beside the mp4")
    parser.add_argument("--strip", action="store_true", help="also write a PNG strip of the frames")
    parser.add_argument(
        "--zero-shot",
        action="store_true",
        help="TI2V-Zero: condition the frozen T2V backbone on the image without the retention branch",
    )
    parser.add_argument("--resample-steps", type=int, default=2, help="TI2V-Zero resampling steps per DDIM step")
    parser.add_argument("--no-ema", action="store_true", help="use the raw trained weights even when an EMA was kept")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def check_prompts(prompts: list[str] | None) -> list[str] | None:
    """Prompts must hold text; None means no text condition."""
    if prompts is None:
        return None
    for p in prompts:
        if not p.strip():
            raise ConfigError("a --prompt is empty; give text, or leave --prompt out for image-to-video")
    return prompts


def write_outputs(frames: np.ndarray, out: str, fps: float, gif: bool, strip: bool) -> list[Path]:
    """Write uint8 (T, H, W, 3) frames as mp4 (and GIF, PNG strip); returns the paths written."""
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    written = [out_path]
    tmp = out_path.with_name(out_path.name + ".part")
    tmp.write_bytes(encode_mp4(frames, fps))
    tmp.replace(out_path)
    if gif:
        path = out_path.with_suffix(".gif")
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
        written.append(path)
    if strip:
        path = out_path.with_suffix(".png")
        Image.fromarray(np.concatenate(list(frames), axis=1)).save(path)
        written.append(path)
    return written


def render(
    args: argparse.Namespace,
    module=None,
    callback: Callable[[int, int], None] | None = None,
    recipe: Recipe | None = None,
) -> list[Path]:
    """Sample one (possibly chained) video and write it; returns the written paths.

    `module` is the model already loaded from args.recipe/args.ckpt and `recipe` that recipe parsed (`dv app` loads
    both once), else they are loaded here; `callback(step, steps)` is called after every denoising step of every
    stage (not with --zero-shot).
    """
    prompts = check_prompts(args.prompt)
    if recipe is None and (module is None or not (args.frames and args.size)):
        recipe = trained_recipe(args.recipe, args.ckpt)  # parsed once: the shape and the model come from it
    # The recipe's `sampling:` section (e.g. compile: true) sets how the denoiser runs; the flags set the rest.
    config = SamplerConfig(
        steps=args.steps,
        eta=args.eta,
        s_text=args.guidance_text,
        s_image=args.guidance_image,
        **(recipe.sampling_settings() if recipe is not None else {}),
    )
    config.validate()
    frames, size = (args.frames, args.size) if args.frames and args.size else recipe.video_shape()
    frames, size = args.frames or frames, args.size or size
    if frames < 2 or size < 8:
        raise ConfigError(f"--frames must be >= 2 and --size >= 8, not {frames} and {size}")
    image = None
    if args.image is not None:
        image = image_to_model(load_image(args.image, size))  # before loading the model: a bad image fails fast
    stages = args.stages or (len(prompts) if prompts else 1)
    if prompts and len(prompts) not in (1, stages):
        raise ConfigError(f"{len(prompts)} prompts for {stages} stages: give one prompt, or one per stage")
    stage_prompts = [None] * stages if prompts is None else (prompts * stages if len(prompts) == 1 else prompts)
    if args.zero_shot and (image is None or prompts is None or stages != 1):
        raise ConfigError("--zero-shot needs --image and one --prompt (single stage)")
    mode = mode_of(text=prompts is not None, image=image is not None, zero_shot=args.zero_shot)
    if module is None:
        module = load_trained(recipe, args.ckpt, use_ema=not args.no_ema, device=args.device)
    captions = [[p] if p is not None else None for p in stage_prompts]
    if image is not None:
        image = image.to(args.device)
    video = generate(
        module,
        mode,
        captions[0],
        image,
        config,
        [args.seed],
        frames=frames,
        size=size,
        next_captions=captions[1:],
        resample_steps=args.resample_steps,
        progress=True,
        callback=callback,
    )
    written = write_outputs(video_from_model(video)[0].numpy(), args.out, args.fps, args.gif, args.strip)
    for path in written:
        print(f"wrote {path}")
    return written
