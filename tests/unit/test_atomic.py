"""Checkpoints and exports are replaced whole or not at all, with $TMPDIR on another filesystem than the run folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from dv import atomic
from dv.atomic import atomic_write
from dv.callbacks.checkpoint import AtomicCheckpointIO, ModelCheckpoint

REPO = Path(__file__).resolve().parents[2]
WRITER = """
import sys, torch
from dv.callbacks.checkpoint import AtomicCheckpointIO
io, path, n = AtomicCheckpointIO(), sys.argv[1], 0
while True:  # checkpoints of ~24 MB, each with its own number, until killed
    n += 1
    io.save_checkpoint({"n": n, "w": torch.full((6_000_000,), float(n))}, path)
    print(n, flush=True)
"""


def _filesystem(path: Path) -> int:
    return os.stat(path).st_dev


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm, a tmpfs")
def test_killed_checkpoint_writer_leaves_the_previous_checkpoint_whole(tmp_path):
    """kill -9 at random moments of a loop of saves: last.ckpt always loads whole (Lightning's own save, through
    fsspec with $TMPDIR on another filesystem, copies over the old file and leaves it partial)."""
    shm = Path(os.environ.get("DV_TEST_SHM", "/dev/shm")) / f"dv-tmp-{os.getpid()}"
    shm.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    if _filesystem(shm) == _filesystem(run):
        pytest.skip("the run folder is on /dev/shm's filesystem")
    env = {**os.environ, "TMPDIR": str(shm), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    path = run / "last.ckpt"
    try:
        for kill_after in (0.35, 0.5, 0.65, 0.8, 0.95, 1.1):
            writer = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(path)], env=env, stdout=subprocess.PIPE, text=True
            )
            writer.stdout.readline()  # one whole checkpoint exists
            time.sleep(kill_after)
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            ckpt = torch.load(path, weights_only=True)
            assert torch.equal(ckpt["w"], torch.full((6_000_000,), float(ckpt["n"]))), "a partial checkpoint"
        assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["last.ckpt"]
    finally:
        for p in shm.iterdir():
            p.unlink()
        shm.rmdir()


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_atomic_write_gives_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "f.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o640


def test_dv_model_checkpoint_makes_the_trainer_write_atomically(tmp_path):
    callback = ModelCheckpoint(dirpath=tmp_path)
    trainer = L.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False)
    callback.setup(trainer, L.LightningModule(), "fit")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_resumed_run_replaces_the_step_file_it_writes_again(tmp_path):
    """A run killed between its step-2 file and its `last.ckpt` resumes from step 1 and writes step 2 once more:
    one file, the new one, and no `-v1` copy beside it."""
    from lightning.pytorch.demos.boring_classes import BoringModel

    def fit(max_steps: int, ckpt_path: str | None = None) -> None:
        callback = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, filename="{step}")
        trainer = L.Trainer(
            max_steps=max_steps,
            callbacks=[callback],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
        )
        trainer.fit(BoringModel(), ckpt_path=ckpt_path)

    fit(2)
    (tmp_path / "step=2.ckpt").write_bytes(b"stale: the killed run's")
    fit(2, ckpt_path=str(tmp_path / "step=1.ckpt"))
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["step=1.ckpt", "step=2.ckpt"]
    assert torch.load(tmp_path / "step=2.ckpt", weights_only=True)["global_step"] == 2


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "rename-aside"])
def test_replace_folder_puts_the_new_folder_in_place_of_a_folder_or_a_file(tmp_path, monkeypatch, exchange):
    if not exchange:  # a filesystem without RENAME_EXCHANGE (NFS)
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    for old_is_folder in (True, False):
        path, new = tmp_path / f"ckpt-{old_is_folder}", tmp_path / f".ckpt-{old_is_folder}.tmp"
        if old_is_folder:
            path.mkdir()
            (path / "old-shard").write_bytes(b"old")
        else:
            path.write_bytes(b"a one-file checkpoint")
        new.mkdir()
        (new / "new-shard").write_bytes(b"new")
        atomic.replace_folder(new, path)
        assert [p.name for p in path.iterdir()] == ["new-shard"] and not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-False", "ckpt-True"]


def test_a_failed_sharded_save_keeps_the_previous_folder_whole(tmp_path, monkeypatch):
    """DVFSDPStrategy's shard folders (state_dict_type: sharded) are written beside the old one and swapped in whole.
    Writing into the old folder, a save that died midway left a mix of two steps' shards."""
    import torch.distributed.checkpoint as dcp

    from dv import strategies

    strategy = strategies.DVFSDPStrategy(state_dict_type="sharded")
    path = tmp_path / "last.ckpt"

    def save(step: int) -> None:
        strategy.save_checkpoint({"state_dict": {"w": torch.full((4,), float(step))}, "global_step": step}, path)

    def saved() -> tuple[int, torch.Tensor]:
        state = {"model": {"w": torch.zeros(4)}}
        dcp.load(state, checkpoint_id=path)
        return torch.load(path / "meta.pt", weights_only=True)["global_step"], state["model"]["w"]

    save(1)
    real_save = dcp.save

    def dies_midway(state, checkpoint_id):
        (Path(checkpoint_id) / "__0_0.distcp").write_bytes(b"half a shard")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(strategies.distributed_checkpoint, "save", dies_midway)
    with pytest.raises(OSError):
        save(2)
    step, weights = saved()
    assert step == 1 and torch.equal(weights, torch.full((4,), 1.0))
    monkeypatch.setattr(strategies.distributed_checkpoint, "save", real_save)
    save(3)
    step, weights = saved()
    assert step == 3 and torch.equal(weights, torch.full((4,), 3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"], "the staging folder is gone"
