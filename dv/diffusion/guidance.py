"""Classifier-free guidance with text and image conditions (DreamVideo Eq. 4 and Eq. 5).

Eq. 5:  ε̂ = ε(∅,∅) + s_t·(ε(c_t,∅) − ε(∅,∅)) + s_i·(ε(∅,c_i) − ε(∅,∅))
Eq. 4 is the same with one condition. The predictions come from **one** batched
denoiser call; a condition whose scale is 0, or which is absent, is left out of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dv.errors import ConfigError

DenoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]
"""ε(z_t (B, c, T, h, w), t (B,), text (B, L, D), image features or None).

Image features are whatever the model's branch encodes a reference image to: a tensor (DreamVideo's
z_s, (B, c0, h, w)) or a tuple of tensors (DynamiCrafter's tokens, latent and stride), batched on dim 0."""


def cat_features(features: list) -> Any:
    """Concatenate image features along the batch: tensors, or tuples (named or not) of tensors, field by field."""
    first = features[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(features)
    fields = [cat_features(list(parts)) for parts in zip(*features)]
    return type(first)(*fields) if hasattr(first, "_fields") else type(first)(fields)


def double_guidance(
    eps_uncond: torch.Tensor,
    eps_text: torch.Tensor | None,
    eps_image: torch.Tensor | None,
    s_text: float,
    s_image: float,
) -> torch.Tensor:
    """Eq. 5 (Eq. 4 when one of the conditional predictions is None)."""
    out = eps_uncond
    if eps_text is not None:
        out = out + s_text * (eps_text - eps_uncond)
    if eps_image is not None:
        out = out + s_image * (eps_image - eps_uncond)
    return out


def check_scale(name: str, value: float) -> float:
    """A guidance scale must be a finite number >= 0."""
    if not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value) or value < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, not {value}")
    return float(value)


@dataclass
class Conditions:
    """The conditions of one sampling run, null ones included, already encoded."""

    text: torch.Tensor
    """Caption embeddings (B, L, D); the null text when no caption was given."""
    null_text: torch.Tensor
    """Empty-prompt embeddings (B, L, D)."""
    image: Any = None
    """Image features of the reference images (DreamVideo: z_s (B, c0, h, w)), or None for text-to-video."""
    null_image: Any = None
    """Image features of white images, when the model has an image-conditioning branch."""
    has_text: bool = True
    """Whether a caption was given (text-to-video and text+image-to-video)."""


@dataclass
class GuidanceBatch:
    """The conditions of Eq. 5 as one denoiser batch [∅∅, (c_t,∅)?, (∅,c_i)?], built once per sampling run.

    The text and image parts are the same at every step, so the sampler concatenates them once rather than
    per step (a CUDA graph of the denoiser then sees the same inputs every step)."""

    texts: torch.Tensor
    """Text embeddings of the whole batch (n·B, L, D)."""
    images: Any
    """Image features of the whole batch, or None without a branch."""
    parts: int
    """n: how many predictions one call makes (1 to 3)."""
    use_text: bool
    use_image: bool
    s_text: float
    s_image: float


def guidance_batch(cond: Conditions, s_text: float, s_image: float) -> GuidanceBatch:
    """The batched conditions of Eq. 5/Eq. 4; a condition whose scale is 0, or which is absent, is left out."""
    use_text = cond.has_text and s_text != 0
    use_image = cond.image is not None and s_image != 0
    texts = [cond.null_text] + ([cond.text] if use_text else []) + ([cond.null_text] if use_image else [])
    images = None
    if cond.null_image is not None:
        images = [cond.null_image] + ([cond.null_image] if use_text else []) + ([cond.image] if use_image else [])
        images = cat_features(images)
    return GuidanceBatch(torch.cat(texts), images, len(texts), use_text, use_image, s_text, s_image)


def batched_prediction(denoise: DenoiseFn, sample: torch.Tensor, t: torch.Tensor, batch: GuidanceBatch) -> torch.Tensor:
    """ε̂ of Eq. 5/Eq. 4 from one denoiser call; ``t`` (n·B,) is already repeated for every part of the batch."""
    n = batch.parts
    eps = denoise(torch.cat([sample] * n), t, batch.texts, batch.images)
    parts = list(eps.chunk(n))
    eps_uncond = parts.pop(0)
    eps_text = parts.pop(0) if batch.use_text else None
    eps_image = parts.pop(0) if batch.use_image else None
    return double_guidance(eps_uncond, eps_text, eps_image, batch.s_text, batch.s_image)


def guided_prediction(
    denoise: DenoiseFn, sample: torch.Tensor, t: torch.Tensor, cond: Conditions, s_text: float, s_image: float
) -> torch.Tensor:
    """ε̂ of Eq. 5/Eq. 4 from one batched denoiser call over [∅∅, (c_t,∅)?, (∅,c_i)?]."""
    batch = guidance_batch(cond, s_text, s_image)
    return batched_prediction(denoise, sample, torch.cat([t] * batch.parts), batch)
