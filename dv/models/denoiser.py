"""The denoiser ε(z_t, t, text, image): the U-Net, with what an image-conditioning branch adds to its inputs."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from diffusers import UNet3DConditionModel


class ConditioningBranch(Protocol):
    """What the Denoiser needs of an image-conditioning branch (RetentionBranch, DynamiCrafterBranch)."""

    def encode_image(self, image: torch.Tensor) -> Any:
        """Image features of reference images (B, 3, H, W) in [-1, 1]: a tensor or a tuple of tensors, batched on dim 0."""

    def unet_inputs(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, image_features: Any) -> dict:
        """U-Net keyword arguments for these inputs: new ones (residuals, timestep_cond) or replacements (sample, context)."""


class Denoiser:
    """U-Net plus optional conditioning branch, called as one function of (z_t, t, text, image features).

    A plain callable, not a Module: the U-Net and the branch are owned (and registered) elsewhere.
    """

    def __init__(self, unet: UNet3DConditionModel, branch: ConditioningBranch | None = None) -> None:
        self.unet = unet
        self.branch = branch

    def image_features(self, image: torch.Tensor) -> Any:
        """The branch's features of reference images (B, 3, H, W) in [-1, 1]; computed once per video."""
        assert self.branch is not None, "image features need a conditioning branch"
        return self.branch.encode_image(image)

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        image_features: Any = None,
    ) -> torch.Tensor:
        """Model output (B, c, T, h, w) for noisy latents, timesteps (B,), text (B, L, D) and the branch's image features."""
        inputs = {"sample": sample, "encoder_hidden_states": text}
        if self.branch is not None and image_features is not None:
            inputs.update(self.branch.unet_inputs(sample, timestep, text, image_features))
        return self.unet(timestep=timestep, return_dict=False, **inputs)[0]
