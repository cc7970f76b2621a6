"""T2VModule: trains the backbone's temporal layers (or all of the U-Net) on video–text data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from dv import __version__
from dv.data.latents import cached_video, check_identity
from dv.diffusion.loss import (
    TrainInputs,
    denoising_loss,
    draw_timesteps,
    prediction_target,
    timestep_weights,
)
from dv.errors import ConfigError, TrainingError
from dv.lit.ema import TrainableEMA
from dv.lit.export import plain
from dv.lit.optim import adamw, clip_gradients
from dv.models.backbone import Backbone, BackboneConfig, is_temporal
from dv.models.conditions import draw_dropout, drop_images, reference_image, video_to_model
from dv.models.denoiser import Denoiser
from dv.models.identity import text_encoder_identity
from dv.models.pretrained import load_dv_weights
from dv.models.trainable import EMA_KEY, check_saved, export_name, named_trainable, saved_weights
from dv.strategies import total_grad_norm


@dataclass
class DiffusionConfig:
    """The training noise process (a diffusers DDPMScheduler) and what the network predicts."""

    prediction_type: str = "epsilon"
    """'epsilon' (ModelScope) or 'v_prediction'."""
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    """diffusers beta schedule; ModelScope uses 'scaled_linear' from 0.00085 to 0.012."""
    beta_start: float = 0.00085
    beta_end: float = 0.012
    loss_buckets: int = 4
    """The loss is also logged per timestep bucket: this many equal ranges of t."""
    rescale_betas_zero_snr: bool = False
    """Rescale the betas so the last timestep is pure noise (zero terminal SNR, Lin et al. 2023). With the default
    schedule a trace of the clip survives at t = 999, which training sees and sampling from pure noise does not: at
    small frame sizes the mean colour drifts. Needs v-prediction (ε carries no information at zero SNR)."""
    timestep_spacing: str = "leading"
    """How DDIM spaces its steps over the schedule: 'leading' (ModelScope) or 'trailing' (Lin et al. 2023: sampling
    starts at the last timestep, which zero terminal SNR makes pure noise)."""
    snr_gamma: float | None = None
    """Min-SNR-γ weighting of the training loss (Hang et al. 2023): a sample's x0 error counts min(SNR(t), γ) times,
    so the easy low-noise timesteps no longer dominate; None trains on the plain MSE. 5 is the paper's γ.
    Validation and test losses stay unweighted, so they compare across settings."""
    snr_weighting: str = "hang"
    """How Min-SNR-γ weighs a v-prediction loss: 'hang' (the paper: the x0 error counts min(SNR, γ) times, so the
    noisiest timesteps, SNR → 0, count almost nothing) or 'diffusers' (diffusers' training scripts: min(SNR + 1, γ),
    so every timestep with SNR + 1 < γ keeps its full v loss). The two agree for ε-prediction."""
    timestep_bias_strategy: str = "none"
    """Which training timesteps are drawn more often (diffusers' `--timestep_bias_strategy`): 'none' (uniform),
    'later' (the noisiest `timestep_bias_portion` of the schedule, where a sample's layout and motion are decided),
    'earlier', or 'range' ([timestep_bias_begin, timestep_bias_end)). The loss is not reweighted, as in diffusers."""
    timestep_bias_multiplier: float = 1.0
    """How many times as often the biased timesteps are drawn (> 0; below 1 draws them less often)."""
    timestep_bias_portion: float = 0.25
    """The share of the schedule 'later' and 'earlier' bias."""
    timestep_bias_begin: int = 0
    timestep_bias_end: int = 1000


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, over the trainable parameters only."""

    lr: float = 5e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    """Added to the root of the second moment; the step of a weight whose gradient is below it shrinks."""
    warmup_steps: int = 500
    fused: bool | None = None
    """AdamW's fused kernel (one launch for all weights); None: fused where the weights are on a GPU."""


class T2VModule(L.LightningModule):
    """Text-to-video latent diffusion training of a UNet3DConditionModel backbone."""

    p_drop_image: float = 0.0
    """Probability of a white reference image; modules with an image-conditioning branch set their own."""
    init_weights: str | None = None
    """A dv export of an earlier run, loaded over the U-Net and the branch once they are built; modules with a
    branch take it as an argument."""

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        trainable: str = "temporal",
        diffusion: DiffusionConfig | None = None,
        optim: OptimConfig | None = None,
        p_drop_text: float = 0.1,
        ema_decay: float | None = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            backbone: U-Net, autoencoder and text encoder, with their local weights.
            trainable: 'temporal' (paper: Temp-Conv, Temp-Attn, input temporal transformer) or 'all' of the U-Net.
            diffusion: the noise process and prediction target.
            optim: AdamW and warm-up.
            p_drop_text: probability of replacing a caption by the empty prompt (classifier-free guidance).
            ema_decay: keep an EMA of the trainable weights with this decay (used for validation and export).
            seed: seed of each step's noise, timesteps and dropout draws, which are a function of
                (seed, step, rank) so that a resumed run continues exactly as an uninterrupted one.
        """
        super().__init__()
        backbone = backbone or BackboneConfig()
        diffusion = diffusion or DiffusionConfig()
        optim = optim or OptimConfig()
        if trainable not in ("temporal", "all"):
            raise ConfigError(f"model.trainable must be 'temporal' or 'all', not {trainable!r}")
        if diffusion.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(
                f"diffusion.prediction_type must be 'epsilon' or 'v_prediction', not {diffusion.prediction_type!r}"
            )
        if diffusion.snr_gamma is not None and not diffusion.snr_gamma > 0:
            raise ConfigError(f"diffusion.snr_gamma must be > 0 (or null for no weighting), not {diffusion.snr_gamma}")
        if diffusion.rescale_betas_zero_snr and diffusion.prediction_type != "v_prediction":
            raise ConfigError(
                "diffusion.rescale_betas_zero_snr needs prediction_type: v_prediction (at zero SNR ε says nothing of the clip)"
            )
        if diffusion.timestep_spacing not in ("leading", "trailing", "linspace"):
            raise ConfigError(
                f"diffusion.timestep_spacing must be 'leading', 'trailing' or 'linspace', not {diffusion.timestep_spacing!r}"
            )
        if diffusion.snr_weighting not in ("hang", "diffusers"):
            raise ConfigError(f"diffusion.snr_weighting must be 'hang' or 'diffusers', not {diffusion.snr_weighting!r}")
        for name, p in (("p_drop_text", p_drop_text),):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1], not {p}")
        self.save_hyperparameters()
        self.backbone_config = backbone
        self.trainable = trainable
        self.diffusion = diffusion
        self.optim = optim
        self.p_drop_text = p_drop_text
        self.ema_decay = ema_decay
        self.seed = seed
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=diffusion.num_train_timesteps,
            beta_schedule=diffusion.beta_schedule,
            beta_start=diffusion.beta_start,
            beta_end=diffusion.beta_end,
            prediction_type=diffusion.prediction_type,
            rescale_betas_zero_snr=diffusion.rescale_betas_zero_snr,
            timestep_spacing=diffusion.timestep_spacing,
        )
        # Probabilities of the training timesteps (None: uniform). A buffer, so it moves with the module and the
        # step draws on the device without a copy; not persistent: the recipe, not the checkpoint, sets it.
        self.register_buffer(
            "timestep_weights",
            timestep_weights(
                diffusion.num_train_timesteps,
                diffusion.timestep_bias_strategy,
                diffusion.timestep_bias_multiplier,
                diffusion.timestep_bias_portion,
                diffusion.timestep_bias_begin,
                diffusion.timestep_bias_end,
            ),
            persistent=False,
        )
        self.backbone: Backbone | None = None
        self.branch = None
        self.ema: TrainableEMA | None = None
        # Checkpoints hold only the trainable weights; frozen ones come back from the recipe's files.
        self.strict_loading = False

    # ---- building -------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Build the networks (under the strategy's init context), load weights, freeze what is not trained."""
        if self.backbone is not None:
            return
        on_meta = torch.empty(0).device.type == "meta"
        self.backbone = Backbone(self.backbone_config, load_weights=not on_meta)
        self.build_branch()
        if self.init_weights and not on_meta:
            load_dv_weights(self.init_weights, self.backbone.unet, part="unet")
            load_dv_weights(self.init_weights, self.branch, part="branch")
        self.backbone.apply_speed_settings(self.branch)  # activation checkpointing and torch.compile, per the recipe
        self.requires_grad_(False)
        for _, p in self.trainable_parameters():
            p.requires_grad_(True)
        if self.ema_decay is not None:
            self.ema = TrainableEMA(self.trainable_parameters(), self.ema_decay)

    def build_branch(self) -> None:
        """Hook for modules that add a conditioning branch; the T2V backbone has none."""

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """(name, parameter) of everything the optimizer trains, in a fixed order."""
        # Plain names (as in state dicts) even when FSDP or other wrappers nest the blocks.
        named = named_trainable("backbone.unet.", self.backbone.unet.named_parameters(), self.trains_unet_parameter)
        if self.branch is not None:  # the branch (the model family) says which of its own weights train
            named += named_trainable("branch.", self.branch.trained_parameters())
        return named

    def trains_unet_parameter(self, name: str) -> bool:
        """Whether a U-Net parameter trains: model.trainable's rule, as the branch (if any) amends it."""
        by_recipe = self.trainable == "all" or is_temporal(name)
        return by_recipe if self.branch is None else self.branch.trains_unet_parameter(name, by_recipe)

    @property
    def denoiser(self) -> Denoiser:
        """ε(z_t, t, text, image features) over the U-Net and branch."""
        return Denoiser(self.backbone.unet, self.branch)

    def train(self, mode: bool = True):
        """Frozen encoders stay in eval mode whatever Lightning asks."""
        super().train(mode)
        if self.backbone is not None:
            self.backbone.autoencoder.eval()
            self.backbone.text.eval()
        return self

    # ---- one step -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents of a model-range video (B, C, T, H, W)."""
        return self.backbone.autoencoder.encode(video, generator=generator)

    @torch.no_grad()
    def cached_latents(self, batch: dict, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled latents drawn from a latent batch's posterior, and its reference frames as a one-frame model-range video.

        Refuses (DataError) a batch cached by another VAE or text encoder than this recipe's.
        """
        check_identity(batch, "vae", self.backbone.autoencoder.identity(), "VAE")
        if "text_embedding" in batch:
            check_identity(batch, "text_encoder", text_encoder_identity(self.backbone.text), "text encoder")
        mean = batch["latent_mean"].to(self.device, non_blocking=True)
        logvar = batch["latent_logvar"].to(self.device, non_blocking=True)
        latents = self.backbone.autoencoder.sample_latents(mean, logvar, generator=generator)
        return latents, video_to_model(cached_video(batch).to(self.device, non_blocking=True))

    def dropout_rates(self) -> tuple[float, float]:
        """Probabilities of dropping a caption and a reference image in training (independent; no image without a
        branch)."""
        return self.p_drop_text, (self.p_drop_image if self.branch is not None else 0.0)

    def image_condition(self, batch: dict, video: torch.Tensor, dropped: torch.Tensor) -> Any:
        """The branch's features of the clips' first frames (a `dropped` one white) at each clip's frame stride
        (`batch["stride"]`, if any); None for the T2V backbone, which has no branch."""
        if self.branch is None:
            return None
        return self.branch.encode_image(drop_images(reference_image(video), dropped), batch.get("stride"))

    def batch_conditions(self, batch: dict, video: torch.Tensor, drop: bool, generator: torch.Generator | None):
        """Text embeddings and image features of a batch's captions (or cached embeddings) and video, after
        condition dropout when `drop`. The dropout masks stay on the device: nothing is read back."""
        captions = list(batch["caption"])
        p_text, p_image = self.dropout_rates() if drop else (0.0, 0.0)
        text_dropped, image_dropped = draw_dropout(len(captions), p_text, p_image, generator)
        text = self.backbone.encode_text(captions, batch.get("text_embedding"), text_dropped)
        return text, self.image_condition(batch, video, image_dropped)

    def step_seed(self, *salt: int) -> int:
        """A seed that is a function of (seed, salt, rank) only."""
        rank = self.trainer.global_rank if self._trainer is not None else 0
        return hash((self.seed, *salt, rank)) & (2**62 - 1)

    def step_generator(self, *salt: int) -> torch.Generator:
        """A generator on the module's device seeded by step_seed: the step's draws are reproducible."""
        return torch.Generator(device=self.device).manual_seed(self.step_seed(*salt))

    def train_inputs(self, batch: dict, generator: torch.Generator | None, drop: bool) -> TrainInputs:
        """The batch as a typed value: latents (drawn from the VAE posterior) and conditions (after dropout).

        A latent batch (dv cache-latents) gives the same inputs as its videos would, with the same draws:
        the latent comes from the stored posterior, and the conditions see the cached first frame as the video.
        """
        if "video" in batch:
            video = video_to_model(batch["video"].to(self.device, non_blocking=True))
            latents = self.encode_video(video, generator=generator)
        else:
            latents, video = self.cached_latents(batch, generator)
        text, image = self.batch_conditions(batch, video, drop, generator)
        return TrainInputs(latents, text, image)

    def diffusion_loss(self, batch: dict, generator: torch.Generator, drop: bool):
        """Per-sample MSE of the model's prediction at a random timestep, and those timesteps."""
        inputs = self.train_inputs(batch, generator, drop)
        b = inputs.latents.shape[0]
        t = draw_timesteps(self.timestep_weights, self.diffusion.num_train_timesteps, b, generator)
        noise = torch.randn(
            inputs.latents.shape, generator=generator, device=generator.device, dtype=inputs.latents.dtype
        )
        return denoising_loss(self.denoiser, self.noise_scheduler, inputs, t, noise), t

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample training-loss weights at timesteps t: Min-SNR-γ (ones without `diffusion.snr_gamma`).

        Hang et al. 2023's weights: min(SNR, γ) / SNR for ε and min(SNR, γ) / (SNR + 1) for v, whose losses are SNR and
        SNR + 1 times the x0 error, so either way the x0 error counts min(SNR, γ) times. With
        `diffusion.snr_weighting: diffusers` a v loss is weighed min(SNR + 1, γ) / (SNR + 1), as diffusers' training
        scripts do: the noisiest timesteps, where a sample's layout and motion are decided, keep their full loss.
        """
        gamma = self.diffusion.snr_gamma
        if gamma is None:
            return torch.ones(t.shape, device=t.device)
        snr = compute_snr(self.noise_scheduler, t)
        if self.diffusion.prediction_type == "epsilon":
            return snr.clamp(max=gamma) / snr
        counted = snr if self.diffusion.snr_weighting == "hang" else snr + 1
        return counted.clamp(max=gamma) / (snr + 1)

    def prediction_target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the U-Net is trained to predict for latents noised with `noise` at t: ε, or v."""
        return prediction_target(self.noise_scheduler, latents, noise, t)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # The U-Net's temporal convs use dropout (p=0.1, as ModelScope's), which draws from the global
        # RNG: seeding it per step makes a resumed run draw the masks the uninterrupted run draws.
        torch.manual_seed(self.step_seed(self.global_step, batch_idx, 1))
        per_sample, t = self.diffusion_loss(batch, self.step_generator(self.global_step, batch_idx), drop=True)
        loss = (per_sample * self.loss_weights(t)).mean()
        self._watch_finite(loss)
        # Nothing here reads a value back to the host, except on the steps the logger writes (log_every_n_steps):
        # a GPU step then queues the next one while this one runs.
        logging = self._logging_step()
        self._log_on_logging_steps("train/loss", loss, logging, prog_bar=True, batch_size=per_sample.shape[0])
        n = self.diffusion.loss_buckets
        width = self.diffusion.num_train_timesteps // n
        names = [f"train/loss_t{k * width:04d}-{(k + 1) * width - 1:04d}" for k in range(n)]
        if logging:
            self._check_finite()
            # Per bucket, masked sums over the batch: one read of the counts instead of one per bucket.
            in_bucket = (
                t[:, None] * n // self.diffusion.num_train_timesteps == torch.arange(n, device=t.device)
            ).float()
            sums, counts = per_sample.detach() @ in_bucket, in_bucket.sum(0)
            for name, total, count in zip(names, sums, counts.tolist()):
                # An empty bucket is reset rather than logged: Lightning would repeat an older step's loss.
                self._log_on_logging_steps(name, total / max(count, 1), bool(count), batch_size=int(count) or 1)
        return loss

    def _logging_step(self) -> bool:
        """Whether the logger writes this step's metrics (every `trainer.log_every_n_steps`; always without a trainer)."""
        return self._trainer is None or self.trainer._logger_connector.should_update_logs

    def _log_on_logging_steps(self, name: str, value: torch.Tensor, logging: bool, **kwargs) -> None:
        """Log `value` on logging steps; on the others leave `name` out of the step's metrics.

        Lightning reads every progress-bar metric back to the host each step, and repeats a key's last value until it
        is logged again; a reset entry is left out of both.
        """
        if logging:
            self.log(name, value, **kwargs)
            return
        results = self.trainer._results if self._trainer is not None else None
        if results is not None and f"training_step.{name}" in results:
            results[f"training_step.{name}"].reset()

    def _watch_finite(self, loss: torch.Tensor) -> None:
        """Remember, on the device, the first step whose training loss was not finite (checked by `_check_finite`)."""
        step = torch.full((), self.global_step, device=loss.device)
        if getattr(self, "_first_nonfinite", None) is None or self._first_nonfinite.device != loss.device:
            self._first_nonfinite = torch.full((), -1, device=loss.device)
            self._nonfinite_loss = torch.zeros((), device=loss.device)
        first = ~torch.isfinite(loss.detach()) & (self._first_nonfinite < 0)
        self._first_nonfinite = torch.where(first, step, self._first_nonfinite)
        self._nonfinite_loss = torch.where(first, loss.detach().float(), self._nonfinite_loss)

    def _check_finite(self) -> None:
        """TrainingError if a step's loss was not finite. Runs on logging steps, before a checkpoint is written, and
        at the end of training: so no checkpoint holds weights stepped with a non-finite loss."""
        first = getattr(self, "_first_nonfinite", None)
        if first is not None and int(first) >= 0:
            raise TrainingError(
                f"the training loss is {self._nonfinite_loss.item()} at step {int(first)}; lower optim.lr or check the "
                "data (no checkpoint of this or a later step was written)"
            )

    def on_train_end(self) -> None:
        self._check_finite()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # Fixed noise and timesteps per batch, so the validation loss of two checkpoints is comparable.
        per_sample, _ = self.diffusion_loss(batch, self.step_generator(-1, batch_idx), drop=False)
        self.log("val/loss", per_sample.mean(), prog_bar=True, batch_size=per_sample.shape[0], sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        # The same fixed-noise loss as validation, on the test shards.
        per_sample, _ = self.diffusion_loss(batch, self.step_generator(-2, batch_idx), drop=False)
        self.log("test/loss", per_sample.mean(), batch_size=per_sample.shape[0], sync_dist=True)

    # ---- optimisation ---------------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for _, p in self.trainable_parameters()]
        # The fused kernel, one launch for all weights, where they are on a GPU (as under DDP or FSDP). dv clips the
        # gradients itself (configure_gradient_clipping), so Lightning's refusal to clip for it does not apply.
        fused = self.optim.fused if self.optim.fused is not None else all(p.is_cuda for p in params)
        opt = adamw(params, self.optim, fused)
        warmup = max(1, self.optim.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        # Called after the AMP scaler unscaled the gradients (16-mixed; a fused optimizer unscales in its step, so
        # its gradients are still scaled here), before clipping. Under FSDP each rank holds gradient shards, so
        # every rank takes part in combining their norms. The norm is computed once, for the log and the clipping.
        grads = [p.grad for _, p in self.trainable_parameters() if p.grad is not None]
        self._grad_norm = None
        if grads or getattr(self.trainer.strategy, "shards_gradients", False):
            self._grad_norm = total_grad_norm(self.trainer.strategy, grads) / self._gradient_scale(optimizer)
            self.log("train/grad_norm", self._grad_norm)

    def _gradient_scale(self, optimizer) -> torch.Tensor | float:
        """The loss scale still in the gradients: the GradScaler's when the optimizer unscales in its step, else 1."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is None or not getattr(optimizer, "_step_supports_amp_scaling", False):
            return 1.0
        return scaler._get_scale_async()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by the norm `on_before_optimizer_step` computed (or by value), for any optimizer, fused included."""
        if not gradient_clip_val:
            return
        params = [p for _, p in self.trainable_parameters() if p.grad is not None]
        clip_gradients(
            params,
            gradient_clip_val,
            gradient_clip_algorithm,
            getattr(self, "_grad_norm", None),
            self._gradient_scale(optimizer),
        )

    def optimizer_step(self, *args, **kwargs) -> None:
        # The EMA moves right after the weights, before callbacks (ModelCheckpoint) see the step.
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update()

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.to(self.device)

    def on_validation_epoch_start(self) -> None:
        if self.ema is not None:
            self.ema.to(self.device)
            self._ema_ctx = self.ema.swapped()
            self._ema_ctx.__enter__()

    def on_validation_epoch_end(self) -> None:
        if getattr(self, "_ema_ctx", None) is not None:
            self._ema_ctx.__exit__(None, None, None)
            self._ema_ctx = None

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._check_finite()
        checkpoint["state_dict"] = saved_weights(checkpoint["state_dict"], (n for n, _ in self.trainable_parameters()))
        checkpoint["dv_version"] = __version__
        # Plain dicts, so that the checkpoint loads with torch.load(weights_only=True).
        checkpoint["hyper_parameters"] = plain(checkpoint.get("hyper_parameters", {}))
        if self.ema is not None:
            checkpoint[EMA_KEY] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another trainable-weight set; resume with this recipe's optimizer settings."""
        expected = {n for n, _ in self.trainable_parameters()}
        # Under FSDP the strategy has loaded (and checked) the weights already and hands no state_dict on.
        if "state_dict" in checkpoint:
            writer = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
            check_saved(expected, set(checkpoint["state_dict"]), type(self).__name__, whole=True, writer=writer)
        if self.ema is not None and EMA_KEY in checkpoint:
            self.ema.load_state_dict(checkpoint[EMA_KEY])
        self._resume_with_recipe_optim(checkpoint)

    def _resume_with_recipe_optim(self, checkpoint: dict) -> None:
        """Make the optimizer and LR-scheduler states about to be restored follow this recipe's `optim`.

        Lightning restores the learning rate, betas, eps and weight decay saved in the checkpoint, which would drop
        `--model.init_args.optim.lr=...` given on resume without a word. The moments and the step count are kept;
        the warm-up position is kept and scaled to the new rate. With unchanged settings nothing changes.
        """
        for state in checkpoint.get("optimizer_states", []):
            for group in state.get("param_groups", []):
                base = group.get("initial_lr", group.get("lr"))
                if base:
                    group["lr"] = group["lr"] * (self.optim.lr / base) if base != self.optim.lr else group["lr"]
                group["initial_lr"] = self.optim.lr
                group.update(betas=tuple(self.optim.betas), eps=self.optim.eps, weight_decay=self.optim.weight_decay)
        for sched in checkpoint.get("lr_schedulers", []):
            if "base_lrs" in sched:
                sched["base_lrs"] = [self.optim.lr for _ in sched["base_lrs"]]
            if sched.get("_last_lr") and "last_epoch" in sched:
                warmup = max(1, self.optim.warmup_steps)
                sched["_last_lr"] = [
                    self.optim.lr * min(1.0, (sched["last_epoch"] + 1) / warmup) for _ in sched["_last_lr"]
                ]

    def trained_state_dict(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """The trained weights (EMA ones when kept), named 'unet.*' and 'branch.*', for export."""
        params = self.trainable_parameters()
        values = self.ema.shadow if (use_ema and self.ema is not None) else [p for _, p in params]
        return {export_name(n): v.detach().cpu().contiguous() for (n, _), v in zip(params, values)}
