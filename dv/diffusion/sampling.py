"""DDIM sampling with Eq. 5 guidance, and chained (multi-stage) inference.

The sampler takes a denoiser callable and the frozen encoders' outputs; it imports
no training code. Randomness comes from one generator per video, so a batch of
prompts gives the same videos as the prompts one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, SchedulerMixin
from tqdm.auto import tqdm

from dv.diffusion.guidance import Conditions, DenoiseFn, batched_prediction, check_scale, guidance_batch
from dv.errors import ConfigError

COMPILE_MODES = ("reduce-overhead", "default", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile modes the sampler accepts; 'reduce-overhead' replays the denoiser as a CUDA graph on a GPU."""


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
    compile: bool = False
    """torch.compile the denoiser (once per denoiser, kept for later calls); the recipe's `sampling.compile`."""
    compile_mode: str = "reduce-overhead"
    """torch.compile mode of the denoiser: 'reduce-overhead' runs each step as one CUDA-graph replay on a GPU."""

    def validate(self) -> SamplerConfig:
        """Raise a ConfigError for a value that cannot work."""
        if not isinstance(self.steps, int) or not 1 <= self.steps <= self.max_steps:
            raise ConfigError(f"steps must be an integer from 1 to {self.max_steps}, not {self.steps}")
        check_scale("eta", self.eta)
        check_scale("the text guidance scale", self.s_text)
        check_scale("the image guidance scale", self.s_image)
        if not isinstance(self.compile, bool):
            raise ConfigError(f"sampling.compile must be true or false, not {self.compile!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(
                f"sampling.compile_mode must be one of {', '.join(COMPILE_MODES)}, not {self.compile_mode!r}"
            )
        return self


RECIPE_KEYS = ("compile", "compile_mode")
"""What a recipe's top-level `sampling:` section may set; steps and guidance scales are per call."""


def recipe_sampling(recipe: dict) -> dict:
    """The SamplerConfig settings of a recipe's `sampling:` section (empty when it has none), checked."""
    section = recipe.get("sampling") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"the recipe's sampling section must be a mapping such as {{compile: true}}, not {section!r}")
    unknown = sorted(set(section) - set(RECIPE_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown sampling setting(s) {', '.join(unknown)}; a recipe's sampling section takes {', '.join(RECIPE_KEYS)}"
        )
    SamplerConfig(**section).validate()
    return dict(section)


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


@dataclass
class DDIMTables:
    """DDIMScheduler.step's coefficients for every step of one run, as device tensors indexed by step number.

    Computed once with the same float32 operations as DDIMScheduler.step, so a step from the tables gives the
    same numbers as diffusers' step; the loop then reads no scalar from the host and indexes no CPU table."""

    timesteps: torch.Tensor
    """t_i (steps,), int64."""
    sqrt_alpha: torch.Tensor
    """√ᾱ(t_i)."""
    sqrt_beta: torch.Tensor
    """√(1 − ᾱ(t_i))."""
    sqrt_alpha_prev: torch.Tensor
    """√ᾱ(t_{i−1}), with the final ᾱ after the last step."""
    direction: torch.Tensor
    """√(1 − ᾱ(t_{i−1}) − σ_i²): the weight of ε in the step."""
    sigma: torch.Tensor
    """σ_i = η·√variance: the weight of the fresh noise (0 for η = 0)."""
    prediction_type: str
    """What the denoiser predicts: 'epsilon', 'v_prediction' or 'sample'."""


def ddim_tables(scheduler: DDIMScheduler, steps: int, eta: float, device: torch.device | str = "cpu") -> DDIMTables:
    """Set the scheduler to `steps` and tabulate its step coefficients on `device`."""
    if scheduler.config.thresholding or scheduler.config.clip_sample:
        raise ConfigError("the sampler's DDIM scheduler must not clip or threshold x0 (ddim_scheduler() builds it so)")
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.cpu()
    acp = scheduler.alphas_cumprod.cpu()
    prev = timesteps - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha = acp[timesteps]
    alpha_prev = torch.where(prev >= 0, acp[prev.clamp(min=0)], scheduler.final_alpha_cumprod.cpu())
    beta = 1 - alpha
    # DDIMScheduler._get_variance and step, term by term in the same order (same float32 roundings).
    variance = ((1 - alpha_prev) / beta) * (1 - alpha / alpha_prev)
    sigma = eta * variance ** (0.5)
    # Clamped where diffusers is not: on a zero-terminal-SNR schedule with eta = 1 the first step's 1 − ᾱ_prev − σ²
    # is 0, which float32 may round below 0 (a NaN video from step one).
    direction = (1 - alpha_prev - sigma**2).clamp(min=0) ** (0.5)
    tables = [timesteps, alpha ** (0.5), beta ** (0.5), alpha_prev ** (0.5), direction, sigma]
    return DDIMTables(*(x.to(device) for x in tables), prediction_type=scheduler.config.prediction_type)


def ddim_step(
    tables: DDIMTables, i: int, model_output: torch.Tensor, sample: torch.Tensor, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """z_{t_{i−1}} from z_{t_i} = `sample` and the denoiser's output: DDIMScheduler.step on device tensors.

    `noise` is the step's fresh N(0, I) when η > 0 (None otherwise)."""
    a, b = tables.sqrt_alpha[i], tables.sqrt_beta[i]
    kind = tables.prediction_type
    if kind == "epsilon":
        x0 = (sample - b * model_output) / a
        eps = model_output
    elif kind == "v_prediction":
        x0 = a * sample - b * model_output
        eps = a * model_output + b * sample
    elif kind == "sample":
        x0 = model_output
        eps = (sample - a * x0) / b
    else:
        raise ConfigError(f"prediction_type must be epsilon, v_prediction or sample, not {kind!r}")
    prev = tables.sqrt_alpha_prev[i] * x0 + tables.direction[i] * eps
    if noise is not None:
        prev = prev + tables.sigma[i] * noise
    return prev


def compiled(denoise: DenoiseFn, mode: str) -> DenoiseFn:
    """torch.compile(denoise, mode), made once per denoiser and mode and kept with it for later sampling runs."""
    # Kept in the object's __dict__: nn.Module.__setattr__ would register the compiled wrapper as a submodule
    # (its state dict would change); a WeakKeyDictionary would keep the denoiser alive through the wrapper anyway.
    cache = denoise.__dict__.setdefault("_dv_compiled", {})
    if mode not in cache:
        # dynamic=False: a sampling run's shapes never change, and a new batch size gets its own static graph.
        cache[mode] = torch.compile(denoise, mode=None if mode == "default" else mode, dynamic=False)
    return cache[mode]


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

    Everything a step needs is made before the loop: the scheduler's coefficients and the U-Net's timesteps
    as device tensors indexed by step number, and the batched conditions. A step then reads nothing from the
    host and its denoiser call has the same shapes every time, as a CUDA graph needs (`config.compile`).

    With `start` and `latents`, a trajectory already under way: these noisy latents are denoised from the first
    DDIM timestep at or below `start` (the trajectory diagnostic)."""
    config.validate()
    if len(generators) != shape[0]:
        raise ConfigError(f"{len(generators)} generators for a batch of {shape[0]}")
    tables = ddim_tables(scheduler, config.steps, config.eta, device)
    # The first step to run: all of them, or those at or below `start` (descending timesteps: a suffix).
    first = 0 if start is None else int((scheduler.timesteps > start).sum())
    batch = guidance_batch(cond, config.s_text, config.s_image)
    # Row i: t_i for every sample of every part of the denoiser batch.
    t_batches = tables.timesteps[:, None].expand(-1, batch.parts * shape[0]).contiguous()
    net = compiled(denoise, config.compile_mode) if config.compile else denoise
    if latents is None:
        latents = initial_noise(shape, generators, device, dtype) * scheduler.init_noise_sigma
    for i in tqdm(range(first, config.steps), desc="denoising", disable=not progress, leave=False):
        if config.compile:
            torch.compiler.cudagraph_mark_step_begin()  # each step is a new replay: the last one's outputs are used up
        eps = batched_prediction(net, latents, t_batches[i], batch)
        noise = initial_noise(shape, generators, device, dtype) if config.eta > 0 else None
        latents = ddim_step(tables, i, eps, latents, noise)
        if callback is not None:
            callback(i + 1 - first, config.steps - first)
    return latents


def chain_videos(stages: list[torch.Tensor]) -> torch.Tensor:
    """One video (B, C, N·T − (N−1), H, W) from stage videos whose first frame repeats the previous last frame."""
    out = [stages[0]] + [stage[:, :, 1:] for stage in stages[1:]]
    return torch.cat(out, dim=2)
