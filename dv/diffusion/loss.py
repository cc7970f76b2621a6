"""The denoising loss: one pure function that training, the caption probe and the trajectory diagnostic share.

A training batch becomes a `TrainInputs` once, at the top of the step (the module's `train_inputs`); from there the
loss needs only the denoiser, the noise schedule, the timesteps and the noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import SchedulerMixin

from dv.diffusion.guidance import DenoiseFn


@dataclass(frozen=True)
class TrainInputs:
    """One batch as the denoiser sees it: clean latents and their (already dropped-out) conditions."""

    latents: torch.Tensor
    """Clean scaled latents (B, c, T, h, w)."""
    text: torch.Tensor
    """Text embeddings (B, L, D); a dropped caption is the empty prompt's."""
    image: Any = None
    """The branch's features of the reference images (DreamVideo's z_s; DynamiCrafter's tokens, latent and frame
    stride), a dropped image being white's; None for text-to-video."""


def prediction_target(
    scheduler: SchedulerMixin, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """What the denoiser is trained to predict for latents noised with `noise` at t: ε, or v (the scheduler's
    prediction_type)."""
    if scheduler.config.prediction_type == "epsilon":
        return noise
    return scheduler.get_velocity(latents, noise, t)


def denoising_loss(
    denoiser: DenoiseFn, scheduler: SchedulerMixin, inputs: TrainInputs, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Per-sample MSE (B,) of the denoiser's prediction for `inputs.latents` noised with `noise` at timesteps t (B,)."""
    noisy = scheduler.add_noise(inputs.latents, noise, t)
    target = prediction_target(scheduler, inputs.latents, noise, t)
    pred = denoiser(noisy, t, inputs.text, inputs.image)
    return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3, 4))
