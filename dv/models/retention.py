"""The Image Retention branch of DreamVideo (paper §4.2, Eq. 3).

A trainable copy of the U-Net's input conv (conv_d), time embedding, input
temporal transformer, down blocks and mid block, fed with
``z_r = conv_d(z_t) ⊕ conv_s(I)``. Every down-block residual and the mid output
leave through a zero-initialised 1×1 conv, so that at step 0 the U-Net with the
branch is exactly the U-Net without it.
"""

from __future__ import annotations

import copy
import math

import torch
from diffusers import UNet3DConditionModel
from einops import rearrange, repeat
from torch import nn

from dv.errors import ConfigError


def zero_module(module: nn.Module) -> nn.Module:
    """The module with every parameter set to zero."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def residual_channels(unet: UNet3DConditionModel) -> list[int]:
    """Channel count of each down-block residual the U-Net hands to its up path, in order."""
    cfg = unet.config
    channels = [cfg.block_out_channels[0]]
    for i, out in enumerate(cfg.block_out_channels):
        channels += [out] * cfg.layers_per_block
        if i < len(cfg.block_out_channels) - 1:
            channels.append(out)  # the downsampler's output
    return channels


class ImageEmbedding(nn.Module):
    """conv_s: a strided conv stack from the pixel-space image to the latent grid, last layer zero."""

    def __init__(self, out_channels: int, downscale: int, channels: tuple[int, ...], in_channels: int = 3) -> None:
        super().__init__()
        stride2 = int(math.log2(downscale))
        if 2**stride2 != downscale:
            raise ConfigError(f"the autoencoder's downscale {downscale} is not a power of two")
        if len(channels) != stride2 + 1:
            raise ConfigError(
                f"retention.image_channels needs {stride2 + 1} entries for a downscale of {downscale}, got {len(channels)}"
            )
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.SiLU()]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_in, 3, padding=1), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1, stride=2), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.out = zero_module(nn.Conv2d(channels[-1], out_channels, 3, padding=1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, c0, H/f, W/f)."""
        return self.out(self.body(image))


class RetentionBranch(nn.Module):
    """The Image Retention branch: residuals for the U-Net's skips and mid block from z_t and the image."""

    def __init__(
        self,
        unet_config: dict,
        downscale: int,
        fusion: str = "add",
        image_channels: tuple[int, ...] = (16, 32, 96, 256),
    ) -> None:
        super().__init__()
        if fusion not in ("add", "concat"):
            raise ConfigError(f"retention.fusion must be 'add' or 'concat', not {fusion!r}")
        # A U-Net of the same config provides the modules to copy; its up path is dropped.
        unet = UNet3DConditionModel.from_config(unet_config)
        self.fusion = fusion
        self.conv_d = unet.conv_in
        self.time_proj = unet.time_proj
        self.time_embedding = unet.time_embedding
        self.transformer_in = unet.transformer_in
        self.down_blocks = unet.down_blocks
        self.mid_block = unet.mid_block
        c0 = unet.config.block_out_channels[0]
        self.conv_s = ImageEmbedding(c0, downscale, tuple(image_channels))
        if fusion == "concat":
            # [z_d, z_s] -> c0 channels, initialised to pass z_d through unchanged.
            self.fuse = nn.Conv2d(2 * c0, c0, 1)
            with torch.no_grad():
                self.fuse.weight.zero_()
                self.fuse.weight[:, :c0, 0, 0].copy_(torch.eye(c0))
                self.fuse.bias.zero_()
        self.zero_convs = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in residual_channels(unet))
        self.mid_zero_conv = zero_module(nn.Conv2d(unet.config.block_out_channels[-1], unet.config.block_out_channels[-1], 1))

    @classmethod
    def from_unet(
        cls, unet: UNet3DConditionModel, downscale: int, fusion: str = "add", image_channels: tuple[int, ...] = (16, 32, 96, 256)
    ) -> "RetentionBranch":
        """A branch whose copied parts start from the U-Net's weights (ControlNet-style)."""
        branch = cls(dict(unet.config), downscale, fusion, image_channels)
        for name in ("conv_in", "time_embedding", "transformer_in", "down_blocks", "mid_block"):
            target = branch.conv_d if name == "conv_in" else getattr(branch, name)
            target.load_state_dict(getattr(unet, name).state_dict())
        return branch

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """z_s = conv_s(I): (B, 3, H, W) in [-1, 1] -> (B, c0, h, w); computed once per video when sampling."""
        return self.conv_s(image)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        image_features: torch.Tensor,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Down residuals and mid residual for noisy latents (B, c, T, h, w) and z_s (B, c0, h, w)."""
        b, _, num_frames = sample.shape[:3]
        timestep = timestep.expand(b) if timestep.ndim else timestep[None].expand(b)
        emb = self.time_embedding(self.time_proj(timestep).to(sample.dtype))
        emb = repeat(emb, "b d -> (b t) d", t=num_frames)
        context = repeat(encoder_hidden_states, "b n d -> (b t) n d", t=num_frames)

        z_d = self.conv_d(rearrange(sample, "b c t h w -> (b t) c h w"))
        z_s = repeat(image_features.to(z_d.dtype), "b c h w -> (b t) c h w", t=num_frames)
        h = z_d + z_s if self.fusion == "add" else self.fuse(torch.cat([z_d, z_s], dim=1))
        h = self.transformer_in(h, num_frames=num_frames, return_dict=False)[0]

        residuals = (h,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=context, num_frames=num_frames)
            else:
                h, res = block(hidden_states=h, temb=emb, num_frames=num_frames)
            residuals += res
        h = self.mid_block(h, emb, encoder_hidden_states=context, num_frames=num_frames)

        down = tuple(conv(r) for conv, r in zip(self.zero_convs, residuals))
        return down, self.mid_zero_conv(h)

    def unet_inputs(
        self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, image_features: torch.Tensor
    ) -> dict[str, torch.Tensor | tuple[torch.Tensor, ...]]:
        """The U-Net keyword arguments this branch adds (Denoiser's protocol): the down and mid residuals."""
        down, mid = self(sample, timestep, text, image_features)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
