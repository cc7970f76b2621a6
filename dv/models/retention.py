"""The Image Retention branch of DreamVideo (paper §4.2, Eq. 3).

A trainable copy of the U-Net's input conv (conv_d), time embedding, input
temporal transformer, down blocks and mid block, fed with
``z_r = conv_d(z_t) ⊕ conv_s(I)``. Every down-block residual and the mid output
leave through a zero-initialised 1×1 conv, so that at step 0 the U-Net with the
branch is exactly the U-Net without it.

Only those parts are built (as diffusers' ControlNetModel does): the U-Net's up
blocks and output layers, about half of its weights, are never allocated.
"""

from __future__ import annotations

import inspect
import math

import torch
from diffusers import UNet3DConditionModel
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from diffusers.models.unets.unet_3d_blocks import UNetMidBlock3DCrossAttn, get_down_block
from einops import rearrange, repeat
from torch import nn

from dv.errors import ConfigError
from dv.models.denoiser import count


def zero_module(module: nn.Module) -> nn.Module:
    """The module with every parameter set to zero."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def residual_channels(unet: UNet3DConditionModel | dict) -> list[int]:
    """Channel count of each down-block residual the U-Net (or a full U-Net config) hands to its up path, in order."""
    cfg = full_unet_config(unet.config if isinstance(unet, nn.Module) else unet)
    channels = [cfg["block_out_channels"][0]]
    for i, out in enumerate(cfg["block_out_channels"]):
        channels += [out] * cfg["layers_per_block"]
        if i < len(cfg["block_out_channels"]) - 1:
            channels.append(out)  # the downsampler's output
    return channels


def full_unet_config(config: dict) -> dict:
    """A UNet3DConditionModel config with every argument filled in (diffusers' defaults where it says nothing)."""
    params = inspect.signature(UNet3DConditionModel.__init__).parameters
    full = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
    full.update({k: v for k, v in dict(config).items() if k in full})
    return full


class EncoderHalf(nn.Module):
    """The U-Net's input conv, time embedding, input temporal transformer, down blocks and mid block, built as
    UNet3DConditionModel builds them (same classes, arguments and parameter names), without the up path."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        cfg = full_unet_config(config)
        channels = tuple(cfg["block_out_channels"])
        heads = cfg["num_attention_heads"] or cfg["attention_head_dim"]  # diffusers' naming quirk, as in the U-Net
        heads = (heads,) * len(channels) if isinstance(heads, int) else tuple(heads)
        time_dim = channels[0] * 4
        self.conv_in = nn.Conv2d(cfg["in_channels"], channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], True, 0)
        self.time_embedding = TimestepEmbedding(
            channels[0], time_dim, act_fn=cfg["act_fn"], cond_proj_dim=cfg["time_cond_proj_dim"]
        )
        self.transformer_in = TransformerTemporalModel(
            num_attention_heads=8,
            attention_head_dim=cfg["attention_head_dim"],
            in_channels=channels[0],
            num_layers=1,
            norm_num_groups=cfg["norm_num_groups"],
        )
        self.down_blocks = nn.ModuleList(
            get_down_block(
                kind,
                num_layers=cfg["layers_per_block"],
                in_channels=channels[max(i - 1, 0)],
                out_channels=channels[i],
                temb_channels=time_dim,
                add_downsample=i < len(channels) - 1,
                resnet_eps=cfg["norm_eps"],
                resnet_act_fn=cfg["act_fn"],
                resnet_groups=cfg["norm_num_groups"],
                cross_attention_dim=cfg["cross_attention_dim"],
                num_attention_heads=heads[i],
                downsample_padding=cfg["downsample_padding"],
                dual_cross_attention=False,
            )
            for i, kind in enumerate(cfg["down_block_types"])
        )
        self.mid_block = UNetMidBlock3DCrossAttn(
            in_channels=channels[-1],
            temb_channels=time_dim,
            resnet_eps=cfg["norm_eps"],
            resnet_act_fn=cfg["act_fn"],
            output_scale_factor=cfg["mid_block_scale_factor"],
            cross_attention_dim=cfg["cross_attention_dim"],
            num_attention_heads=heads[-1],
            resnet_groups=cfg["norm_num_groups"],
            dual_cross_attention=False,
        )


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
            layers += [
                nn.Conv2d(c_in, c_in, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(c_in, c_out, 3, padding=1, stride=2),
                nn.SiLU(),
            ]
        self.body = nn.Sequential(*layers)
        self.out = zero_module(nn.Conv2d(channels[-1], out_channels, 3, padding=1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, c0, H/f, W/f)."""
        return self.out(self.body(image))


class RetentionBranch(nn.Module):
    """The Image Retention branch: residuals for the U-Net's skips and mid block from z_t and the image.

    DreamVideo's model family (a ConditioningBranch): all of the branch trains, beside the U-Net layers the
    module's `trainable` names.
    """

    paper_trainable = ("DreamVideo §5.1", 680e6)

    def __init__(
        self,
        unet_config: dict,
        downscale: int,
        fusion: str = "add",
        image_channels: tuple[int, ...] = (16, 32, 96, 256),
        residual_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if fusion not in ("add", "concat"):
            raise ConfigError(f"retention.fusion must be 'add' or 'concat', not {fusion!r}")
        if not residual_scale > 0:
            raise ConfigError(f"retention.residual_scale must be > 0, not {residual_scale}")
        self.residual_scale = residual_scale
        # The U-Net's parts the branch copies, and only those.
        half = EncoderHalf(unet_config)
        self.fusion = fusion
        self.conv_d = half.conv_in
        self.time_proj = half.time_proj
        self.time_embedding = half.time_embedding
        self.transformer_in = half.transformer_in
        self.down_blocks = half.down_blocks
        self.mid_block = half.mid_block
        c0, c_last = half.conv_in.out_channels, half.mid_block.resnets[0].out_channels
        self.conv_s = ImageEmbedding(c0, downscale, tuple(image_channels))
        if fusion == "concat":
            # [z_d, z_s] -> c0 channels, initialised to pass z_d through unchanged.
            self.fuse = nn.Conv2d(2 * c0, c0, 1)
            with torch.no_grad():
                self.fuse.weight.zero_()
                self.fuse.weight[:, :c0, 0, 0].copy_(torch.eye(c0))
                self.fuse.bias.zero_()
        self.zero_convs = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in residual_channels(unet_config))
        self.mid_zero_conv = zero_module(nn.Conv2d(c_last, c_last, 1))

    @classmethod
    def from_unet(
        cls,
        unet: UNet3DConditionModel,
        downscale: int,
        fusion: str = "add",
        image_channels: tuple[int, ...] = (16, 32, 96, 256),
        residual_scale: float = 1.0,
    ) -> RetentionBranch:
        """A branch whose copied parts start from the U-Net's weights (ControlNet-style)."""
        branch = cls(dict(unet.config), downscale, fusion, image_channels, residual_scale)
        for name in ("conv_in", "time_embedding", "transformer_in", "down_blocks", "mid_block"):
            target = branch.conv_d if name == "conv_in" else getattr(branch, name)
            target.load_state_dict(getattr(unet, name).state_dict())
        return branch

    def encode_image(self, image: torch.Tensor, stride: torch.Tensor | None = None) -> torch.Tensor:
        """z_s = conv_s(I): (B, 3, H, W) in [-1, 1] -> (B, c0, h, w); computed once per video when sampling.
        The frame stride is not a condition of this family."""
        return self.conv_s(image)

    def trains_unet_parameter(self, name: str, by_recipe: bool) -> bool:
        """The U-Net trains as the recipe says (DreamVideo: its temporal layers)."""
        return by_recipe

    def trained_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Every weight of the branch trains."""
        return list(self.named_parameters())

    def parameter_rows(self, unet: UNet3DConditionModel) -> list[tuple[str, int]]:
        """`dv info`: the branch, and the U-Net share it does not build."""
        return [("retention branch", count(self.parameters()))]

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

        down = tuple(conv(r) * self.residual_scale for conv, r in zip(self.zero_convs, residuals))
        return down, self.mid_zero_conv(h) * self.residual_scale

    def unet_inputs(
        self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, image_features: torch.Tensor
    ) -> dict[str, torch.Tensor | tuple[torch.Tensor, ...]]:
        """The U-Net keyword arguments this branch adds (Denoiser's protocol): the down and mid residuals."""
        down, mid = self(sample, timestep, text, image_features)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
