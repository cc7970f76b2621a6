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
from dv.errors import ConfigError


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


TIMESTEP_BIAS_STRATEGIES = ("none", "earlier", "later", "range")
"""How training draws its timesteps, as diffusers' training scripts say it (`--timestep_bias_strategy`): uniformly,
or `multiplier` times as often in the first or last `portion` of the schedule, or in [begin, end)."""


def timestep_weights(
    num_timesteps: int,
    strategy: str = "none",
    multiplier: float = 1.0,
    portion: float = 0.25,
    begin: int = 0,
    end: int = 1000,
) -> torch.Tensor | None:
    """Probabilities (num_timesteps,) of drawing each training timestep under a bias strategy; None for uniform.
    Settings out of range are ConfigErrors naming the recipe's `diffusion.timestep_bias_*` keys, even for 'none'."""
    if strategy not in TIMESTEP_BIAS_STRATEGIES:
        raise ConfigError(
            f"diffusion.timestep_bias_strategy must be one of {', '.join(TIMESTEP_BIAS_STRATEGIES)}, not {strategy!r}"
        )
    if not multiplier > 0 or not 0 < portion <= 1:
        raise ConfigError(
            "diffusion.timestep_bias_multiplier must be > 0 and timestep_bias_portion in (0, 1], not "
            f"{multiplier} and {portion}"
        )
    if strategy == "none":
        return None
    picked = {
        "later": slice(num_timesteps - int(portion * num_timesteps), None),
        "earlier": slice(0, int(portion * num_timesteps)),
        "range": slice(max(0, begin), min(num_timesteps, end)),
    }[strategy]
    weights = torch.ones(num_timesteps)
    weights[picked] *= multiplier
    return weights / weights.sum()


def draw_timesteps(
    weights: torch.Tensor | None, num_timesteps: int, batch: int, generator: torch.Generator
) -> torch.Tensor:
    """`batch` training timesteps on the generator's device: uniform, or drawn with `weights` (timestep_weights)."""
    if weights is None:
        return torch.randint(0, num_timesteps, (batch,), generator=generator, device=generator.device)
    return torch.multinomial(weights.to(generator.device), batch, replacement=True, generator=generator)


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
