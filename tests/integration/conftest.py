"""Shards shared by the end-to-end tests: camera-pans at 32×32, built once per session."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def pans_shards(tmp_path_factory):
    """A small camera-pans build (train and val) made by the real shard builder."""
    out = tmp_path_factory.mktemp("shards") / "camera-pans"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep",
            "build",
            "--source",
            "camera-pans",
            "--out",
            str(out),
            "--size",
            "32",
            "--clips-per-video",
            "1",
            "--workers",
            "2",
            "-q",
        ],
        check=True,
    )
    return out
