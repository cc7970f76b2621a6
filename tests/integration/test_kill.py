"""kill -9 at seeded random moments of `dv fit` and `dv cache-latents`: what is left is whole, and the rerun ends
where an uninterrupted run ends."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.integration.test_fit import REPO, load, tiny_recipe

MAX_STEPS = 20
"""Steps of the killed fit: 2 steps an epoch, a checkpoint every 2 steps (each one on an epoch boundary)."""
KILLS = 10
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # one thread: runs repeat bit for bit


def launch(*args: str, cwd: Path) -> subprocess.Popen:
    """`dv ARGS` in the background; its output goes to cwd/dv.log (a pipe nobody reads could fill and stall it)."""
    with open(cwd / "dv.log", "a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dv", *args], cwd=cwd, env=ENV, stdout=log, stderr=subprocess.STDOUT
        )


def log_tail(cwd: Path) -> str:
    return (cwd / "dv.log").read_text()[-3000:]


def temp_files(folder: Path) -> list[str]:
    """The temp files of writes in progress (or killed) in `folder`: dv's `.NAME.*.tmp` and the builders' `NAME.tmp`."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] if folder.is_dir() else []


def wait_for_writes(proc: subprocess.Popen, folder: Path, count: int = 1) -> bool:
    """Poll (every 0.5 ms) until `count` distinct temp files were seen in `folder`; False if the process ended first."""
    seen: set[str] = set(temp_files(folder))
    before = set(seen)
    while proc.poll() is None:
        seen |= set(temp_files(folder))
        if len(seen - before) >= count:
            return True
        time.sleep(0.0005)
    return False


def kill(proc: subprocess.Popen) -> bool:
    """kill -9; whether the process was still running."""
    alive = proc.poll() is None
    proc.kill()
    proc.wait()
    return alive


def timed_run(args: list[str], folder: Path, cwd: Path) -> tuple[float, float]:
    """Run to the end; (seconds until the first write began in `folder`, seconds from then to the exit)."""
    start = time.monotonic()
    proc = launch(*args, cwd=cwd)
    assert wait_for_writes(proc, folder), log_tail(cwd)
    first = time.monotonic()
    assert proc.wait() == 0, log_tail(cwd)
    return first - start, time.monotonic() - first


@pytest.mark.slow
def test_fit_killed_ten_times_resumes_whole_and_ends_as_an_uninterrupted_run(tmp_path, pans_shards):
    """Each kill falls in start-up, inside a checkpoint write (the first, second or third of the run) or between steps.
    After each, every checkpoint file loads whole at an epoch boundary; `--resume-if-exists` (`--ckpt_path last` when
    there is one) goes on, and the end is bit-identical to a run never interrupted."""
    whole = tiny_recipe(tmp_path, pans_shards, "whole", max_steps=MAX_STEPS, limit_val_batches=0)
    killed = tiny_recipe(tmp_path, pans_shards, "killed", max_steps=MAX_STEPS, limit_val_batches=0)
    ckpts = tmp_path / "runs" / "killed" / "latest" / "checkpoints"
    start_s, train_s = timed_run(
        ["fit", "--recipe", str(whole)], tmp_path / "runs" / "whole" / "latest" / "checkpoints", tmp_path
    )

    rng = random.Random(24)
    kills = in_write = 0
    while kills < KILLS:
        proc = launch("fit", "--recipe", str(killed), "--resume-if-exists", cwd=tmp_path)
        moment = rng.choice(["start-up", "write", "steps"])
        if moment == "start-up":
            time.sleep(rng.uniform(0, start_s))
        elif moment == "write":
            wait_for_writes(proc, ckpts, count=rng.randint(1, 3))
        else:
            wait_for_writes(proc, ckpts)
            time.sleep(rng.uniform(0, train_s / (MAX_STEPS // 2)))  # up to one checkpoint interval
        if not kill(proc):
            assert proc.returncode == 0, log_tail(tmp_path)
            break  # trained to the end before this kill: too few steps for the kills asked
        kills += 1
        in_write += bool(temp_files(ckpts))
        for path in ckpts.glob("*.ckpt") if ckpts.is_dir() else []:
            step = load(path)["global_step"]  # whole, or torch.load fails
            assert step % 2 == 0 and step > 0, (path.name, step)
    assert kills == KILLS, f"the run ended after {kills} kills"
    assert in_write >= 1, "no kill fell inside a checkpoint write"

    proc = launch("fit", "--recipe", str(killed), "--resume-if-exists", cwd=tmp_path)
    assert proc.wait() == 0, log_tail(tmp_path)
    a = load(tmp_path / "runs" / "whole" / "latest" / "checkpoints" / "last.ckpt")
    b = load(ckpts / "last.ckpt")
    assert a["global_step"] == b["global_step"] == MAX_STEPS
    for part in ("state_dict",):
        assert a[part].keys() == b[part].keys() and a[part]
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), k
    for k in a["ema"]["shadow"]:
        assert torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]), k


@pytest.mark.slow
def test_cache_latents_killed_reruns_to_identical_shards(tmp_path, pans_shards):
    recipe = tiny_recipe(tmp_path, pans_shards, "cache")
    args = [
        "cache-latents",
        "--recipe",
        str(recipe),
        "--shards",
        str(pans_shards / "train-*.tar"),
        str(pans_shards / "val-*.tar"),
        "--workers",
        "1",
        "--accelerator",
        "cpu",
        "-q",
        "--out",
    ]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _, encode_s = timed_run([*args, str(whole)], whole, tmp_path)

    rng = random.Random(24)
    kills = 0
    for _ in range(4):
        proc = launch(*args, str(killed), cwd=tmp_path)
        wait_for_writes(proc, killed)
        # Each rerun has only what the kills left to encode: 4 sleeps of at most encode_s / 8 leave half of it.
        time.sleep(rng.uniform(0, encode_s / 8))
        kills += kill(proc)
        for stats in killed.glob("*.stats.json"):  # a shard with its stats is whole
            tar = stats.with_name(stats.name.replace(".stats.json", ".tar"))
            assert tar.read_bytes() == (whole / tar.name).read_bytes(), tar.name
    assert kills >= 2, "the kills came after the build had ended"
    proc = launch(*args, str(killed), cwd=tmp_path)
    assert proc.wait() == 0, log_tail(tmp_path)
    tars = sorted(p.name for p in whole.glob("*.tar"))
    assert tars and sorted(p.name for p in killed.glob("*.tar")) == tars
    for name in tars:
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
