"""dv's own paths, timed: the LightningModule's training step through a real Trainer.fit, and VideoSampler."""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from dv.bench.device import synchronize
from dv.bench.workload import Workload, first_clips
from dv.diffusion.pipeline import VideoSampler
from dv.diffusion.sampling import SamplerConfig
from dv.recipe import Recipe


class SameBatch(Dataset):
    """The workload's CPU batch, `length` times: the loader costs nothing and the step is what is timed."""

    def __init__(self, batch: dict, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.batch


class StepTimes(Callback):
    """Wall-clock seconds of each training step, end to end (fetch, transfer, forward, backward, optimizer, hooks)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stamps: list[float] = []

    def _stamp(self) -> None:
        synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def on_train_start(self, trainer, pl_module) -> None:
        self._stamp()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._stamp()

    @property
    def times(self) -> list[float]:
        """Seconds per step, in order."""
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


def fit_times(work: Workload, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` training steps of dv's module under Lightning, after `warmup` steps."""
    timer = StepTimes(work.device)
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        # Lightning's start-up notes and its advice about loaders and eval-mode (frozen) modules are not figures.
        warnings.filterwarnings("ignore", module="lightning")
        quiet.setLevel(logging.WARNING)
        trainer = L.Trainer(
            accelerator="gpu" if work.device.type == "cuda" else "cpu",
            devices=[work.device.index or 0] if work.device.type == "cuda" else 1,
            precision=work.precision,
            max_steps=warmup + repeats,
            gradient_clip_val=work.gradient_clip_val,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            default_root_dir=root,
            callbacks=[timer],
        )
        loader = DataLoader(SameBatch(work.train_batch, warmup + repeats), batch_size=None)
        try:
            trainer.fit(work.module, train_dataloaders=loader)
        finally:
            quiet.setLevel(level)
    work.module.to(work.device)  # Lightning hands the module back on the CPU
    return timer.times[warmup:]


def what_dv_adds(work: Workload) -> list[str]:
    """Work dv's training step does that the plain loop does not (so that the ratio reads right)."""
    module = work.module
    extra = ["condition dropout", "loss per timestep bucket and grad-norm logging", "warm-up LR schedule"]
    if work.gradient_clip_val:
        extra.append(f"gradient clipping at {work.gradient_clip_val:g}")
    if getattr(module, "ema", None) is not None:
        extra.append("EMA of the trainable weights")
    return extra


def sampler_call(work: Workload, steps: int, s_text: float, s_image: float) -> Callable[[], torch.Tensor]:
    """dv's VideoSampler on the workload's captions (and first frames as reference images, when there is a branch)."""
    module = work.module
    _, t, size = work.batch["video"].shape[:3]
    sampler = VideoSampler(module.backbone, module.branch, module.noise_scheduler, num_frames=t, frame_size=size)
    images = None
    if module.branch is not None:
        images = work.batch["video"][:, 0].to(work.device).permute(0, 3, 1, 2).float() / 127.5 - 1
    config = SamplerConfig(steps=steps, s_text=s_text, s_image=s_image, **Recipe.load(work.recipe).sampling_settings())
    seeds = list(range(work.batch_size))

    def run() -> torch.Tensor:
        with work.autocast():
            return sampler.sample(work.batch["caption"], images, config, seeds, progress=False)

    return run


def loss_and_backward(work: Workload, clips: int | None = None) -> Callable[[], None]:
    """dv's training loss and its backward on the first `clips` of the batch (all by default), without the
    optimizer: what FLOPs are counted on."""
    module = work.module
    clips = clips or work.batch_size
    batch = first_clips(work.train_batch, clips)

    def run() -> None:
        with work.autocast():
            # No condition dropout: a dropped caption skips the text encoder, and the count is of the full step.
            per_sample, _ = module.diffusion_loss(batch, module.step_generator(0, 0), drop=False)
        per_sample.mean().backward()
        module.zero_grad(set_to_none=True)

    return run
