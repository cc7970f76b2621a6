"""Where along the DDIM trajectory a trained model loses the clip: noise held-out clips to a timestep, sample back.

Started near t = 0, a model that denoises at all returns the clip; started at the schedule's top, from pure noise, it
samples. The first start from which the result no longer resembles the clip (its error against the clip, and its
pixel-to-pixel energy against the clip's own, which grows where noise is left in place) is the noise level that more
training has to reach. No guidance: the conditional model alone, with the clips' captions (and first frames).

    dv trajectory --recipe runs/demo-t2v/latest/config.yaml \
        --ckpt runs/demo-t2v/latest/checkpoints/last.ckpt --shards 'data/shards/camera-pans/val-*.tar'
"""

from __future__ import annotations

import runpy
import sys
from dataclasses import dataclass

import torch

from dv.data.datamodule import VideoDataModule
from dv.diffusion.guidance import Conditions
from dv.diffusion.sampling import SamplerConfig, ddim_sample, ddim_scheduler
from dv.errors import DVError
from dv.models.conditions import video_to_model

STARTS = (100, 300, 500, 700, 900, None)
"""Timesteps the clips are noised to before sampling back; None is pure noise (an ordinary sample)."""


@dataclass
class TrajectoryRow:
    start: int | None
    """The first DDIM timestep sampled from (None: pure noise)."""
    first_t: int
    error: float
    """Mean squared error of the result against the clips, in model range [-1, 1]."""
    energy_ratio: float
    """The result's pixel-to-pixel energy over the clips' own (1 = as much fine detail as the clips)."""


def pixel_energy(video: torch.Tensor) -> float:
    """Mean squared difference between horizontally and vertically neighbouring pixels of (B, C, T, H, W)."""
    video = video.float()
    across = (video[..., 1:] - video[..., :-1]).pow(2).mean()
    down = (video[..., 1:, :] - video[..., :-1, :]).pow(2).mean()
    return float(across + down)


@torch.no_grad()
def sample_back(module, latents: torch.Tensor, conditions: tuple, start: int | None, steps: int, seed: int = 0):
    """Clean latents noised to `start` and DDIM-sampled back to t = 0, decoded to [-1, 1]; and the first timestep.

    `conditions` are the module's (text, image) for the clips, as `batch_conditions` gives them.
    """
    text, image = conditions
    scheduler = ddim_scheduler(module.noise_scheduler)
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps if start is None or int(t) <= start]
    if not timesteps:
        raise ValueError(f"no DDIM timestep of {steps} steps is at or below {start}")
    generator = torch.Generator(device=latents.device).manual_seed(seed)
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if start is None:
        x = noise * scheduler.init_noise_sigma
    else:
        x = module.noise_scheduler.add_noise(latents, noise, torch.tensor([timesteps[0]], device=latents.device))
    # No guidance: with both scales 0 the sampler's prediction is its null slot's, which holds the clips' conditions.
    unguided = Conditions(text=text, null_text=text, null_image=image, has_text=False)
    x = ddim_sample(
        module.denoiser,
        scheduler,
        tuple(x.shape),
        unguided,
        SamplerConfig(steps=steps, s_text=0.0, s_image=0.0),
        [generator] * x.shape[0],
        device=x.device,
        dtype=x.dtype,
        progress=False,
        start=start,
        latents=x,
    )
    return module.backbone.autoencoder.decode(x).clamp(-1, 1), timesteps[0]


@torch.no_grad()
def trajectory_table(
    module, video: torch.Tensor, captions: list[str], starts=STARTS, steps: int = 25, seed: int = 0
) -> list[TrajectoryRow]:
    """One row per start: how close the sampled-back result is to the clips (B, C, T, H, W in [-1, 1]), and how much
    fine detail it has. The clips are encoded and their conditions computed once, for every start."""
    latents = module.encode_video(video)
    conditions = module.batch_conditions({"caption": captions}, video, drop=False, generator=None)
    clip_energy = pixel_energy(video)
    rows = []
    for start in starts:
        result, first_t = sample_back(module, latents, conditions, start, steps, seed)
        rows.append(
            TrajectoryRow(start, first_t, float((result - video).pow(2).mean()), pixel_energy(result) / clip_energy)
        )
    return rows


def format_table(rows: list[TrajectoryRow], clips: int, steps: int) -> str:
    """Markdown table of `trajectory_table`'s rows."""
    lines = [
        f"{clips} held-out clips noised to t and sampled back with {steps}-step DDIM, no guidance.",
        "",
        "| from t | error vs clip | pixel energy / clip's |",
        "|---|---|---|",
    ]
    for r in rows:
        start = "pure noise" if r.start is None else str(r.first_t)
        lines.append(f"| {start} | {r.error:.3f} | {r.energy_ratio:.2f}× |")
    return "\n".join(lines)


def first_clips(pattern: str, frames: int, size: int, count: int) -> tuple[torch.Tensor, list[str]]:
    """The first `count` clips of the shards, as a model-range video batch, and their captions."""
    data = VideoDataModule(
        train_shards=pattern, val_shards=pattern, batch_size=count, num_workers=0, num_frames=frames, frame_size=size
    )
    data.setup("validate")
    batch = next(iter(data.val_dataloader()), None)
    if batch is None:
        raise DVError(f"no clips in {pattern!r}")
    return video_to_model(batch["video"]), list(batch["caption"])


if __name__ == "__main__":  # the old form of `dv trajectory`, kept for one release; the command is dv/trajectory.py
    print(
        "python -m dv.diffusion.trajectory is deprecated and goes in the next release; use `dv trajectory`",
        file=sys.stderr,
    )
    sys.argv[1:1] = ["trajectory"]
    runpy.run_module("dv", run_name="__main__")
