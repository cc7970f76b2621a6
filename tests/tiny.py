"""Tiny configurations of dv's real classes, shared by the tests (seeded, CPU, seconds)."""

from __future__ import annotations

from dv.lit.dreamvideo import DreamVideoModule, RetentionConfig
from dv.lit.dynamicrafter import DynamiCrafterModule
from dv.lit.t2v import OptimConfig, T2VModule
from dv.models.autoencoder import AutoencoderConfig
from dv.models.backbone import BackboneConfig
from dv.models.dynamicrafter import ProjectionConfig
from dv.models.image_encoder import ImageEncoderConfig
from dv.models.text import TextEncoderConfig

TINY_UNET = dict(
    sample_size=8,
    in_channels=12,
    out_channels=12,
    block_out_channels=(16, 32),
    layers_per_block=1,
    norm_num_groups=8,
    cross_attention_dim=32,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
)


def tiny_backbone(**overrides) -> BackboneConfig:
    """A seconds-fast backbone: UNet3D (16, 32), space-to-depth ×2 autoencoder, 2-layer OpenCLIP text tower."""
    cfg = BackboneConfig(
        unet=dict(TINY_UNET),
        autoencoder=AutoencoderConfig(kind="space_to_depth", factor=2),
        text=TextEncoderConfig(text_cfg=dict(width=32, heads=2, layers=2, context_length=16), embed_dim=32),
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tiny_dreamvideo(**kwargs) -> DreamVideoModule:
    """A built tiny DreamVideoModule."""
    kwargs.setdefault("optim", OptimConfig(lr=1e-3, warmup_steps=1))
    module = DreamVideoModule(backbone=tiny_backbone(), retention=RetentionConfig(image_channels=(8, 16)), **kwargs)
    module.configure_model()
    return module


def tiny_t2v(**kwargs) -> T2VModule:
    """A built tiny T2VModule."""
    kwargs.setdefault("optim", OptimConfig(lr=1e-3, warmup_steps=1))
    module = T2VModule(backbone=tiny_backbone(), **kwargs)
    module.configure_model()
    return module


TINY_VISION = dict(image_size=16, patch_size=4, width=32, layers=1, head_width=16)
"""A one-layer OpenCLIP ViT: 16 patch tokens of width 32."""


def tiny_dynamicrafter(num_frames: int = 4, **kwargs) -> DynamiCrafterModule:
    """A built tiny DynamiCrafterModule (2 image queries per frame, for `num_frames` frames)."""
    kwargs.setdefault("optim", OptimConfig(lr=1e-3, warmup_steps=1))
    module = DynamiCrafterModule(
        backbone=tiny_backbone(),
        image_encoder=ImageEncoderConfig(vision_cfg=dict(TINY_VISION), embed_dim=32),
        projection=ProjectionConfig(queries=2, num_frames=num_frames, hidden_dims=32, depth=1, heads=2, dim_head=16),
        **kwargs,
    )
    module.configure_model()
    return module
