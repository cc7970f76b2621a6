"""TI2V-Zero (Ni et al., CVPR 2024, arXiv 2404.16306): zero-shot image-to-video on the frozen T2V backbone.

The training-free baseline dv compares DreamVideo against, on the same backbone and with no retention
branch. Equation and section numbers below are the TI2V-Zero paper's. For each new frame j = 1 … T−1
(§3.3, Fig. 2, Algorithm 1):

* **Repeat-and-slide** (§3.3, Eq. 7a–7c). A queue s_0 holds the clean latents of the K−1 newest known
  frames (K = ``window``, the backbone's clip length). It starts as the image latent repeated K−1 times and
  slides by one after every frame (the oldest leaves, the new frame enters). At every denoiser call the
  U-Net sees the window [s_t, ẑ_t]: s_t ~ q(s_t | s_0) drawn afresh with DDPM noise (Eq. 7a via Eq. 3,
  ``scheduler.add_noise``; independent noise per frame, so the repeated image does not give identical
  frames) and ẑ_t the new frame (Eq. 7b). ε̂ is text classifier-free guidance (Eq. 5; dv's
  ``guided_prediction`` with ``s_text``, no image condition), and only the new frame takes the DDIM step
  (Eq. 7c, DDIMScheduler.step's arithmetic, ``ddim_step``): the known frames are replaced again at the next call anyway.
* **DDPM inversion** (§3.3). The new frame starts from q(z_{t_1} | last frame of s_0), i.e. the newest
  known frame forward-noised (Eq. 3) to the first DDIM timestep t_1, instead of pure Gaussian noise.
* **Resampling** (§3.3, after RePaint [33]). With U = ``resample_steps``, each DDIM step t_i → t_{i−1}
  runs U+1 times; between runs the new frame goes back to t_i with one-step forward noise
  z_{t_i} = √(ᾱ_{t_i}/ᾱ_{t_{i−1}})·z_{t_{i−1}} + √(1 − ᾱ_{t_i}/ᾱ_{t_{i−1}})·ε, as the official code does.
  U counts the paper's "resampling steps" (§4.2: 4 with 10 DDIM steps on MUG/OPEN, 2 with 50 on UCF101;
  U = 0 is Table 1's "w/o Resample"). Denoiser calls: (T−1)·steps·(U+1), one batched call each.

Departures from the official code (github.com/merlresearch/TI2V-Zero, ``diffusion.py``, ``demo_img2vid.py``):
the queue stays in latent space (the demo decodes each new frame and re-encodes the queue: identical for a
lossless autoencoder, one VAE round trip less per frame for the KL one); s_t is drawn afresh at every call
(the official loop draws it once per step and re-noises it with the window during resampling; both give
s_t ~ q(s_t | s_0) at each call); only the new frame is re-noised. Frame 0 of the returned video is the
given image itself, as in the official demo. All randomness comes from one generator per video, so a batch
gives the same videos as its samples one by one.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, SchedulerMixin
from einops import rearrange, repeat
from tqdm.auto import tqdm

from dv.diffusion.guidance import Conditions, DenoiseFn, guided_prediction
from dv.diffusion.sampling import SamplerConfig, ddim_scheduler, ddim_step, ddim_tables, initial_noise
from dv.errors import ConfigError
from dv.models.backbone import Backbone
from dv.models.denoiser import Denoiser

DEFAULT_RESAMPLE_STEPS = 2
"""The paper's setting for 50 DDIM steps (UCF101, §4.2), dv's default step count."""


def _is_int(value) -> bool:
    """A real integer (bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def setting_problems(num_frames: int, window: int, resample_steps: int) -> list[str]:
    """Every TI2V-Zero setting that cannot work, as one sentence each."""
    problems = []
    if not _is_int(num_frames) or num_frames < 2:
        problems.append(f"num_frames must be an integer >= 2 (the image plus at least one new frame), not {num_frames}")
    if not _is_int(window) or window < 2:
        problems.append(f"window must be an integer >= 2 (at least one known frame and the new one), not {window}")
    if not _is_int(resample_steps) or resample_steps < 0:
        problems.append(f"resample_steps must be an integer >= 0 (0 turns resampling off), not {resample_steps}")
    return problems


def raise_problems(problems: list[str]) -> None:
    """One ConfigError that names them all, so a user fixes every setting in one go."""
    if problems:
        raise ConfigError("; ".join(problems))


def renoise_keep(scheduler: DDIMScheduler) -> torch.Tensor:
    """ᾱ(t_i)/ᾱ(t_{i−1}) for each of the scheduler's timesteps: the signal kept when re-noising t_{i−1} → t_i."""
    timesteps = scheduler.timesteps.cpu()
    acp = scheduler.alphas_cumprod
    # The same previous-timestep rule as DDIMScheduler.step, so re-noising exactly undoes the step's noise level.
    prev = timesteps - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    acp_prev = torch.where(prev >= 0, acp[prev.clamp(min=0)], scheduler.final_alpha_cumprod)
    return acp[timesteps] / acp_prev


@torch.no_grad()
def ti2v_zero_latents(
    denoise: DenoiseFn,
    scheduler: DDIMScheduler,
    first: torch.Tensor,
    cond: Conditions,
    num_frames: int,
    window: int,
    config: SamplerConfig,
    generators: list[torch.Generator],
    resample_steps: int = DEFAULT_RESAMPLE_STEPS,
    progress: bool = True,
) -> torch.Tensor:
    """Latents (B, c, T, h, w) generated frame by frame after the clean image latents ``first`` (B, c, h, w)."""
    config.validate()
    b = first.shape[0]
    problems = setting_problems(num_frames, window, resample_steps)
    if first.ndim != 4:
        problems.append(f"the image latents must be (B, c, h, w), not {tuple(first.shape)}")
    if len(generators) != b:
        problems.append(f"{len(generators)} generators for a batch of {b}")
    raise_problems(problems)
    device, dtype = first.device, first.dtype
    # The step's coefficients as device tensors indexed by step number (no host reads in the loop).
    tables = ddim_tables(scheduler, config.steps, config.eta, device)
    timesteps = tables.timesteps
    t_batches = timesteps[:, None].expand(-1, b)  # row i: t_i for every video
    keep = renoise_keep(scheduler).to(device, dtype)

    def noise(like: torch.Tensor) -> torch.Tensor:
        """N(0, I) shaped like ``like``, sample i drawn from generators[i]."""
        return initial_noise(tuple(like.shape), generators, device, dtype)

    queue = repeat(first, "b c h w -> b c k h w", k=window - 1)  # "repeat": s_0 at the start
    frames = [rearrange(first, "b c h w -> b c 1 h w")]
    bar = tqdm(total=(num_frames - 1) * len(timesteps), desc="TI2V-Zero", disable=not progress, leave=False)
    for _ in range(num_frames - 1):
        last = queue[:, :, -1:]
        new = scheduler.add_noise(last, noise(last), timesteps[:1].expand(b))  # DDPM inversion
        for i, t_batch in enumerate(t_batches):
            for u in range(resample_steps + 1):
                known = scheduler.add_noise(queue, noise(queue), t_batch)  # Eq. 7a
                z = torch.cat([known, new], dim=2)  # Eq. 7b: the new frame last, as the (K)th frame
                eps = guided_prediction(denoise, z, t_batch, cond, config.s_text, 0.0)[:, :, -1:]
                variance = noise(new) if config.eta > 0 else None
                new = ddim_step(tables, i, eps, new, variance)  # Eq. 7c
                if u < resample_steps:
                    # Resampling: back from t_{i-1} to t_i, so the step is retaken with the known frames.
                    new = keep[i].sqrt() * new + (1 - keep[i]).sqrt() * noise(new)
            bar.update()
        queue = torch.cat([queue[:, :, 1:], new], dim=2)  # "slide"
        frames.append(new)
    bar.close()
    return torch.cat(frames, dim=2)


@torch.no_grad()
def ti2v_zero_sample(
    backbone: Backbone,
    train_scheduler: SchedulerMixin,
    captions: list[str],
    images: torch.Tensor,
    num_frames: int,
    config: SamplerConfig,
    seeds: list[int],
    resample_steps: int = DEFAULT_RESAMPLE_STEPS,
    window: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Videos (B, 3, T, H, W) in [-1, 1] starting at ``images`` (B, 3, H, W), from the frozen T2V backbone.

    ``window`` is the backbone's clip length K (default: ``num_frames``); sample i is drawn from seeds[i].
    """
    config.validate()
    window = num_frames if window is None else window
    problems = setting_problems(num_frames, window, resample_steps)
    down = backbone.autoencoder.downscale
    if not captions:
        problems.append("TI2V-Zero needs a prompt per image (give --prompt)")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] % down or images.shape[-2] % down:
        problems.append(f"images must be (B, 3, H, W) with H and W multiples of {down}, not {tuple(images.shape)}")
    elif captions and not len(captions) == len(images) == len(seeds):
        counts = f"{len(captions)} prompts, {len(images)} images and {len(seeds)} seeds"
        problems.append(f"{counts}: give one of each per video")
    raise_problems(problems)
    device = next(backbone.unet.parameters()).device
    gen_device = device if device.type == "cuda" else "cpu"
    generators = [torch.Generator(device=gen_device).manual_seed(int(s)) for s in seeds]
    images = images.to(device)
    # One sample at a time, each with its own generator: a KL posterior draw must not depend on the batch.
    first = torch.cat(
        [
            backbone.autoencoder.encode(rearrange(image, "c h w -> 1 c 1 h w"), generator=g)
            for image, g in zip(images, generators)
        ]
    )
    cond = Conditions(
        text=backbone.encode_text(list(captions)), null_text=backbone.encode_text([""] * len(captions)), has_text=True
    )
    latents = ti2v_zero_latents(
        Denoiser(backbone.unet),
        ddim_scheduler(train_scheduler),
        rearrange(first, "b c 1 h w -> b c h w"),
        cond,
        num_frames,
        window,
        config,
        generators,
        resample_steps,
        progress,
    )
    new_frames = backbone.autoencoder.decode(latents[:, :, 1:]).clamp(-1, 1)
    # Frame 0 is the given image itself, not its VAE round trip (the official demo does the same).
    return torch.cat([rearrange(images, "b c h w -> b c 1 h w"), new_frames.to(images.dtype)], dim=2)
