"""DreamVideoModule: the Image Retention branch plus the backbone's temporal layers (paper §4.2, §5.1)."""

from __future__ import annotations

from dataclasses import dataclass

from dv.errors import ConfigError
from dv.lit.t2v import DiffusionConfig, OptimConfig, T2VModule
from dv.models.backbone import BackboneConfig
from dv.models.retention import RetentionBranch


@dataclass
class RetentionConfig:
    """The Image Retention branch's own settings."""

    fusion: str = "add"
    """How conv_d(z_t) and conv_s(I) are fused: 'add' (paper §4.2) or 'concat' (the abstract's wording)."""
    image_channels: tuple[int, ...] = (16, 32, 96, 256)
    """Channels of conv_s's stages; one more entry than the autoencoder's log2 downscale."""
    residual_scale: float = 1.0
    """Factor on the branch's residuals before the U-Net adds them (1: the paper's Eq. 3), as diffusers'
    `controlnet_conditioning_scale`, but in training too. A small frozen backbone barely answers a skip residual at
    the noisiest timesteps; a larger factor lets the zero convolutions reach the size it needs sooner."""


class DreamVideoModule(T2VModule):
    """Image-to-video training: retention branch + temporal layers, image and text condition dropout."""

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        retention: RetentionConfig | None = None,
        trainable: str = "temporal",
        init_weights: str | None = None,
        diffusion: DiffusionConfig | None = None,
        optim: OptimConfig | None = None,
        p_drop_text: float = 0.1,
        p_drop_image: float = 0.1,
        ema_decay: float | None = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            backbone: the T2V backbone (with its pretrained weights).
            retention: the Image Retention branch.
            trainable: which U-Net layers train beside the branch: 'temporal' (paper) or 'all'.
            init_weights: a dv export of an earlier DreamVideo run (its U-Net layers and branch), loaded over the
                backbone's weights before training: a fresh run that starts where that one ended, with a new
                optimizer, so the recipe may change what trains (`--ckpt_path` resumes the same setup instead).
            diffusion: the noise process and prediction target.
            optim: AdamW and warm-up.
            p_drop_text: probability of replacing a caption by the empty prompt (paper: 0.1).
            p_drop_image: probability of replacing the reference image by a white image (paper: 0.1).
            ema_decay: keep an EMA of the trainable weights with this decay.
            seed: seed of each step's noise, timesteps and dropout draws (see T2VModule).
        """
        super().__init__(backbone, trainable, diffusion, optim, p_drop_text, ema_decay, seed)
        if not 0.0 <= p_drop_image <= 1.0:
            raise ConfigError(f"model.p_drop_image must be in [0, 1], not {p_drop_image}")
        self.retention = retention or RetentionConfig()
        self.init_weights = init_weights
        self.p_drop_image = p_drop_image

    def build_branch(self) -> None:
        """The branch starts as a copy of the (pretrained) U-Net's input, time, down and mid parts (an earlier run's
        `init_weights`, if any, is loaded over it and the U-Net next, by configure_model)."""
        self.branch = RetentionBranch.from_unet(
            self.backbone.unet,
            downscale=self.backbone.autoencoder.downscale,
            fusion=self.retention.fusion,
            image_channels=tuple(self.retention.image_channels),
            residual_scale=self.retention.residual_scale,
        )
