"""OpenCLIP text encoder with penultimate-layer token embeddings and a cached empty prompt."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import open_clip
import torch
from open_clip.model import CLIPTextCfg, _build_text_tower
from torch import nn

from dv.errors import ConfigError


@dataclass
class TextEncoderConfig:
    """How to build the text encoder: an OpenCLIP model name or an explicit text config."""

    model_name: str = "ViT-H-14"
    """OpenCLIP model whose text tower and tokenizer are used (ViT-H-14 for ModelScope/DreamVideo)."""
    text_cfg: dict | None = None
    """Explicit OpenCLIP text config (width, heads, layers, ...); overrides the named model's (tiny recipes)."""
    embed_dim: int | None = None
    """Joint embedding width of the CLIP model; taken from the named model when None."""
    checkpoint: str | None = None
    """Local OpenCLIP checkpoint (open_clip_pytorch_model.bin / .safetensors); None leaves random weights."""
    layer: str = "penultimate"
    """Which transformer output is the conditioning: 'penultimate' (ModelScope, SD 2) or 'last'."""


class TextEncoder(nn.Module):
    """Frozen OpenCLIP text tower: captions -> (B, context_length, width) token embeddings."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        if config.layer not in ("penultimate", "last"):
            raise ConfigError(f"text.layer must be 'penultimate' or 'last', not {config.layer!r}")
        named = open_clip.get_model_config(config.model_name)
        if named is None and config.text_cfg is None:
            raise ConfigError(
                f"unknown OpenCLIP model {config.model_name!r}; give text.text_cfg or one of open_clip.list_models()"
            )
        text_cfg = dict(named["text_cfg"]) if named else {}
        text_cfg.update(config.text_cfg or {})
        embed_dim = config.embed_dim or (named["embed_dim"] if named else text_cfg.get("width", 512))
        self.config = config
        self.tower = _build_text_tower(embed_dim, CLIPTextCfg(**text_cfg))
        self.context_length = self.tower.context_length
        # The BPE vocabulary ships with open_clip: no download.
        self.tokenizer = open_clip.SimpleTokenizer(context_length=self.context_length)
        self.width = self.tower.width
        self._empty: torch.Tensor | None = None

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """Token ids (B, context_length); captions longer than the context are truncated with a warning."""
        for caption in captions:
            # +2: the start and end tokens the tokenizer adds.
            if len(self.tokenizer.encode(caption)) + 2 > self.context_length:
                warnings.warn(f"caption truncated to {self.context_length} tokens: {caption[:60]!r}...", stacklevel=2)
                break
        return self.tokenizer(captions)

    def forward(self, captions: list[str]) -> torch.Tensor:
        """Token embeddings (B, context_length, width) of the captions."""
        device = self.tower.token_embedding.weight.device
        tokens = self.tokenize(list(captions))
        if device.type == "cuda":
            # From pinned memory the copy is queued behind the GPU's work instead of waiting for it.
            tokens = tokens.pin_memory()
        tokens = tokens.to(device, non_blocking=True)
        x, attn_mask = self.tower._embeds(tokens)
        blocks = self.tower.transformer.resblocks
        last = len(blocks) - 1 if self.config.layer == "penultimate" else len(blocks)
        if not self.tower.transformer.batch_first:
            x = x.transpose(0, 1)
        for block in blocks[:last]:
            x = block(x, attn_mask=attn_mask)
        if not self.tower.transformer.batch_first:
            x = x.transpose(0, 1)
        return self.tower.ln_final(x)

    @torch.no_grad()
    def empty_prompt(self, batch_size: int) -> torch.Tensor:
        """The empty-prompt embedding (the null text condition), computed once and repeated."""
        device = self.tower.token_embedding.weight.device
        if self._empty is None or self._empty.device != device:
            self._empty = self([""])
        return self._empty.expand(batch_size, -1, -1)

    def _apply(self, fn, recurse: bool = True):
        # Moving or casting the tower invalidates the cached empty-prompt embedding.
        self._empty = None
        return super()._apply(fn, recurse)
