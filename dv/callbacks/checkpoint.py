"""Lightning's ModelCheckpoint whose `last.ckpt` always holds the step training ended on, written atomically."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dv.atomic import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that replaces a local checkpoint file atomically on any filesystem.

    Lightning's own save goes through an fsspec transaction, which writes the temp file in $TMPDIR and, when that
    is another filesystem than the run folder (a local /tmp, shared storage), copies it over the old file: a kill
    or a full disk during the copy left a 0-byte or partial `last.ckpt`, and the previous good checkpoint was gone.
    Here the temp file lives in the checkpoint's own folder (dv.atomic.atomic_write). Remote paths stay Lightning's.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_write(path) as tmp:
            torch.save(checkpoint, tmp)


class ModelCheckpoint(LightningModelCheckpoint):
    """`lightning.pytorch.callbacks.ModelCheckpoint`: with `save_last` the final step is always saved, and every
    checkpoint file is replaced atomically (AtomicCheckpointIO).

    Lightning writes `last.ckpt` only when a step- or epoch-triggered save falls on it (or when nothing was saved at
    all), so a 225-step run with `every_n_train_steps: 100` ended with `last.ckpt` at step 200: `dv export`,
    `dv validate` and `--ckpt_path last` silently lost the last 25 steps. This saves `last` once more at the end
    of training when it is behind.

    A step's file is replaced, not versioned (`enable_version_counter` defaults to False): a run killed after
    writing `epoch=E-step=S.ckpt` but before `last.ckpt` resumes from the older `last.ckpt` and reaches step S
    again, and Lightning then wrote `epoch=E-step=S-v1.ckpt` beside the stale file. Everything else is Lightning's.
    """

    def __init__(self, *args: Any, enable_version_counter: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, enable_version_counter=enable_version_counter, **kwargs)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Only Lightning's plain file writer is swapped: a custom or async CheckpointIO of the recipe is kept.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        # Lightning's own record of the step it last saved (it skips a second save of the same step the same way).
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
