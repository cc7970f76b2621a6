"""Lightning's ModelCheckpoint whose `last.ckpt` always holds the step training ended on."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class ModelCheckpoint(LightningModelCheckpoint):
    """`lightning.pytorch.callbacks.ModelCheckpoint`, and with `save_last` the final step is always saved.

    Lightning writes `last.ckpt` only when a step- or epoch-triggered save falls on it (or when nothing was saved at
    all), so a 225-step run with `every_n_train_steps: 100` ended with `last.ckpt` at step 200: `dv export`,
    `dv validate` and `--ckpt_path last` silently lost the last 25 steps. This saves `last` once more at the end
    of training when it is behind. Everything else is Lightning's.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        # Lightning's own record of the step it last saved (it skips a second save of the same step the same way).
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
