"""DDIM sampling with Eq. 5 guidance, and chained (multi-stage) inference.

The sampler takes a denoiser callable and the frozen encoders' outputs; it imports
no training code. Randomness comes from one generator per video, so a batch of
prompts gives the same videos as the prompts one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DDIMScheduler, SchedulerMixin
from tqdm.auto import tqdm

from dv.diffusion.guidance import Conditions, DenoiseFn, check_scale, guided_prediction
from dv.errors import ConfigError


@dataclass
class SamplerConfig:
    """DDIM settings and guidance scales."""

    steps: int = 50
    """Denoising steps."""
    eta: float = 0.0
    """DDIM eta: 0 is deterministic DDIM, 1 is DDPM-like."""
    s_text: float = 9.0
    """Text guidance scale s_t (Eq. 5); 9.0 is ModelScope's default."""
    s_image: float = 1.0
    """Image guidance scale s_i (Eq. 5)."""
    max_steps: int = 1000
    """Largest accepted step count."""

    def validate(self) -> "SamplerConfig":
        """Raise a ConfigError for a value that cannot work."""
        if not isinstance(self.steps, int) or not 1 <= self.steps <= self.max_steps:
            raise ConfigError(f"steps must be an integer from 1 to {self.max_steps}, not {self.steps}")
        check_scale("eta", self.eta)
        check_scale("the text guidance scale", self.s_text)
        check_scale("the image guidance scale", self.s_image)
        return self


def ddim_scheduler(train_scheduler: SchedulerMixin) -> DDIMScheduler:
    """A DDIM scheduler on the training noise schedule (same betas, prediction type and step spacing)."""
    # The spacing comes from the training config (diffusion.timestep_spacing; 'leading' unless a recipe says otherwise).
    spacing = train_scheduler.config.get("timestep_spacing", "leading")
    return DDIMScheduler.from_config(
        train_scheduler.config, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing=spacing
    )


def initial_noise(shape: tuple[int, ...], generators: list[torch.Generator], device, dtype) -> torch.Tensor:
    """Gaussian latents (B, ...) with sample i drawn from generators[i]."""
    return torch.stack(
        [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype).to(device) for g in generators]
    )


@torch.no_grad()
def ddim_sample(
    denoise: DenoiseFn,
    scheduler: DDIMScheduler,
    shape: tuple[int, ...],
    cond: Conditions,
    config: SamplerConfig,
    generators: list[torch.Generator],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
    start: int | None = None,
    latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Latents (B, c, T, h, w) denoised from seeded noise with Eq. 5 guidance at every DDIM step.

    With `start` and `latents`, a trajectory already under way: these noisy latents are denoised from the first
    DDIM timestep at or below `start` (the trajectory diagnostic)."""
    config.validate()
    if len(generators) != shape[0]:
        raise ConfigError(f"{len(generators)} generators for a batch of {shape[0]}")
    # Timesteps stay on the host as ints for the scheduler's arithmetic (a device tensor there means a device
    # sync per step: `prev_t >= 0`, indexing alphas_cumprod); the U-Net gets them from one copy made up front.
    scheduler.set_timesteps(config.steps)
    timesteps = [int(t) for t in scheduler.timesteps if start is None or int(t) <= start]  # descending: a suffix
    t_batches = scheduler.timesteps[len(scheduler.timesteps) - len(timesteps) :].to(device)[:, None].expand(-1, shape[0])
    if latents is None:
        latents = initial_noise(shape, generators, device, dtype) * scheduler.init_noise_sigma
    for i, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress, leave=False)):
        eps = guided_prediction(denoise, latents, t_batches[i], cond, config.s_text, config.s_image)
        noise = initial_noise(shape, generators, device, dtype) if config.eta > 0 else None
        latents = scheduler.step(eps, t, latents, eta=config.eta, variance_noise=noise).prev_sample
        if callback is not None:
            callback(i + 1, len(timesteps))
    return latents


def chain_videos(stages: list[torch.Tensor]) -> torch.Tensor:
    """One video (B, C, N·T − (N−1), H, W) from stage videos whose first frame repeats the previous last frame."""
    out = [stages[0]] + [stage[:, :, 1:] for stage in stages[1:]]
    return torch.cat(out, dim=2)
