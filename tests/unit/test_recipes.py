"""Every recipe parses: its model, data and callbacks sections build (no networks, no data, no GPU)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from dv.callbacks import ModelCheckpoint as FinalStepCheckpoint
from dv.recipe import build_datamodule, build_model, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.stem for p in RECIPES}
    assert {"dreamvideo", "t2v", "demo", "demo-t2v", "eval_ucf101", "eval_msrvtt"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_builds(path):
    recipe = load_recipe(str(path))
    assert isinstance(build_model(str(path)), L.LightningModule)
    assert isinstance(build_datamodule(str(path)), L.LightningDataModule)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--callbacks", type=list[Callback])
    callbacks = parser.instantiate(parser.parse_object({"callbacks": recipe["trainer"].get("callbacks", [])})).callbacks
    assert all(isinstance(c, Callback) for c in callbacks)
    checkpoints = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    assert all(isinstance(c, FinalStepCheckpoint) for c in checkpoints), "last.ckpt must hold the final step"
