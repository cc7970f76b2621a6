"""VideoValidation: sample fixed validation pairs every N steps (and in `dv validate`), score and log them."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from tqdm.auto import tqdm

from dv.callbacks.media import add_gif, custom_scalars_layout, first_frame_grid
from dv.callbacks.results import write_results
from dv.data.images import image_to_model
from dv.diffusion.pipeline import MODES, generate
from dv.diffusion.sampling import SamplerConfig
from dv.errors import ConfigError
from dv.metrics.build import MetricsConfig, build_metrics
from dv.models.conditions import video_from_model

log = logging.getLogger(__name__)


class VideoValidation(Callback):
    """Generate videos for a fixed set of (caption, reference image) pairs with fixed seeds, in each mode.

    Metrics (FVD, IS, CLIP-SIM, FFF_CLIP, FFF_SSIM; those without a detector file are skipped) are
    updated on every rank and synchronised; scalars go to `val_{mode}/{metric}`, videos and a
    reference | first | last frame grid to TensorBoard.
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        num_videos: int = 4,
        modes: list[str] | None = None,
        steps: int = 25,
        s_text: float = 9.0,
        s_image: float = 1.0,
        seed: int = 0,
        resample_steps: int = 2,
        metrics: MetricsConfig | None = None,
        log_videos: int = 4,
        fps: float = 8.0,
        paper_rows: str | None = None,
    ) -> None:
        """
        Args:
            every_n_steps: sample and score every this many training steps (0: only in `dv validate`).
            num_videos: validation pairs per rank, taken from the start of the validation shards.
            modes: any of dv.diffusion.pipeline.MODES: 't2v', 'i2v', 'ti2v' (text+image) and 'zero_shot'
                (TI2V-Zero on the backbone).
            steps: DDIM steps per video.
            s_text: text guidance scale s_t (Eq. 5).
            s_image: image guidance scale s_i (Eq. 5).
            seed: seed of video i is seed + its index across ranks.
            resample_steps: TI2V-Zero resampling steps.
            metrics: detector files of the metrics; None computes FFF_SSIM only.
            log_videos: videos per mode written to TensorBoard.
            fps: frame rate of the logged videos.
            paper_rows: add the paper's numbers for 'ucf101' or 'msrvtt' to the results table, as reference rows.
        """
        modes = list(modes or ["ti2v"])
        unknown = sorted(set(modes) - set(MODES))
        if unknown:
            raise ConfigError(f"unknown validation modes {unknown}; choose from {list(MODES)}")
        self.every_n_steps, self.num_videos, self.modes = every_n_steps, num_videos, modes
        self.config = SamplerConfig(steps=steps, s_text=s_text, s_image=s_image).validate()
        self.seed, self.resample_steps = seed, resample_steps
        self.metrics_config = metrics or MetricsConfig()
        self.log_videos, self.fps, self.paper_rows = log_videos, fps, paper_rows
        self._pairs: dict | None = None
        self._metrics = None
        self.results: dict[str, dict[str, float]] = {}
        self.detectors: dict[str, str] = {}

    # ---- hooks ----------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._metrics = build_metrics(self.metrics_config)
        writer = self._writer(trainer)
        if writer is not None and trainer.is_global_zero:
            writer.add_custom_scalars(custom_scalars_layout(self.modes, list(self._metrics)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.run(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.state.fn != TrainerFn.VALIDATING:  # during fit the step schedule above decides
            return
        self.run(trainer, pl_module)
        if trainer.is_global_zero:
            out_dir = trainer.log_dir or "."
            videos = len(self.pairs(trainer)["caption"]) * trainer.world_size
            paths = write_results(self.results, videos, out_dir, self.paper_rows, self.detectors)
            print(Path(paths[0]).read_text())
            print(f"results: {paths[0]} and {paths[1]}")

    # ---- work -----------------------------------------------------------------------------------------------
    def pairs(self, trainer: L.Trainer) -> dict:
        """This rank's fixed validation clips: real videos (B, T, H, W, C) uint8, captions, first frames."""
        if self._pairs is None:
            dm = trainer.datamodule
            if dm is None or not getattr(dm, "val_shards", None):
                raise ConfigError("VideoValidation needs data.val_shards (its captions and reference images)")
            videos, captions = [], []
            for batch in dm._loader(dm.val_dataset()):
                if "video" not in batch:
                    raise ConfigError(
                        "VideoValidation needs video shards in data.val_shards (it scores real clips), not latent shards"
                    )
                videos.append(batch["video"])
                captions += list(batch["caption"])
                if len(captions) >= self.num_videos:
                    break
            video = torch.cat(videos)[: self.num_videos]
            self._pairs = {"video": video, "caption": captions[: self.num_videos], "reference": video[:, 0]}
        return self._pairs

    @torch.no_grad()
    def generate(self, pl_module, mode: str, pairs: dict, seeds: list[int]) -> torch.Tensor:
        """uint8 (B, T, H, W, C) videos of one mode for the pairs."""
        video = pairs["video"]
        frames, size = video.shape[1], video.shape[2]
        images = image_to_model(pairs["reference"].to(pl_module.device))
        out = generate(
            pl_module,
            mode,
            pairs["caption"],
            images,
            self.config,
            seeds,
            frames=frames,
            size=size,
            resample_steps=self.resample_steps,
        )
        return video_from_model(out).cpu()

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, dict[str, float]]:
        """Sample every mode, update and compute the metrics, log scalars and media; returns the results."""
        pairs = self.pairs(trainer)
        n = len(pairs["caption"])
        seeds = [self.seed + trainer.global_rank * n + i for i in range(n)]
        was_training = pl_module.training
        pl_module.eval()
        bar = tqdm(
            total=n * len(self.modes), desc="validation videos", unit="video", disable=not trainer.is_global_zero
        )
        try:
            for mode in self.modes:
                videos = self.generate(pl_module, mode, pairs, seeds)
                bar.update(n)
                self.results[mode] = self.score(pairs, videos, pl_module.device)
                self.log_media(trainer, mode, pairs, videos)
        finally:
            bar.close()
            pl_module.train(was_training)
        flat = {f"val_{mode}/{name}": value for mode, row in self.results.items() for name, value in row.items()}
        writer = self._writer(trainer)
        if writer is not None and trainer.is_global_zero:
            for tag, value in flat.items():
                writer.add_scalar(tag, value, trainer.global_step)
            # The hyper-parameters tab: the run's settings beside its latest metrics.
            self._tensorboard(trainer).log_hyperparams(dict(pl_module.hparams), metrics=flat)
        return self.results

    def score(self, pairs: dict, videos: torch.Tensor, device) -> dict[str, float]:
        """The configured metrics of one mode's videos against the real clips (synchronised across ranks)."""
        row = {}
        for name, metric in self._metrics.items():
            metric = metric.to(device)
            metric.reset()
            if name == "fvd":
                metric.update(pairs["video"].to(device), real=True)
                metric.update(videos.to(device), real=False)
            elif name == "is":
                metric.update(videos.to(device))
            elif name == "clip_sim":
                metric.update(videos.to(device), pairs["caption"])
            else:  # first-frame fidelity
                metric.update(videos.to(device), pairs["reference"].to(device))
            value = metric.compute()
            row[name] = float(value[0] if isinstance(value, tuple) else value)
            if getattr(metric, "detector_id", None) is not None:
                self.detectors[name] = f"{metric.detector_id.path} (sha256 {metric.detector_id.sha256})"
        return row

    def log_media(self, trainer: L.Trainer, mode: str, pairs: dict, videos: torch.Tensor) -> None:
        """Generated videos (with their captions) and the first-frame grid, on rank 0."""
        writer = self._writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        step = trainer.global_step
        for i in range(min(self.log_videos, len(videos))):
            add_gif(writer, f"val_{mode}/video_{i}", videos[i].numpy(), step, self.fps)
            writer.add_text(f"val_{mode}/caption_{i}", pairs["caption"][i], step)
        writer.add_image(
            f"val_{mode}/reference_first_last", first_frame_grid(pairs["reference"], videos), step, dataformats="HWC"
        )

    @staticmethod
    def _tensorboard(trainer: L.Trainer):
        """The trainer's TensorBoardLogger, if it has one."""
        from lightning.pytorch.loggers import TensorBoardLogger

        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    def _writer(self, trainer: L.Trainer):
        """The TensorBoard SummaryWriter of the trainer's logger, if it has one."""
        logger = self._tensorboard(trainer)
        return logger.experiment if logger is not None else None
