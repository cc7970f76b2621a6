"""Fixtures shared by the unit tests of dv bench."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

DEMO = Path(__file__).parents[2] / "recipes" / "demo.yaml"


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory) -> str:
    """recipes/demo.yaml's model (its weights file need not exist: dv bench uses random weights) on 4×16×16 clips,
    batch 2."""
    recipe = yaml.safe_load(DEMO.read_text())
    recipe["data"]["init_args"].update(num_frames=4, frame_size=16, batch_size=2)
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)
