"""benchmarks/gpu.sh runs end to end without a GPU (--dry-run: tiny recipes, one step, compile off) and prints
one table with a figure for every run; so the script a lent GPU runs unmodified has no broken plumbing."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNS = ["dv-b8", "loader-beside", "dv-b8-cl", "sample", "t2v-b8-compile"]
"""A run of each kind (a DreamVideo step with the loader beside it, a layout option, the sampler, a T2V step with the
compile switch): the others differ from these only in their flags, and all ten take most of an hour on 2 cores."""


@pytest.mark.slow  # four dv bench runs of the tiny recipes: minutes on a 2-core machine
def test_gpu_script_dry_run_gives_one_full_table(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--dry-run", "tests", "dv-b8", "dv-b8-cl", "sample", "t2v-b8-compile"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    table = (out / "table.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert list(rows) == RUNS, table
    for name, line in rows.items():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert float(cells[3]) > 0, f"{name} has no dv time: {line}"
        assert float(cells[6]) > 0, f"{name} has no clips/s: {line}"
    for name in ("dv-b8", "dv-b8-cl", "sample", "t2v-b8-compile"):
        assert rows[name].split("|")[5].strip() != "—", f"{name}: dv against the plain loop in the same process"
    assert "latent batches" in rows["dv-b8"] and "channels-last" in rows["dv-b8-cl"]
    assert "compile on" in rows["t2v-b8-compile"]
    assert "beside `dv-b8`" in rows["loader-beside"]
    assert table in (out / "gpu.log").read_text(), "the table is printed"
    with tarfile.open(out / "runs.tar.gz") as tar:
        logs = {Path(n).name for n in tar.getnames()}
    assert {"tests.log", "device.txt", "dv-b8.log", "dv-b8.json", "loader-beside.json"} <= logs
    assert sorted(p.name for p in out.iterdir()) == ["gpu.log", "runs.tar.gz", "table.md"], (
        "few files: the device tool brings back 8"
    )
