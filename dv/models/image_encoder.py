"""OpenCLIP image encoder giving all patch tokens of its last layer (DynamiCrafter's F_vis)."""

from __future__ import annotations

from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIPVisionCfg, _build_vision_tower
from torch import nn

from dv.errors import ConfigError
from dv.models.pretrained import load_open_clip_vision


@dataclass
class ImageEncoderConfig:
    """How to build the frozen CLIP image encoder: an OpenCLIP model name or an explicit vision config."""

    model_name: str = "ViT-H-14"
    """OpenCLIP model whose vision tower is used (ViT-H-14: the counterpart of ModelScope's text encoder)."""
    vision_cfg: dict | None = None
    """Explicit OpenCLIP vision config (width, layers, patch_size, image_size, ...); overrides the named model's."""
    embed_dim: int | None = None
    """Joint embedding width of the CLIP model; taken from the named model when None."""
    checkpoint: str | None = None
    """Local OpenCLIP checkpoint (open_clip_pytorch_model.bin / .safetensors) whose `visual.*` weights are loaded;
    None leaves random weights."""


class ImageEncoder(nn.Module):
    """Frozen OpenCLIP vision tower: images in [-1, 1] -> (B, patches, width) last-layer patch tokens."""

    def __init__(self, config: ImageEncoderConfig, load_weights: bool = True) -> None:
        super().__init__()
        named = open_clip.get_model_config(config.model_name)
        if named is None and config.vision_cfg is None:
            raise ConfigError(
                f"unknown OpenCLIP model {config.model_name!r}; give image_encoder.vision_cfg or one of open_clip.list_models()"
            )
        vision_cfg = dict(named["vision_cfg"]) if named else {}
        vision_cfg.update(config.vision_cfg or {})
        if isinstance(vision_cfg.get("layers"), (list, tuple)) or vision_cfg.get("timm_model_name"):
            raise ConfigError(f"image_encoder needs an OpenCLIP ViT, not {config.model_name!r}")
        # output_tokens: the tower returns the patch tokens of its last layer (after ln_post) besides the pooled embedding.
        vision_cfg["output_tokens"] = True
        embed_dim = config.embed_dim or (named["embed_dim"] if named else vision_cfg.get("width", 768))
        self.config = config
        self.tower = _build_vision_tower(embed_dim, CLIPVisionCfg(**vision_cfg))
        self.width = vision_cfg.get("width", CLIPVisionCfg.width)
        size = self.tower.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.register_buffer("mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)
        if load_weights and config.checkpoint:
            load_open_clip_vision(config.checkpoint, self.tower)
        self.requires_grad_(False).eval()

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> the tower's input: resized to its image size, CLIP-normalised."""
        x = (image.float() + 1) / 2
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        return ((x - self.mean) / self.std).to(self.mean.dtype)

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, patches, width) of images (B, 3, H, W) in [-1, 1]."""
        _, tokens = self.tower(self.preprocess(image))
        return tokens

    def train(self, mode: bool = True) -> ImageEncoder:
        """The frozen encoder stays in eval mode whatever is asked."""
        return super().train(False)
