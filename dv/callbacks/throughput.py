"""ThroughputLogger: clips/s and frames/s of training over all ranks, and peak GPU memory."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from dv.data.latents import clips_and_frames


class ThroughputLogger(Callback):
    """Log clips/s, frames/s (all ranks together) and peak GPU memory every `every_n_steps` optimizer steps."""

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every_n_steps = every_n_steps
        self._start: float | None = None
        self._clips = 0
        self._frames = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._start is None:  # the first step includes start-up; measure from its end
            self._start = now
            return
        b, t = clips_and_frames(batch)  # a video or a latent batch
        self._clips += b * trainer.world_size
        self._frames += b * t * trainer.world_size
        if trainer.global_step % self.every_n_steps == 0:
            elapsed = now - self._start
            pl_module.log("perf/clips_per_sec", self._clips / elapsed, rank_zero_only=True)
            pl_module.log("perf/frames_per_sec", self._frames / elapsed, rank_zero_only=True)
            if torch.cuda.is_available() and pl_module.device.type == "cuda":
                pl_module.log(
                    "perf/peak_memory_gib",
                    torch.cuda.max_memory_allocated(pl_module.device) / 2**30,
                    rank_zero_only=True,
                )
            self._start, self._clips, self._frames = now, 0, 0
