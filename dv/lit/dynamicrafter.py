"""DynamiCrafterModule: DynamiCrafter-style dual-stream image conditioning on the same T2V backbone (arXiv 2310.12190)."""

from __future__ import annotations

import torch

from dv.errors import ConfigError
from dv.lit.t2v import DiffusionConfig, OptimConfig, T2VModule
from dv.models.backbone import BackboneConfig
from dv.models.dynamicrafter import STAGES, DynamiCrafterBranch, ProjectionConfig
from dv.models.image_encoder import ImageEncoderConfig

STAGE_LR = {"projection": 1e-4, "all": 5e-5}
"""Learning rates of DynamiCrafter's two training stages (§4.1): P and the image cross-attention, then everything."""


class DynamiCrafterModule(T2VModule):
    """Image-to-video training with CLIP image tokens in a dual cross-attention, the reference latent
    concatenated to the noisy latents, and the frame stride added to the timestep embedding."""

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        image_encoder: ImageEncoderConfig | None = None,
        projection: ProjectionConfig | None = None,
        stage: str = "projection",
        frame_stride: int = 4,
        image_scale: float = 1.0,
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
            image_encoder: the frozen CLIP image encoder (ViT-H-14, the text encoder's counterpart).
            projection: P, the query transformer from patch tokens to image context tokens.
            stage: 'projection' (P, the image K/V and λ, the stride MLP and the reference-latent input weights
                train) or 'all' (the whole U-Net too), DynamiCrafter's two stages.
            frame_stride: stride of clips whose metadata carries none, and of sampled videos.
            image_scale: λ of the dual cross-attention at the start (learnable; V_img starts at zero).
            init_weights: a dv export of an earlier stage of this model (`dv export` of a `stage: projection`
                run), loaded after the U-Net is adapted.
            diffusion: the noise process and prediction target.
            optim: AdamW and warm-up; default learning rate 1e-4 for 'projection', 5e-5 for 'all' (paper §4.1).
            p_drop_text: probability of replacing a caption by the empty prompt.
            p_drop_image: probability of replacing the reference image by a white image.
            ema_decay: keep an EMA of the trainable weights with this decay.
            seed: seed of each step's noise, timesteps and dropout draws (see T2VModule).
        """
        if stage not in STAGES:
            raise ConfigError(f"model.stage must be 'projection' or 'all', not {stage!r}")
        optim = optim or OptimConfig(lr=STAGE_LR[stage])
        super().__init__(
            backbone, "all" if stage == "all" else "temporal", diffusion, optim, p_drop_text, ema_decay, seed
        )
        if not 0.0 <= p_drop_image <= 1.0:
            raise ConfigError(f"model.p_drop_image must be in [0, 1], not {p_drop_image}")
        if frame_stride < 1:
            raise ConfigError(f"model.frame_stride must be >= 1, not {frame_stride}")
        self.image_encoder_config = image_encoder or ImageEncoderConfig()
        self.projection_config = projection or ProjectionConfig()
        self.stage = stage
        self.frame_stride = frame_stride
        self.image_scale = image_scale
        self.init_weights = init_weights
        self.p_drop_image = p_drop_image

    def build_branch(self) -> None:
        """Adapt the loaded U-Net and build encoder + P (DynamiCrafterBranch.attach); an earlier stage's
        `init_weights`, if any, is loaded next, by configure_model."""
        on_meta = torch.empty(0).device.type == "meta"
        backbone = self.backbone
        self.branch = DynamiCrafterBranch.attach(
            backbone.unet,
            backbone.autoencoder,
            num_text_tokens=backbone.text.context_length,
            encoder=self.image_encoder_config,
            projection=self.projection_config,
            frame_stride=self.frame_stride,
            image_scale=self.image_scale,
            stage=self.stage,
            load_weights=not on_meta,
        )
