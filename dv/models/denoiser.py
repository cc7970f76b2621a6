"""The denoiser ε(z_t, t, text, image): the U-Net, with what an image-conditioning branch adds to its inputs.

A model family (DreamVideo's retention branch, the DynamiCrafter-style dual stream) is one
ConditioningBranch object: it owns what it trains, how it encodes an image and what it adds to the
U-Net's inputs. The training module, `dv info`, `dv bench` and the samplers ask it, never its type.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import torch
from diffusers import UNet3DConditionModel
from torch import nn


class ConditioningBranch(Protocol):
    """What dv needs of an image-conditioning branch (RetentionBranch, DynamiCrafterBranch): an nn.Module with these."""

    paper_trainable: tuple[str, float] | None
    """(source, trainable parameters) a paper reports for this family, shown beside the built count by `dv info`."""

    def encode_image(self, image: torch.Tensor, stride: torch.Tensor | None = None) -> Any:
        """Image features of reference images (B, 3, H, W) in [-1, 1] at frame strides (B,) (None: the family's
        default; families without stride conditioning ignore it): a tensor or a tuple of tensors, batched on dim 0."""

    def unet_inputs(
        self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, image_features: Any
    ) -> dict:
        """U-Net keyword arguments for these inputs: new ones (residuals, timestep_cond) or replacements (sample, context)."""

    def trains_unet_parameter(self, name: str, by_recipe: bool) -> bool:
        """Whether the U-Net parameter `name` trains beside this branch; `by_recipe` is what the module's own rule
        (model.trainable) says."""

    def trained_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """(name, parameter) of the branch's own weights that train, names relative to the branch."""

    def parameter_rows(self, unet: UNet3DConditionModel) -> list[tuple[str, int]]:
        """`dv info` rows (part, parameters) of what this family adds, to the U-Net and in the branch."""


def count(params: Iterable[torch.Tensor]) -> int:
    """Number of elements of the tensors."""
    return sum(p.numel() for p in params)


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
        return self.unet(
            timestep=timestep, return_dict=False, **self.unet_inputs(sample, timestep, text, image_features)
        )[0]

    def unet_inputs(
        self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, image_features: Any = None
    ) -> dict:
        """The U-Net's keyword arguments (less the timestep) for these inputs: the plain ones, with the branch's added."""
        inputs = {"sample": sample, "encoder_hidden_states": text}
        if self.branch is not None and image_features is not None:
            inputs.update(self.branch.unet_inputs(sample, timestep, text, image_features))
        return inputs
