"""The same work as the plainest diffusers + torch code: what dv's speed is held against.

No Lightning and no dv machinery: the recipe's networks (U-Net, image-conditioning branch,
autoencoder, text encoder) called directly in a `for` loop, the way a user writes it from diffusers'
docs. The branch is asked for its image features and its U-Net inputs (ConditioningBranch), so the
loops serve every model family. The networks are the same objects dv runs, so the recipe's
checkpointing and compile apply to both.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
from einops import rearrange

from dv.bench.device import synchronize
from dv.bench.workload import Workload


def unet_call(unet, branch, sample, t, text, image_features):
    """The U-Net's output for these inputs, with what the branch adds to them when it has image features."""
    inputs = {"sample": sample, "encoder_hidden_states": text}
    if image_features is not None:
        inputs.update(branch.unet_inputs(sample, t, text, image_features))
    return unet(timestep=t, **inputs).sample


def encode(work: Workload, frames: torch.Tensor) -> torch.Tensor:
    """Latents of frames (N, 3, H, W) in [-1, 1] with the recipe's autoencoder, called directly."""
    vae = work.module.backbone.autoencoder.model
    if isinstance(vae, AutoencoderKL):
        return vae.encode(frames).latent_dist.sample() * vae.config.scaling_factor
    return vae(frames)  # the tiny recipes' lossless space-to-depth autoencoder


def decode(work: Workload, latents: torch.Tensor) -> torch.Tensor:
    """Frames (N, 3, H, W) of latents (N, c, h, w)."""
    vae = work.module.backbone.autoencoder.model
    if isinstance(vae, AutoencoderKL):
        return vae.decode(latents / vae.config.scaling_factor).sample
    return vae.inverse(latents)


def train_step(work: Workload) -> Callable[[], None]:
    """One plain training step over the workload's batch: encode (or draw from the cached posterior), noise,
    U-Net (+ branch), MSE, backward, AdamW."""
    module, device = work.module, work.device
    unet, branch, text_encoder = module.backbone.unet, module.branch, module.backbone.text
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=module.optim.lr, weight_decay=module.optim.weight_decay, fused=device.type == "cuda"
    )
    scheduler = DDPMScheduler.from_config(module.noise_scheduler.config)

    batch = work.train_batch
    scale = module.backbone.autoencoder.scaling_factor

    def step() -> None:
        if "latent_mean" in batch:  # latent shards: a posterior draw instead of the VAE encoder, cached text
            mean = batch["latent_mean"].to(device, non_blocking=True).float()
            logvar = batch["latent_logvar"].to(device, non_blocking=True).float()
            first = (
                rearrange(batch["reference"].to(device, non_blocking=True), "b h w c -> b c h w").float() / 127.5 - 1
            )
            b = mean.shape[0]
        else:
            video = batch["video"].to(device, non_blocking=True)
            video = rearrange(video, "b t h w c -> b c t h w").float() / 127.5 - 1
            first, b = video[:, :, 0], video.shape[0]
        with work.autocast():
            with torch.no_grad():
                if "latent_mean" in batch:
                    latents = (mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)) * scale
                    text = batch["text_embedding"].to(device, non_blocking=True).float()
                else:
                    latents = encode(work, rearrange(video, "b c t h w -> (b t) c h w"))
                    latents = rearrange(latents, "(b t) c h w -> b c t h w", b=b)
                    text = text_encoder(batch["caption"])
            noise = torch.randn_like(latents)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=device)
            noisy = scheduler.add_noise(latents, noise, t)
            features = branch.encode_image(first) if branch is not None else None
            pred = unet_call(unet, branch, noisy, t, text, features)
            loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def sample_video(work: Workload, steps: int, s_text: float, s_image: float) -> Callable[[], torch.Tensor]:
    """A plain eager DDIM loop: Eq. 5 as three separate U-Net (+ branch) calls per step, then the VAE decode."""
    module, device = work.module, work.device
    unet, branch, text_encoder = module.backbone.unet, module.branch, module.backbone.text
    ae = module.backbone.autoencoder
    scheduler = DDIMScheduler.from_config(
        module.noise_scheduler.config,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    b, t, size = work.batch_size, work.batch["video"].shape[1], work.batch["video"].shape[2]
    shape = (b, ae.latent_channels, t, size // ae.downscale, size // ae.downscale)
    image = work.batch["video"][:, 0].to(device).permute(0, 3, 1, 2).float() / 127.5 - 1

    @torch.no_grad()
    def run() -> torch.Tensor:
        with work.autocast():
            text = text_encoder(work.batch["caption"])
            null_text = text_encoder([""] * b)
            z_image = z_white = None
            if branch is not None:
                z_image, z_white = branch.encode_image(image), branch.encode_image(torch.ones_like(image))

            def eps(x, step_t, txt, z):
                return unet_call(unet, branch, x, step_t, txt, z)

            latents = torch.randn(shape, device=device)
            scheduler.set_timesteps(steps, device=device)
            for step_t in scheduler.timesteps:
                e_uncond = eps(latents, step_t, null_text, z_white)
                e = e_uncond + s_text * (eps(latents, step_t, text, z_white) - e_uncond)
                if branch is not None:
                    e = e + s_image * (eps(latents, step_t, null_text, z_image) - e_uncond)
                latents = scheduler.step(e, step_t, latents).prev_sample
            frames = decode(work, rearrange(latents, "b c t h w -> (b t) c h w"))
        return rearrange(frames, "(b t) c h w -> b c t h w", b=b)

    return run


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of fn() after `warmup` untimed ones (the device synchronised around each)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times
