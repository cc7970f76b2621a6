"""DynamiCrafter-style dual-stream image conditioning of the T2V U-Net (arXiv 2310.12190, §3.2).

- **Text-aligned rich image embedding**: the CLIP image encoder's last-layer patch tokens, projected by
  a query transformer P (diffusers' IPAdapterPlusImageProjection: learnable queries that cross-attend
  to the patch tokens) into image context tokens, Q per frame; the U-Net reads them through a second
  cross-attention in every spatial attn2 (dv/models/dual_attention.py).
- **Visual detail modulation**: the reference image's latent is concatenated with every frame's noisy
  latent; the U-Net's conv_in becomes `ReferenceConvIn` (the backbone's conv on z_t plus a
  zero-initialised conv on the reference latent: a conv_in widened from C to 2C input channels,
  kept as two parts so that the new weights can train alone).
- **Frame-stride conditioning**: the clip's frame stride, embedded sinusoidally and passed through
  an MLP whose last layer starts at zero, is added to the timestep features through diffusers'
  `timestep_cond` (the MLP is installed as the U-Net's `time_embedding.cond_proj`).

Every new path starts at zero: at step 0 the adapted U-Net predicts what the backbone predicts.
Given plain inputs (C channels, text tokens only, no stride) it is the backbone's own input path,
so the zero-shot baseline still runs on it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from diffusers import UNet3DConditionModel
from diffusers.models.embeddings import IPAdapterPlusImageProjection, Timesteps
from einops import repeat
from torch import nn

from dv.errors import ConfigError
from dv.models.autoencoder import FrameAutoencoder
from dv.models.denoiser import count
from dv.models.dual_attention import dual_attention_processors, set_dual_cross_attention
from dv.models.image_encoder import ImageEncoder, ImageEncoderConfig
from dv.models.retention import zero_module

NEW_UNET_PARTS = ("conv_in.reference.", "time_embedding.cond_proj.", ".processor.")
"""Name parts of the parameters the adaptation adds to the U-Net (what `stage: projection` trains there)."""

STAGES = ("projection", "all")
"""DynamiCrafter's two training stages (§4.1): P and the U-Net's new weights, then everything."""


@dataclass
class ProjectionConfig:
    """P, the query transformer from CLIP patch tokens to image context tokens."""

    queries: int = 16
    """Image tokens per frame (DynamiCrafter: 16)."""
    num_frames: int = 16
    """Frames with their own queries (the clip length trained on); 1 shares the same Q tokens across frames."""
    hidden_dims: int = 1024
    """Width of the query transformer."""
    depth: int = 4
    """Query-transformer blocks (cross-attention to [patch tokens; queries], then a feed-forward)."""
    heads: int = 12
    dim_head: int = 64
    ffn_ratio: float = 4.0


class DynamiCrafterCondition(NamedTuple):
    """The image condition of one batch: what the sampler batches, guides and passes to the denoiser."""

    tokens: torch.Tensor
    """Image context tokens (B, F·Q, D)."""
    latent: torch.Tensor
    """The reference image's scaled latent (B, c, h, w)."""
    stride: torch.Tensor
    """Frame stride of the video (B,), float."""


class ReferenceConvIn(nn.Module):
    """conv_in over [z_t, reference latent]: the backbone's conv on z_t plus a zero-initialised conv on the reference."""

    def __init__(self, base: nn.Conv2d, reference_channels: int) -> None:
        super().__init__()
        self.base = base
        self.reference = zero_module(
            nn.Conv2d(reference_channels, base.out_channels, base.kernel_size, padding=base.padding, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, c [+ c_ref], h, w) -> (N, c0, h, w); without reference channels, the backbone's conv alone."""
        c = self.base.in_channels
        if x.shape[1] == c:
            return self.base(x)
        return self.base(x[:, :c]) + self.reference(x[:, c:])


class StrideEmbedding(nn.Module):
    """Frame stride (B,) -> features (B, channels) added to the timestep's sinusoidal features; zero at the start."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj = Timesteps(channels, flip_sin_to_cos=True, downscale_freq_shift=0)  # as the U-Net's time_proj
        self.mlp = nn.Sequential(
            nn.Linear(channels, 4 * channels), nn.SiLU(), zero_module(nn.Linear(4 * channels, channels))
        )

    def forward(self, stride: torch.Tensor) -> torch.Tensor:
        """The stride's features, in the MLP's dtype."""
        return self.mlp(self.proj(stride).to(self.mlp[0].weight.dtype))


def adapt_unet(
    unet: UNet3DConditionModel, reference_channels: int, num_text_tokens: int, queries: int, image_scale: float = 1.0
) -> None:
    """Add the reference-latent input, the dual cross-attention and the stride embedding to a (loaded) U-Net."""
    if isinstance(unet.conv_in, ReferenceConvIn):
        raise ConfigError("this U-Net is already adapted for DynamiCrafter conditioning")
    unet.conv_in = ReferenceConvIn(unet.conv_in, reference_channels)
    unet.register_to_config(in_channels=unet.config.in_channels + reference_channels)
    # diffusers' timestep_cond: TimestepEmbedding adds cond_proj(timestep_cond) to the sinusoidal timestep features.
    unet.time_embedding.cond_proj = StrideEmbedding(unet.time_embedding.linear_1.in_features)
    set_dual_cross_attention(unet, num_text_tokens, queries, image_scale)


def is_new_unet_parameter(name: str) -> bool:
    """True for U-Net parameters added by adapt_unet."""
    return any(part in name for part in NEW_UNET_PARTS)


@torch.no_grad()
def reference_latent(autoencoder: FrameAutoencoder, image: torch.Tensor) -> torch.Tensor:
    """The scaled latent (B, c, h, w) of reference images (B, 3, H, W): the autoencoder's posterior mean."""
    mean, _ = autoencoder.posterior(image[:, :, None])
    return mean[:, :, 0] * autoencoder.scaling_factor


class DynamiCrafterBranch(nn.Module):
    """Image encoder (frozen) and projection P: reference images -> DynamiCrafterCondition, and the U-Net inputs.

    The DynamiCrafter-style model family (a ConditioningBranch): `attach` adapts a backbone's U-Net and builds
    the branch; at `stage: projection` P and the U-Net's new weights train, at `stage: all` the whole U-Net too.
    """

    paper_trainable = None  # DynamiCrafter reports no trainable-parameter count for this setting

    def __init__(
        self,
        encoder: ImageEncoderConfig,
        projection: ProjectionConfig,
        context_dim: int,
        encode_reference: Callable[[torch.Tensor], torch.Tensor],
        frame_stride: int,
        load_weights: bool = True,
        stage: str = "projection",
    ) -> None:
        """
        Args:
            encoder: the CLIP image encoder.
            projection: P.
            context_dim: the U-Net's cross_attention_dim (width of the image tokens).
            encode_reference: images (B, 3, H, W) in [-1, 1] -> scaled latents (B, c, h, w); the backbone's
                frozen autoencoder, passed as a function so that it stays registered in one place.
            frame_stride: the stride of images encoded without one (sampling, batches from stride-less shards).
            load_weights: load the encoder's checkpoint (off on the meta device).
            stage: what trains (see the class docstring).
        """
        super().__init__()
        if stage not in STAGES:
            raise ConfigError(f"model.stage must be 'projection' or 'all', not {stage!r}")
        if projection.queries < 1 or projection.num_frames < 1:
            raise ConfigError(
                f"projection.queries and num_frames must be >= 1, not {projection.queries} and {projection.num_frames}"
            )
        if frame_stride < 1:
            raise ConfigError(f"frame_stride must be >= 1, not {frame_stride}")
        self.image_encoder = ImageEncoder(encoder, load_weights=load_weights)
        self.projection = IPAdapterPlusImageProjection(
            embed_dims=self.image_encoder.width,
            output_dims=context_dim,
            hidden_dims=projection.hidden_dims,
            depth=projection.depth,
            dim_head=projection.dim_head,
            heads=projection.heads,
            num_queries=projection.queries * projection.num_frames,
            ffn_ratio=projection.ffn_ratio,
        )
        self.queries, self.num_frames = projection.queries, projection.num_frames
        self.frame_stride = frame_stride
        self.encode_reference = encode_reference
        self.stage = stage

    @classmethod
    def attach(
        cls,
        unet: UNet3DConditionModel,
        autoencoder: FrameAutoencoder,
        num_text_tokens: int,
        encoder: ImageEncoderConfig,
        projection: ProjectionConfig,
        frame_stride: int,
        image_scale: float = 1.0,
        stage: str = "projection",
        load_weights: bool = True,
    ) -> DynamiCrafterBranch:
        """Adapt a (loaded) U-Net (reference input, dual cross-attention, stride embedding) and build encoder + P;
        reference latents come from `autoencoder`, which stays registered where it is."""
        branch = cls(
            encoder,
            projection,
            context_dim=unet.config.cross_attention_dim,
            encode_reference=functools.partial(reference_latent, autoencoder),
            frame_stride=frame_stride,
            load_weights=load_weights,
            stage=stage,
        )
        adapt_unet(
            unet,
            reference_channels=autoencoder.latent_channels,
            num_text_tokens=num_text_tokens,
            queries=projection.queries,
            image_scale=image_scale,
        )
        return branch

    def trains_unet_parameter(self, name: str, by_recipe: bool) -> bool:
        """The U-Net's new weights train; at stage 'all' every U-Net weight does."""
        return self.stage == "all" or is_new_unet_parameter(name)

    def trained_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """P trains; the image encoder stays frozen."""
        return [(f"projection.{n}", p) for n, p in self.projection.named_parameters()]

    def parameter_rows(self, unet: UNet3DConditionModel) -> list[tuple[str, int]]:
        """`dv info` rows of what this family adds to the U-Net and of the branch's parts."""
        processors = list(dual_attention_processors(unet).values())
        return [
            (
                f"U-Net's new image K/V and λ ({len(processors)} spatial cross-attentions)",
                count(p for proc in processors for p in proc.parameters()),
            ),
            (
                "U-Net's new stride embedding (time_embedding.cond_proj)",
                count(unet.time_embedding.cond_proj.parameters()),
            ),
            ("U-Net's new reference-latent weights of conv_in", count(unet.conv_in.reference.parameters())),
            ("image encoder (CLIP vision tower, frozen)", count(self.image_encoder.parameters())),
            ("projection P (query transformer)", count(self.projection.parameters())),
        ]

    def train(self, mode: bool = True) -> DynamiCrafterBranch:
        """P follows `mode`; the image encoder stays in eval mode."""
        super().train(mode)
        self.image_encoder.eval()
        return self

    def encode_image(self, image: torch.Tensor, stride: torch.Tensor | None = None) -> DynamiCrafterCondition:
        """The condition of reference images (B, 3, H, W) in [-1, 1] at frame strides (B,) (default: frame_stride)."""
        tokens = self.projection(self.image_encoder(image).to(self.projection.latents.dtype))
        with torch.no_grad():
            latent = self.encode_reference(image)
        if stride is None:
            stride = torch.full((image.shape[0],), self.frame_stride, device=image.device)
        return DynamiCrafterCondition(tokens, latent, stride.to(device=image.device, dtype=torch.float32))

    def unet_inputs(
        self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, condition: DynamiCrafterCondition
    ) -> dict[str, torch.Tensor]:
        """The U-Net's sample, context and timestep_cond for noisy latents (B, c, T, h, w) under the condition."""
        frames = sample.shape[2]
        if self.num_frames not in (1, frames):
            raise ConfigError(
                f"this model's image queries are for {self.num_frames} frames, not {frames}; sample {self.num_frames} frames"
            )
        reference = repeat(condition.latent.to(sample.dtype), "b c h w -> b c t h w", t=frames)
        return {
            "sample": torch.cat([sample, reference], dim=1),
            "encoder_hidden_states": torch.cat([text, condition.tokens.to(text.dtype)], dim=1),
            "timestep_cond": condition.stride,
        }
