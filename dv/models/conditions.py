"""What the denoiser is conditioned on: pixels in model range, the reference image, the null conditions, their dropout."""

from __future__ import annotations

import torch
from einops import rearrange


def video_to_model(video: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, C) -> float (B, C, T, H, W) in [-1, 1], diffusers' 5-D layout."""
    return rearrange(video, "b t h w c -> b c t h w").float().div(127.5).sub(1.0)


def video_from_model(video: torch.Tensor) -> torch.Tensor:
    """float (B, C, T, H, W) in [-1, 1] -> uint8 (B, T, H, W, C)."""
    video = video.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return rearrange(video, "b c t h w -> b t h w c")


def reference_image(video: torch.Tensor) -> torch.Tensor:
    """The reference image of a training clip: its first frame, (B, C, H, W)."""
    return video[:, :, 0]


def white_images(batch: int, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The null image condition: white images (B, 3, H, W) in model range (all ones)."""
    return torch.ones(batch, 3, height, width, device=device, dtype=dtype)


def draw_dropout(
    n: int, p_text: float, p_image: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks (n,) of the captions and images to drop, drawn independently with p_text and p_image.

    They stay on the generator's device: a training step applies them with `torch.where`, never reading them back.
    """
    device = generator.device if generator is not None else "cpu"
    draws = torch.rand(2, n, generator=generator, device=device)
    return draws[0] < p_text, draws[1] < p_image


def drop_images(images: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) with the `dropped` (B,) ones white, the null image condition."""
    mask = rearrange(dropped.to(images.device, non_blocking=True), "b -> b 1 1 1")
    return torch.where(mask, torch.ones_like(images), images)


def drop_conditions(
    captions: list[str],
    images: torch.Tensor | None,
    p_text: float,
    p_image: float,
    generator: torch.Generator | None = None,
) -> tuple[list[str], torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Replace captions by '' with p_text and images by white with p_image, independently per sample.

    Returns the new captions and images and the boolean masks of what was dropped. The captions are host strings, so
    this reads the masks back; the training step uses `draw_dropout` and drops the text embeddings instead.
    """
    text_dropped, image_dropped = draw_dropout(len(captions), p_text, p_image, generator)
    captions = ["" if d else c for c, d in zip(captions, text_dropped.tolist())]
    if images is not None:
        images = drop_images(images, image_dropped)
    return captions, images, text_dropped, image_dropped
