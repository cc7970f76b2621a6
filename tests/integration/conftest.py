"""Shards shared by the end-to-end tests: camera-pans at 32×32, built once per session."""

from __future__ import annotations

import subprocess
import sys

import pytest

PANS_BUILD = tuple("-m data_prep build --source camera-pans --size 32 --clips-per-video 1 --workers 2 -q".split())
"""The `python` arguments of the `pans_shards` build, less `--out` (a test that builds it again gets the same bytes)."""


@pytest.fixture(scope="session")
def pans_shards(tmp_path_factory):
    """A small camera-pans build (train and val) made by the real shard builder."""
    out = tmp_path_factory.mktemp("shards") / "camera-pans"
    subprocess.run([sys.executable, *PANS_BUILD, "--out", str(out)], check=True)
    return out
