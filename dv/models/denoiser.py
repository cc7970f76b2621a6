"""The denoiser ε(z_t, t, text, image): the U-Net, with the retention branch's residuals when it has one."""

from __future__ import annotations

import torch
from diffusers import UNet3DConditionModel
from dv.models.retention import RetentionBranch


class Denoiser:
    """U-Net plus optional Image Retention branch, called as one function of (z_t, t, text, image features).

    A plain callable, not a Module: the U-Net and the branch are owned (and registered) elsewhere.
    """

    def __init__(self, unet: UNet3DConditionModel, branch: RetentionBranch | None = None) -> None:
        self.unet = unet
        self.branch = branch

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """z_s of reference images (B, 3, H, W) in [-1, 1]; computed once per video."""
        assert self.branch is not None, "image features need a retention branch"
        return self.branch.encode_image(image)

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Model output (B, c, T, h, w) for noisy latents, timesteps (B,), text (B, L, D), z_s (B, c0, h, w)."""
        down = mid = None
        if self.branch is not None and image_features is not None:
            down, mid = self.branch(sample, timestep, text, image_features)
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
