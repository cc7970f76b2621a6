"""Sampling videos: `generate` (the one entry point, one vocabulary of modes) and VideoSampler underneath it.

`dv sample`, `dv app`, VideoValidation and the claims experiment all call `generate`; it picks TI2V-Zero for
the zero_shot mode and VideoSampler (Eq. 5 guidance, single-stage or chained) for the others.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import SchedulerMixin

from dv.diffusion.guidance import Conditions
from dv.diffusion.sampling import SamplerConfig, chain_videos, ddim_sample, ddim_scheduler
from dv.diffusion.zero_shot import DEFAULT_RESAMPLE_STEPS, ti2v_zero_sample
from dv.errors import ConfigError
from dv.models.backbone import Backbone
from dv.models.conditions import white_images
from dv.models.denoiser import ConditioningBranch, Denoiser


class VideoSampler:
    """Text-to-video, image-to-video and text+image-to-video sampling, single-stage or chained."""

    def __init__(
        self,
        backbone: Backbone,
        branch: ConditioningBranch | None,
        train_scheduler: SchedulerMixin,
        num_frames: int,
        frame_size: int,
    ) -> None:
        self.backbone = backbone
        self.branch = branch
        self.denoiser = Denoiser(backbone.unet, branch)
        self.scheduler = ddim_scheduler(train_scheduler)
        self.num_frames = num_frames
        self.frame_size = frame_size
        down = backbone.autoencoder.downscale
        if frame_size % down:
            raise ConfigError(f"frame size {frame_size} is not a multiple of the autoencoder's downscale {down}")

    @property
    def device(self) -> torch.device:
        """Where the U-Net lives."""
        return next(self.backbone.unet.parameters()).device

    @torch.no_grad()
    def conditions(self, captions: list[str] | None, images: torch.Tensor | None, batch: int) -> Conditions:
        """Encode captions (None: no text) and reference images (B, 3, H, W) in [-1, 1] (None: no image)."""
        if images is not None and self.branch is None:
            raise ConfigError(
                "this model has no image-conditioning branch (retention branch or DynamiCrafter): "
                "it cannot take a reference image (drop --image)"
            )
        null_text = self.backbone.encode_text([""] * batch)
        text = self.backbone.encode_text(list(captions)) if captions is not None else null_text
        null_image = image = None
        if self.branch is not None:
            # Image features (z_s, or DynamiCrafter's tokens and latent) are computed once per video, not at every step.
            null_image = self.branch.encode_image(
                white_images(batch, self.frame_size, self.frame_size, device=self.device)
            )
            if images is not None:
                image = self.branch.encode_image(images.to(self.device))
        return Conditions(
            text=text, null_text=null_text, image=image, null_image=null_image, has_text=captions is not None
        )

    @torch.no_grad()
    def sample(
        self,
        captions: list[str] | None,
        images: torch.Tensor | None,
        config: SamplerConfig,
        seeds: list[int],
        progress: bool = True,
        callback: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Videos (B, 3, T, H, W) in [-1, 1]; sample i is drawn from seed seeds[i]."""
        config.validate()
        if captions is None and images is None:
            raise ConfigError("give a prompt, an image, or both")
        b = len(seeds)
        for name, n in (
            ("prompts", len(captions) if captions is not None else b),
            ("images", len(images) if images is not None else b),
        ):
            if n != b:
                raise ConfigError(f"{n} {name} for {b} seeds")
        cond = self.conditions(captions, images, b)
        size = self.frame_size // self.backbone.autoencoder.downscale
        shape = (b, self.backbone.autoencoder.latent_channels, self.num_frames, size, size)
        gen_device = self.device if self.device.type == "cuda" else "cpu"
        generators = [torch.Generator(device=gen_device).manual_seed(int(s)) for s in seeds]
        latents = ddim_sample(
            self.denoiser,
            self.scheduler,
            shape,
            cond,
            config,
            generators,
            self.device,
            progress=progress,
            callback=callback,
        )
        return self.backbone.autoencoder.decode(latents).clamp(-1, 1)

    @torch.no_grad()
    def chained(
        self,
        prompts: list[str | None],
        image: torch.Tensor | None,
        config: SamplerConfig,
        seed: int,
        progress: bool = True,
        callback: Callable[[int, int], None] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One long video from len(prompts) stages; stage k+1's reference image is stage k's last frame.

        Returns the chained video (1, 3, N·T − (N−1), H, W) and the reference image of each stage.
        """
        stage_captions = [None if p is None else [p] for p in prompts]
        return self.chained_batch(stage_captions, image, config, [seed], progress, callback)

    @torch.no_grad()
    def chained_batch(
        self,
        stage_captions: list[list[str] | None],
        images: torch.Tensor | None,
        config: SamplerConfig,
        seeds: list[int],
        progress: bool = True,
        callback: Callable[[int, int], None] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`chained` for a batch: stage k of video i uses stage_captions[k][i] (None: no text) and seed seeds[i] + k.

        Returns the chained videos (B, 3, N·T − (N−1), H, W) and the reference images of each stage.
        """
        if not stage_captions:
            raise ConfigError("chained inference needs at least one stage prompt")
        if len(stage_captions) > 1 and self.branch is None:
            raise ConfigError("chained inference needs a model with an image-conditioning branch")
        stages, references = [], []
        reference = images
        for k, captions in enumerate(stage_captions):
            references.append(reference)
            video = self.sample(captions, reference, config, [s + k for s in seeds], progress, callback)
            stages.append(video)
            reference = video[:, :, -1]
        return chain_videos(stages), references


MODES = ("t2v", "i2v", "ti2v", "zero_shot")
"""Sampling modes: text only, image only, text + image (Eq. 5), and TI2V-Zero on the backbone alone."""
MODE_LABELS = {
    "t2v": "text-to-video",
    "i2v": "image-to-video",
    "ti2v": "text+image",
    "zero_shot": "text+image, zero-shot (TI2V-Zero)",
}
"""How pages and reports name each mode."""
TEXT_MODES = ("t2v", "ti2v", "zero_shot")
"""Modes that read the captions."""
IMAGE_MODES = ("i2v", "ti2v", "zero_shot")
"""Modes that read the reference images."""
BRANCH_MODES = ("i2v", "ti2v")
"""Modes that need an image-conditioning branch (zero_shot conditions the backbone alone)."""


def check_mode(mode: str, has_branch: bool | None = None) -> str:
    """`mode` if it is one of MODES (and, when `has_branch` is given, the model can sample it); else a ConfigError."""
    if mode not in MODES:
        raise ConfigError(f"unknown sampling mode {mode!r}; choose from {', '.join(MODES)}")
    if has_branch is False and mode in BRANCH_MODES:
        raise ConfigError(f"mode {mode!r} needs an image-conditioning branch; this model samples t2v or zero_shot")
    return mode


def mode_of(text: bool, image: bool, zero_shot: bool = False) -> str:
    """The mode that uses text and/or an image (zero_shot: TI2V-Zero, which uses both)."""
    if zero_shot:
        return "zero_shot"
    if not (text or image):
        raise ConfigError("give a prompt, an image, or both")
    return "ti2v" if text and image else ("t2v" if text else "i2v")


@torch.no_grad()
def generate(
    model,
    mode: str,
    captions: list[str] | None,
    images: torch.Tensor | None,
    settings: SamplerConfig,
    seeds: list[int],
    *,
    frames: int,
    size: int,
    next_captions: list[list[str] | None] | tuple = (),
    resample_steps: int = DEFAULT_RESAMPLE_STEPS,
    progress: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Videos (B, 3, T, H, W) in [-1, 1] of a trained module (its backbone, branch and noise schedule) in `mode`.

    captions: one per seed (read in TEXT_MODES); images: reference images (B, 3, H, W) in [-1, 1] (read in
    IMAGE_MODES); video i is drawn from seeds[i]. next_captions chains more stages (one caption list per stage,
    None for no text), each starting from the previous stage's last frame: T = N·frames − (N − 1).
    callback(step, steps) is called after every denoising step (not in zero_shot).
    """
    check_mode(mode, has_branch=model.branch is not None)
    text = captions if mode in TEXT_MODES else None
    image = images if mode in IMAGE_MODES else None
    if mode == "zero_shot":
        if text is None or image is None or next_captions:
            raise ConfigError("zero_shot sampling needs a prompt and an image, in a single stage")
        return ti2v_zero_sample(
            model.backbone,
            model.noise_scheduler,
            list(text),
            image,
            frames,
            settings,
            seeds,
            resample_steps=resample_steps,
            progress=progress,
        )
    sampler = VideoSampler(model.backbone, model.branch, model.noise_scheduler, frames, size)
    if not next_captions:
        return sampler.sample(text, image, settings, seeds, progress=progress, callback=callback)
    stages = [text] + [c if mode in TEXT_MODES else None for c in next_captions]
    video, _ = sampler.chained_batch(stages, image, settings, seeds, progress=progress, callback=callback)
    return video
