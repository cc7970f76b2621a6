"""DynamiCrafterModule: DynamiCrafter-style dual-stream image conditioning on the same T2V backbone (arXiv 2310.12190)."""

from __future__ import annotations

import torch

from dv.errors import ConfigError
from dv.lit.t2v import DiffusionConfig, OptimConfig, T2VModule
from dv.models.backbone import BackboneConfig
from dv.models.conditions import drop_images, reference_image
from dv.models.dual_attention import dual_attention_processors
from dv.models.dynamicrafter import DynamiCrafterBranch, DynamiCrafterCondition, ProjectionConfig, adapt_unet, is_new_unet_parameter
from dv.models.image_encoder import ImageEncoderConfig
from dv.models.trainable import named_trainable

STAGES = ("projection", "all")
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
        super().__init__(backbone, "all" if stage == "all" else "temporal", diffusion, optim, p_drop_text, ema_decay, seed)
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
        """Adapt the loaded U-Net (reference input, dual cross-attention, stride embedding) and build encoder + P."""
        on_meta = torch.empty(0).device.type == "meta"
        backbone = self.backbone
        self.branch = DynamiCrafterBranch(
            self.image_encoder_config,
            self.projection_config,
            context_dim=backbone.unet.config.cross_attention_dim,
            encode_reference=self.encode_reference,
            frame_stride=self.frame_stride,
            load_weights=not on_meta,
        )
        adapt_unet(
            backbone.unet,
            reference_channels=backbone.autoencoder.latent_channels,
            num_text_tokens=backbone.text.context_length,
            queries=self.projection_config.queries,
            image_scale=self.image_scale,
        )
        if self.init_weights and not on_meta:
            from dv.models.pretrained import load_dv_weights

            load_dv_weights(self.init_weights, backbone.unet, part="unet")
            load_dv_weights(self.init_weights, self.branch, part="branch")

    @torch.no_grad()
    def encode_reference(self, image: torch.Tensor) -> torch.Tensor:
        """The scaled latent (B, c, h, w) of reference images (B, 3, H, W): the autoencoder's posterior mean."""
        mean, _ = self.backbone.autoencoder.posterior(image[:, :, None])
        return mean[:, :, 0] * self.backbone.autoencoder.scaling_factor

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The U-Net's new parameters (all of it at stage 'all') and P; the image encoder stays frozen."""
        # Plain names (as in state dicts) even when FSDP or other wrappers nest the blocks, as T2VModule's.
        keep = (lambda n: True) if self.stage == "all" else is_new_unet_parameter
        named = named_trainable("backbone.unet.", self.backbone.unet.named_parameters(), keep)
        return named + named_trainable("branch.projection.", self.branch.projection.named_parameters())

    def train(self, mode: bool = True):
        """The frozen image encoder stays in eval mode, like the other frozen encoders."""
        super().train(mode)
        if self.branch is not None:
            self.branch.image_encoder.eval()
        return self

    def dropout_rates(self) -> tuple[float, float]:
        """Text and image dropout are independent."""
        return self.p_drop_text, self.p_drop_image

    def image_condition(self, batch: dict, video: torch.Tensor, dropped: torch.Tensor) -> DynamiCrafterCondition:
        """The DynamiCrafterCondition of the first frames (a dropped one white, as in DreamVideo) at each clip's
        frame stride (`batch["stride"]`, else frame_stride)."""
        return self.branch.encode_image(drop_images(reference_image(video), dropped), batch.get("stride"))

    def parameter_rows(self) -> list[tuple[str, int]]:
        """`dv info` rows of the parts this module adds."""
        unet = self.backbone.unet
        processors = list(dual_attention_processors(unet).values())
        image_kv = _count(p for proc in processors for p in proc.parameters())
        return [
            (f"U-Net's new image K/V and λ ({len(processors)} spatial cross-attentions)", image_kv),
            ("U-Net's new stride embedding (time_embedding.cond_proj)", _count(unet.time_embedding.cond_proj.parameters())),
            ("U-Net's new reference-latent weights of conv_in", _count(unet.conv_in.reference.parameters())),
            ("image encoder (CLIP vision tower, frozen)", _count(self.branch.image_encoder.parameters())),
            ("projection P (query transformer)", _count(self.branch.projection.parameters())),
        ]


def _count(params) -> int:
    return sum(p.numel() for p in params)
