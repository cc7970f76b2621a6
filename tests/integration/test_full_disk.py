"""A full disk (a small tmpfs) during a checkpoint save, a shard build and `dv cache-latents`: one line, exit 2, the
earlier checkpoint and the finished shards whole, no partial file under a final name."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds

from dv.data.shards import decode_sample, read_stats
from tests.integration.conftest import PANS_BUILD
from tests.integration.test_fit import REPO, fit, tiny_recipe

PAGE = 4096


@contextlib.contextmanager
def small_disk(folder: Path, size: int):
    """`folder` as a tmpfs of `size` bytes (rounded up to pages); skips the test where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-size // PAGE) * PAGE
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def used(folder: Path) -> int:
    """Bytes a copy of `folder` takes on a tmpfs (whole pages per file)."""
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in folder.rglob("*") if p.is_file())


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def assert_one_line(result: subprocess.CompletedProcess, prefix: str, needle: str) -> str:
    """Exit 2 and one error line (the last) holding `needle`, no traceback."""
    out = result.stdout + result.stderr
    assert result.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(prefix) and needle in last, last
    return last


def whole_tar(path: Path) -> int:
    """The samples of a tar that reads to its end and whose every clip decodes (else an exception)."""
    samples = list(wds.tarfile_samples([{"url": str(path)}], handler=wds.reraise_exception))
    for sample in samples:
        decode_sample(sample)
    return len(samples)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_save_keeps_the_last_one(tmp_path, pans_shards):
    """A run resumed on a disk with room for less than one more checkpoint: one line, last.ckpt as it was."""
    recipe = tiny_recipe(tmp_path, pans_shards, "full", max_steps=2)
    fit(recipe)
    runs = tmp_path / "runs"
    ckpts = runs / "full" / "latest" / "checkpoints"
    before = files(ckpts)
    size = used(runs) + (ckpts / "last.ckpt").stat().st_size // 2
    shutil.move(runs, tmp_path / "runs-done")
    with small_disk(runs, size):
        shutil.copytree(tmp_path / "runs-done", runs, dirs_exist_ok=True, symlinks=True)
        result = run(
            "-m", "dv", "fit", "--recipe", str(recipe), "--ckpt_path", "last", "--trainer.max_steps=4", cwd=tmp_path
        )
        assert_one_line(result, "dv: error: ", "No space left on device")
        assert files(ckpts) == before, "the checkpoints are the earlier ones, byte for byte"
        assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".")], "the temp file is removed"


def test_full_disk_during_a_shard_build_keeps_the_finished_shards(tmp_path, pans_shards):
    """The build of `pans_shards` on a disk with room for about two of its shards."""
    out = tmp_path / "disk"
    with small_disk(out, 2 * max(p.stat().st_size for p in pans_shards.glob("*.tar")) + PAGE):
        result = run(*PANS_BUILD, "--out", str(out / "s"), cwd=tmp_path)
        assert_one_line(result, "data_prep: error: ", "no space left on device")
        built = files(out / "s")
        finished = [n for n in built if n.endswith(".tar") and n.removesuffix(".tar") + ".stats.json" in built]
        assert finished, "some shards were finished before the disk filled"
        for name in (n for n in built if n.endswith(".tar")):  # every file under a final name is whole
            stats = read_stats(out / "s" / name.replace(".tar", ".stats.json"))
            samples = whole_tar(out / "s" / name)  # renamed into place only once whole, even without its stats
            assert stats is None or samples == stats.samples_written, name
        for name in finished:  # the `pans_shards` build's flags: the same bytes
            assert (out / "s" / name).read_bytes() == (pans_shards / name).read_bytes(), name
        assert all(n.endswith((".tar", ".stats.json", ".tmp")) for n in built), sorted(built)


def test_full_disk_during_cache_latents_keeps_the_finished_shards(tmp_path, pans_shards):
    recipe = tiny_recipe(tmp_path, pans_shards, "cache")
    whole = tmp_path / "whole"
    args = [
        "-m",
        "dv",
        "cache-latents",
        "--recipe",
        str(recipe),
        "--shards",
        str(pans_shards / "train-*.tar"),
        "--workers",
        "1",
        "--accelerator",
        "cpu",
        "-q",
        "--out",
    ]
    assert run(*args, str(whole), cwd=tmp_path).returncode == 0
    reference = files(whole)
    out = tmp_path / "disk"
    with small_disk(out, used(whole) // 2):
        result = run(*args, str(out / "latents"), cwd=tmp_path)
        assert_one_line(result, "dv: error: ", "No space left on device")
        cached = files(out / "latents")
        assert any(n.endswith(".stats.json") for n in cached), "some shards were finished before the disk filled"
        for name in (n for n in cached if n.endswith(".tar")):  # every file under a final name is whole
            assert cached[name] == reference[name], name
        assert all(n.endswith((".tar", ".stats.json", ".tmp")) for n in cached), sorted(cached)
