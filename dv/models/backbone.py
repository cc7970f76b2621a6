"""The text-to-video backbone: diffusers UNet3DConditionModel, a frame autoencoder and an OpenCLIP text encoder."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import UNet3DConditionModel
from einops import rearrange
from torch import nn

from dv.errors import ConfigError
from dv.models import pretrained
from dv.models.autoencoder import AutoencoderConfig, FrameAutoencoder
from dv.models.speed import apply_checkpointing, apply_compile
from dv.models.text import TextEncoder, TextEncoderConfig

TEMPORAL_MARKERS = ("temp_convs", "temp_attentions", "transformer_in")
"""Name parts of the U-Net's temporal layers (Temp-Conv, Temp-Attn, input temporal transformer)."""


@dataclass
class BackboneConfig:
    """A T2V latent diffusion backbone: U-Net config and weights, autoencoder, text encoder."""

    unet: dict = field(default_factory=dict)
    """UNet3DConditionModel config overrides; empty = the ModelScope text-to-video-ms-1.7b U-Net."""
    unet_weights: list[str] = field(default_factory=list)
    """Local U-Net weights applied in order: a diffusers `unet/` folder, a ModelScope
    text2video_pytorch_model.pth, or a dv export (e.g. the temporal layers of a T2V run)."""
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    """The frozen frame autoencoder."""
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """The frozen text encoder."""
    init_seed: int = 0
    """Seed of the random initialisation of whatever no weights file covers (so a resumed run rebuilds it identically)."""
    checkpointing: str | list[str] = "none"
    """Activation checkpointing of U-Net and retention-branch blocks (recomputed in backward, less memory):
    'none', 'all', 'high-res' (the full-resolution blocks), or a list of 'high-res', 'down', 'mid', 'up' and block-name patterns such as 'unet.up_blocks.*' or 'branch.*'."""
    compile: bool = False
    """torch.compile the U-Net and the retention branch (the first steps compile, for minutes at full size)."""
    compile_mode: str | None = None
    """torch.compile mode: None/'default', 'reduce-overhead' (CUDA graphs), 'max-autotune', 'max-autotune-no-cudagraphs'."""
    compile_regions: str = "model"
    """What `compile` compiles: 'model' (the whole U-Net and branch) or 'layers' (each ResnetBlock2D, TemporalConvLayer,
    Transformer2DModel and TransformerTemporalModel: repeated layers share graphs, so the first step compiles in minutes)."""
    compile_backend: str = "inductor"
    """torch.compile backend: 'inductor' (generates kernels), or 'aot_eager' (traces forward and backward without
    generating code: graph breaks and recompiles show in seconds, the step runs at eager speed)."""


def is_temporal(name: str) -> bool:
    """True for parameters of the U-Net's temporal layers."""
    return any(marker in name for marker in TEMPORAL_MARKERS)


class Backbone(nn.Module):
    """U-Net + frozen autoencoder + frozen text encoder, built from a BackboneConfig."""

    def __init__(self, config: BackboneConfig, load_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.init_seed)
            self.unet = UNet3DConditionModel(**config.unet)
            self.autoencoder = FrameAutoencoder(config.autoencoder)
            self.text = TextEncoder(config.text)
        if self.unet.config.cross_attention_dim != self.text.width:
            raise ConfigError(
                f"unet.cross_attention_dim is {self.unet.config.cross_attention_dim} but the text encoder's width is "
                f"{self.text.width}; make them equal"
            )
        if load_weights:
            self.load_weights()
        self.autoencoder.requires_grad_(False).eval()
        self.text.requires_grad_(False).eval()

    def load_weights(self) -> None:
        """Load every local weights file the config names."""
        if not (self.config.unet_weights or self.config.autoencoder.weights or self.config.text.checkpoint):
            return
        for path in self.config.unet_weights:
            pretrained.load_unet_weights(path, self.unet)
        if self.config.autoencoder.weights and self.config.autoencoder.kind == "kl":
            pretrained.load_vae_weights(self.config.autoencoder.weights, self.autoencoder.model)
        if self.config.text.checkpoint:
            pretrained.load_open_clip(self.config.text.checkpoint, self.text.tower, text_only=True)

    def apply_speed_settings(self, branch: nn.Module | None = None) -> list[str]:
        """Checkpoint and compile the U-Net (and the branch) as the config says; returns the checkpointed blocks."""
        names = apply_checkpointing(self.unet, branch, self.config.checkpointing)
        if self.config.compile:
            apply_compile(
                self.unet, branch, self.config.compile_mode, self.config.compile_regions, self.config.compile_backend
            )
        return names

    def train(self, mode: bool = True) -> Backbone:
        """Switch the U-Net's mode; the frozen autoencoder and text encoder stay in eval mode."""
        self.unet.train(mode)
        return self

    @torch.no_grad()
    def encode_text(
        self, captions: list[str], embeddings: torch.Tensor | None = None, dropped: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Text embeddings (B, L, D) of the captions; '' gives the cached empty-prompt embedding.

        `embeddings` are the captions' own (cached by `dv cache-latents --text`), used instead of running the
        encoder. `dropped` (B,) marks captions to replace by the empty prompt (condition dropout), on the device,
        never read back.
        """
        null = self.text.empty_prompt(len(captions))
        if dropped is not None:
            dropped = dropped.to(null.device, non_blocking=True)  # masks drawn on the host (no generator) included
        if embeddings is None and all(c == "" for c in captions):
            emb = null.clone()
        elif embeddings is not None:
            emb = embeddings.to(null.device, null.dtype, non_blocking=True)
        else:
            emb = self.text(captions)
        if "" in captions:  # a host list: knowing it costs no sync
            empty = torch.tensor([c == "" for c in captions])
            if null.is_cuda:
                empty = empty.pin_memory()
            dropped = empty.to(null.device, non_blocking=True) | (False if dropped is None else dropped)
        if dropped is not None:
            emb = torch.where(rearrange(dropped, "b -> b 1 1"), null, emb)
        return emb
