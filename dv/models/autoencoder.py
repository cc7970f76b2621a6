"""Frame autoencoders: diffusers AutoencoderKL (frame-chunked) and the lossless space-to-depth one."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from einops import rearrange
from torch import nn

from dv.errors import ConfigError
from dv.models.identity import module_identity

DETERMINISTIC_LOGVAR = -30.0
"""Log-variance the lossless space-to-depth autoencoder reports: a point mass (std e^-15); nothing is drawn for it.
-30 is also the floor diffusers' DiagonalGaussianDistribution clamps a KL posterior's log-variance to."""


@dataclass
class AutoencoderConfig:
    """Which frame autoencoder maps pixels to latents."""

    kind: str = "kl"
    """'kl' (diffusers AutoencoderKL, the SD VAE of ModelScope) or 'space_to_depth' (lossless, tiny recipes)."""
    kl: dict = field(default_factory=dict)
    """AutoencoderKL config overrides (block_out_channels, latent_channels, ...); defaults are the SD VAE."""
    weights: str | None = None
    """Local weights: a diffusers `vae/` folder, a file, or a ModelScope VQGAN_autoencoder.pth."""
    factor: int = 4
    """Downscale factor of the space-to-depth autoencoder (latent channels = 3 * factor**2)."""
    chunk_frames: int = 16
    """Frames encoded/decoded per call, to bound activation memory."""


SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=256,
    scaling_factor=0.18215,
)


class SpaceToDepth(nn.Module):
    """Lossless autoencoder: each f×f pixel patch becomes 3·f² channels (pixel_unshuffle)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 3·f², H/f, W/f)."""
        return F.pixel_unshuffle(frames, self.factor)

    def inverse(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, 3·f², H/f, W/f) -> (N, 3, H, W)."""
        return F.pixel_shuffle(latents, self.factor)


class FrameAutoencoder(nn.Module):
    """Frozen per-frame autoencoder for videos in diffusers' (B, C, T, H, W) layout."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        if config.kind == "kl":
            self.model = AutoencoderKL(**{**SD_VAE, **config.kl})
            self.latent_channels = self.model.config.latent_channels
            self.downscale = 2 ** (len(self.model.config.block_out_channels) - 1)
            self.scaling_factor = float(self.model.config.scaling_factor)
        elif config.kind == "space_to_depth":
            if config.factor < 1:
                raise ConfigError(f"autoencoder.factor must be >= 1, not {config.factor}")
            self.model = SpaceToDepth(config.factor)
            self.latent_channels = 3 * config.factor**2
            self.downscale = config.factor
            self.scaling_factor = 1.0
        else:
            raise ConfigError(f"autoencoder.kind must be 'kl' or 'space_to_depth', not {config.kind!r}")

    def posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (B, c, T, h, w), unscaled, of a video in [-1, 1]."""
        b = video.shape[0]
        frames = rearrange(video, "b c t h w -> (b t) c h w")
        means, logvars = [], []
        for chunk in frames.split(self.config.chunk_frames):
            if self.config.kind == "kl":
                dist = self.model.encode(chunk).latent_dist
                means.append(dist.mean)
                logvars.append(dist.logvar)
            else:
                mean = self.model(chunk)
                means.append(mean)
                logvars.append(torch.full_like(mean, DETERMINISTIC_LOGVAR))  # lossless: no posterior spread
        mean = rearrange(torch.cat(means), "(b t) c h w -> b c t h w", b=b)
        logvar = rearrange(torch.cat(logvars), "(b t) c h w -> b c t h w", b=b)
        return mean, logvar

    def sample_latents(
        self, mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A scaled float32 latent drawn from the posterior (what the U-Net sees).

        Encoding on the fly and training on cached posteriors (dv cache-latents) both draw here, in
        float32 whatever the posterior's dtype (autocast or bf16 cache), so one generator gives one draw.
        """
        mean, logvar = mean.float(), logvar.float()
        if self.config.kind == "space_to_depth":
            return mean * self.scaling_factor
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
        return (mean + torch.exp(0.5 * logvar) * noise) * self.scaling_factor

    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents (B, c, T, h, w) of a video (B, 3, T, H, W) in [-1, 1]."""
        return self.sample_latents(*self.posterior(video), generator=generator)

    def identity(self) -> str:
        """SHA-256 over what decides the latents: kind, effective config, scaling factor and weights (chunking aside)."""
        if self.config.kind == "kl":
            config = {k: v for k, v in self.model.config.items() if not k.startswith("_")}
        else:
            config = {"factor": self.config.factor}
        return module_identity(
            self, {"kind": self.config.kind, "config": config, "scaling_factor": self.scaling_factor}
        )

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] from scaled latents."""
        b = latents.shape[0]
        frames = rearrange(latents / self.scaling_factor, "b c t h w -> (b t) c h w")
        out = []
        for chunk in frames.split(self.config.chunk_frames):
            out.append(self.model.decode(chunk).sample if self.config.kind == "kl" else self.model.inverse(chunk))
        return rearrange(torch.cat(out), "(b t) c h w -> b c t h w", b=b)
