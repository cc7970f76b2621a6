"""`dv sample`: a video from a trained checkpoint, a reference image and prompts (one prompt per chained stage)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from dv.data.images import load_image
from dv.data.video import encode_mp4
from dv.diffusion.pipeline import VideoSampler
from dv.diffusion.sampling import SamplerConfig, recipe_sampling
from dv.errors import ConfigError, WeightsError
from dv.models.conditions import video_from_model
from dv.recipe import build_model, load_recipe, restore_trained_weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `dv sample`."""
    parser.add_argument("--recipe", required=True, help="the recipe the checkpoint was trained with")
    parser.add_argument("--ckpt", required=True, help="a dv training checkpoint (.ckpt) or a `dv export` (.safetensors)")
    parser.add_argument("--image", help="reference image (PNG/JPEG/WebP...); without it: text-to-video")
    parser.add_argument("--prompt", action="append", help="caption; repeat for chained stages; without it: image-to-video")
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
    parser.add_argument("--zero-shot", action="store_true",
                        help="TI2V-Zero: condition the frozen T2V backbone on the image without the retention branch")
    parser.add_argument("--resample-steps", type=int, default=2, help="TI2V-Zero resampling steps per DDIM step")
    parser.add_argument("--no-ema", action="store_true", help="use the raw trained weights even when an EMA was kept")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def recipe_video_shape(recipe_path: str) -> tuple[int, int]:
    """(frames, size) the recipe trains on: the data module's num_frames/frame_size, else 16 and 256."""
    data = load_recipe(recipe_path).get("data", {}).get("init_args", {}) or {}
    return int(data.get("num_frames") or 16), int(data.get("frame_size") or 256)


def load_trained(recipe: str, ckpt: str, use_ema: bool = True, device: str = "cpu"):
    """The recipe's module with the checkpoint's (or export's) trained weights, in eval mode on `device`."""
    module = build_model(recipe)
    module.configure_model()
    if ckpt.endswith(".safetensors"):
        from dv.models.pretrained import load_dv_weights

        load_dv_weights(ckpt, module.backbone.unet, part="unet")
        if module.branch is not None:
            load_dv_weights(ckpt, module.branch, part="branch")
    elif Path(ckpt).suffix in (".ckpt", ".pt", ".pth"):
        restore_trained_weights(module, ckpt, use_ema=use_ema)
    else:
        raise WeightsError(f"{ckpt!r} is neither a dv checkpoint (.ckpt) nor a dv export (.safetensors)")
    return module.to(device).eval()


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


def run(args: argparse.Namespace, module=None, callback: Callable[[int, int], None] | None = None) -> list[Path]:
    """Sample one (possibly chained) video and write it; returns the written paths.

    `module` is the model already loaded from args.recipe/args.ckpt (`dv app` loads it once), else it is loaded here;
    `callback(step, steps)` is called after every denoising step of every stage (not with --zero-shot).
    """
    # The recipe's `sampling:` section (e.g. compile: true) sets how the denoiser runs; the flags set the rest.
    config = SamplerConfig(steps=args.steps, eta=args.eta, s_text=args.guidance_text, s_image=args.guidance_image,
                           **recipe_sampling(load_recipe(args.recipe)))
    config.validate()
    prompts = check_prompts(args.prompt)
    frames, size = recipe_video_shape(args.recipe)
    frames, size = args.frames or frames, args.size or size
    if frames < 2 or size < 8:
        raise ConfigError(f"--frames must be >= 2 and --size >= 8, not {frames} and {size}")
    image = None
    if args.image is not None:
        pixels = load_image(args.image, size)  # before loading the model: a bad image fails fast
        image = pixels.permute(2, 0, 1)[None].float().div(127.5).sub(1)
    stages = args.stages or (len(prompts) if prompts else 1)
    if prompts and len(prompts) not in (1, stages):
        raise ConfigError(f"{len(prompts)} prompts for {stages} stages: give one prompt, or one per stage")
    stage_prompts = [None] * stages if prompts is None else (prompts * stages if len(prompts) == 1 else prompts)
    if args.zero_shot and (image is None or prompts is None or stages != 1):
        raise ConfigError("--zero-shot needs --image and one --prompt (single stage)")
    if module is None:
        module = load_trained(args.recipe, args.ckpt, use_ema=not args.no_ema, device=args.device)
    if args.zero_shot:
        from dv.diffusion.zero_shot import ti2v_zero_sample

        video = ti2v_zero_sample(module.backbone, module.noise_scheduler, prompts, image.to(args.device), frames, config,
                                 [args.seed], resample_steps=args.resample_steps)
    else:
        sampler = VideoSampler(module.backbone, module.branch, module.noise_scheduler, frames, size)
        video, _ = sampler.chained(stage_prompts, image, config, args.seed, callback=callback)
    written = write_outputs(video_from_model(video)[0].numpy(), args.out, args.fps, args.gif, args.strip)
    for path in written:
        print(f"wrote {path}")
    return written
