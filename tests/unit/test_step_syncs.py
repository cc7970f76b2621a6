"""The training step's speed contract: no host syncs, except on the steps the logger writes."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from tests.syncs import SyncCounter
from tests.tiny import tiny_dreamvideo, tiny_dynamicrafter
from tests.unit.test_models import make_batch

LOG_EVERY = 2


class _Label(L.Callback):
    """Labels what the counter sees with the step about to run; arms it after step 0 (the set-up: empty prompt,
    the schedule moved to the device, the logged metrics registered)."""

    def __init__(self, counter: SyncCounter) -> None:
        self.counter = counter

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.counter.label = trainer.global_step
        self.counter.armed = trainer.global_step >= 1


def _batches(n: int, stride: bool = False) -> list[dict]:
    batches = [make_batch(2, 4, 16, seed=i) for i in range(n)]
    if stride:
        for b in batches:
            b["stride"] = torch.tensor([2, 3])
    return batches


@pytest.mark.parametrize("make", [tiny_dreamvideo, pytest.param(tiny_dynamicrafter, marks=pytest.mark.slow)])
def test_training_steps_sync_only_when_the_logger_writes(make, tmp_path):
    torch.manual_seed(0)
    module = make(ema_decay=0.9)
    counter = SyncCounter()
    steps = 2 * LOG_EVERY
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        log_every_n_steps=LOG_EVERY,
        gradient_clip_val=1.0,
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=True,
        callbacks=[_Label(counter)],
    )
    with counter:
        trainer.fit(module, DataLoader(_batches(steps, stride=make is tiny_dynamicrafter), batch_size=None))
    logging_steps = {s for s in range(steps) if (s + 1) % LOG_EVERY == 0}
    quiet = [(step, name) for step, name in counter.syncs if step not in logging_steps]
    assert quiet == [], f"host syncs on steps the logger does not write: {quiet}"
    assert any(step in logging_steps for step, _ in counter.syncs), "the logging steps read the loss back"
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "train/loss_t" in metrics and "train/grad_norm" in metrics


def test_the_counter_sees_each_kind_of_sync():
    counter = SyncCounter()
    x = torch.arange(4.0)
    with counter:
        counter.armed = True
        x.sum().item()
        x[x > 1]
        torch.nonzero(x)
        bool(x.any())
        torch.tensor([1, 2], device=x.device)
        x.cpu()
        x[torch.tensor(1)]
        torch.where(x > 1, x, 0)  # the three-argument form: no sync
        x.to(x.device)  # the same device: no copy
    names = [name for _, name in counter.syncs]
    assert names == [
        "item",
        "__getitem__[bool mask]",
        "nonzero",
        "__bool__",
        "tensor(host data, device=)",
        "cpu",
        "__getitem__[0-dim tensor]",
    ], names
