"""Dual cross-attention (DynamiCrafter Eq. 4) as a diffusers attention processor.

    out = softmax(Q K_txtᵀ/√d) V_txt + λ · softmax(Q K_imgᵀ/√d) V_img

Q, K_txt, V_txt and the output projection are the U-Net's own attn2 weights; K_img, V_img and λ
belong to the processor (an nn.Module, so they are registered under `...attn2.processor.*`,
trained and checkpointed with the U-Net). V_img starts at zero, so at step 0 every layer
returns exactly its text cross-attention.

The image tokens travel in `encoder_hidden_states`, after the text tokens: UNet3DConditionModel
repeats that tensor per frame and hands it only to the spatial transformers (its temporal
transformers attend over frames and are given no context), so no temporal layer sees them.
The first `num_text_tokens` are the text; the rest are the image tokens, either Q shared by
all frames or F·Q, frame f using tokens [f·Q, (f+1)·Q) (DynamiCrafter's per-frame queries).

diffusers' IPAdapterAttnProcessor2_0 is the nearest existing design, but its scale is a fixed
float, it finds the image tokens by counting from the end (deprecated for tensors) and has no
per-frame tokens; this processor is written for those three needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet3DConditionModel
from diffusers.models.attention_processor import Attention
from einops import rearrange
from torch import nn

from dv.errors import ConfigError
from dv.models.backbone import is_temporal


class DualCrossAttnProcessor(nn.Module):
    """attn2 of a spatial transformer: text cross-attention plus λ · cross-attention to per-frame image tokens."""

    def __init__(self, attn: Attention, num_text_tokens: int, queries: int, image_scale: float = 1.0) -> None:
        """
        Args:
            attn: the attention layer this processor serves (its K/V shapes, and K_img's starting weights).
            num_text_tokens: how many leading context tokens are text.
            queries: image tokens per frame (Q).
            image_scale: λ at the start (learnable).
        """
        super().__init__()
        if num_text_tokens < 1 or queries < 1:
            raise ConfigError(
                f"the dual cross-attention needs text and image tokens, not {num_text_tokens} and {queries}"
            )
        self.num_text_tokens = num_text_tokens
        self.queries = queries
        self.to_k_img = nn.Linear(attn.to_k.in_features, attn.to_k.out_features, bias=False)
        self.to_v_img = nn.Linear(attn.to_v.in_features, attn.to_v.out_features, bias=False)
        with torch.no_grad():
            # K_img starts as K_txt (the image tokens are meant to be text-aligned); V_img at zero keeps step 0 exact.
            self.to_k_img.weight.copy_(attn.to_k.weight)
            self.to_v_img.weight.zero_()
        # λ is a 1-element vector, not a 0-d scalar: FSDP flattens parameters and refuses scalar ones.
        self.image_scale = nn.Parameter(torch.full((1,), float(image_scale)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Weights saved while λ was a 0-d scalar (dv 0.x exports, the shipped tiny model) load as its 1-vector."""
        key = prefix + "image_scale"
        if key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def frame_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """Each row's own image tokens (rows are (batch frame)): (R, F·Q, D) -> (R, Q, D)."""
        rows, n, _ = image.shape
        if n % self.queries:
            raise ConfigError(f"{n} image tokens is not a multiple of {self.queries} queries per frame")
        frames = n // self.queries
        if frames == 1:
            return image
        if rows % frames:
            raise ConfigError(f"the image tokens are for {frames} frames but the U-Net is given {rows} frame rows")
        per_frame = rearrange(image, "r (f q) d -> r f q d", q=self.queries)
        frame = torch.arange(rows, device=image.device) % frames  # rows are (b t): row r is frame r mod T
        return per_frame[torch.arange(rows, device=image.device), frame]

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The layer's output for hidden states (R, N, C) and context (R, L_txt [+ image tokens], D)."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_grid = None
        if hidden_states.ndim == 4:
            image_grid = hidden_states.shape[-2:]
            hidden_states = rearrange(hidden_states, "r c h w -> r (h w) c")
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            text, image = hidden_states, None
        else:
            if attn.norm_cross:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            text = encoder_hidden_states[:, : self.num_text_tokens]
            image = encoder_hidden_states[:, self.num_text_tokens :]
            image = self.frame_tokens(image) if image.shape[1] else None  # text only: the backbone's layer
        rows = hidden_states.shape[0]
        if attention_mask is not None:  # masks apply to the text tokens, as in diffusers' IP-Adapter processor
            attention_mask = attn.prepare_attention_mask(attention_mask, text.shape[1], rows)
            attention_mask = attention_mask.view(rows, attn.heads, -1, attention_mask.shape[-1])

        query = self._heads(attn, attn.to_q(hidden_states), attn.norm_q)
        out = F.scaled_dot_product_attention(
            query,
            self._heads(attn, attn.to_k(text), attn.norm_k),
            self._heads(attn, attn.to_v(text)),
            attn_mask=attention_mask,
        )
        if image is not None:
            out_image = F.scaled_dot_product_attention(
                query,
                self._heads(attn, self.to_k_img(image), attn.norm_k),
                self._heads(attn, self.to_v_img(image)),
            )
            out = out + self.image_scale.to(out.dtype) * out_image
        out = rearrange(out, "r h n d -> r n (h d)").to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # output projection, dropout
        if image_grid is not None:
            out = rearrange(out, "r (h w) c -> r c h w", h=image_grid[0], w=image_grid[1])
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    @staticmethod
    def _heads(attn: Attention, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """(R, N, heads·d) -> (R, heads, N, d), with the layer's per-head norm when it has one."""
        x = rearrange(x, "r n (h d) -> r h n d", h=attn.heads)
        return norm(x) if norm is not None else x


def spatial_cross_attention_names(unet: UNet3DConditionModel) -> list[str]:
    """Processor names of the U-Net's spatial cross-attention layers (attn2 of the spatial transformers)."""
    return [n for n in unet.attn_processors if n.endswith("attn2.processor") and not is_temporal(n)]


def set_dual_cross_attention(
    unet: UNet3DConditionModel, num_text_tokens: int, queries: int, image_scale: float = 1.0
) -> list[str]:
    """Give every spatial cross-attention layer a DualCrossAttnProcessor (others keep theirs); returns their names."""
    names = spatial_cross_attention_names(unet)
    if not names:
        raise ConfigError("the U-Net has no spatial cross-attention layer to take image tokens (no CrossAttn blocks)")
    layers = dict(unet.named_modules())
    processors = dict(unet.attn_processors)
    for name in names:
        attn = layers[name.removesuffix(".processor")]
        processors[name] = DualCrossAttnProcessor(attn, num_text_tokens, queries, image_scale)
    unet.set_attn_processor(processors)
    return names


def dual_attention_processors(unet: UNet3DConditionModel) -> dict[str, DualCrossAttnProcessor]:
    """The U-Net's dual cross-attention processors by name."""
    return {n: p for n, p in unet.attn_processors.items() if isinstance(p, DualCrossAttnProcessor)}
