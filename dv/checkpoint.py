"""Loading a trained model: from a training checkpoint (.ckpt) or a `dv export` (.safetensors), with its recipe.

The recipe is the file given (`--recipe`), else the one the checkpoint carries: a dv training checkpoint keeps the
recipe it was trained with (`RecipeInCheckpoint`, under RECIPE_KEY), and both checkpoints and exports keep the
model's hyper-parameters, enough to rebuild the model (not the data section, so no video shape).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from safetensors import safe_open

from dv.errors import ConfigError, WeightsError
from dv.models.pretrained import load_dv_weights
from dv.recipe import Recipe, load_checkpoint, restore_trained_weights

RECIPE_KEY = "dv_recipe"
"""The checkpoint key holding the recipe (YAML text) the run was trained with."""
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")
EXPORT_SUFFIX = ".safetensors"


class RecipeInCheckpoint(Callback):
    """Keeps the run's recipe in every checkpoint it writes, so `dv sample --ckpt` needs no `--recipe`."""

    def __init__(self, recipe_text: str) -> None:
        self.recipe_text = recipe_text

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[RECIPE_KEY] = self.recipe_text


def _kind(ckpt: str) -> str:
    """'checkpoint' or 'export', by the file's suffix; anything else is a WeightsError."""
    suffix = Path(ckpt).suffix
    if suffix == EXPORT_SUFFIX:
        return "export"
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    raise WeightsError(f"{ckpt!r} is neither a dv checkpoint (.ckpt) nor a dv export (.safetensors)")


def export_metadata(path: str) -> dict[str, str]:
    """The metadata of a `dv export` (format, parts, module, step, ema, hyper_parameters)."""
    if not Path(path).is_file():
        raise WeightsError(f"export {path!r} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise WeightsError(f"export {path!r} cannot be read as safetensors: {type(e).__name__}") from None


def _recipe_from_hyper_parameters(hparams: dict, where: str) -> Recipe:
    """A model-only recipe from saved hyper-parameters (`_class_path` and the init arguments)."""
    hparams = dict(hparams or {})
    class_path = hparams.get("_class_path")
    if class_path is None:
        raise ConfigError(f"{where!r} does not carry its recipe; give the one it was trained with (--recipe)")
    # LightningCLI's own keys (_class_path, _instantiator) are not init arguments.
    init_args = {k: v for k, v in hparams.items() if not k.startswith("_")}
    return Recipe({"model": {"class_path": class_path, "init_args": init_args}}, where)


def carried_recipe(ckpt: str) -> Recipe:
    """The recipe a checkpoint or an export carries (see the module docstring); ConfigError when it has none."""
    if _kind(ckpt) == "export":
        hparams = json.loads(export_metadata(ckpt).get("hyper_parameters") or "{}")
        return _recipe_from_hyper_parameters(hparams, ckpt)
    checkpoint = load_checkpoint(ckpt, mmap=True)  # only the recipe and hyper-parameters are read here
    if checkpoint.get(RECIPE_KEY):
        return Recipe.from_text(checkpoint[RECIPE_KEY], ckpt)
    return _recipe_from_hyper_parameters(checkpoint.get("hyper_parameters"), ckpt)


def trained_recipe(recipe: str | Recipe | None, ckpt: str) -> Recipe:
    """The recipe to rebuild `ckpt`'s model with: the one given (a path or parsed), else the one it carries."""
    if isinstance(recipe, Recipe):
        return recipe
    return Recipe.load(recipe) if recipe else carried_recipe(ckpt)


def recipe_video_shape(recipe: str | Recipe) -> tuple[int, int]:
    """(frames, size) the recipe trains on: its data section's num_frames and frame_size (ConfigError if unset)."""
    return (recipe if isinstance(recipe, Recipe) else Recipe.load(recipe)).video_shape()


def load_export(module: L.LightningModule, path: str) -> None:
    """Load a `dv export`'s U-Net (and branch) weights into a built module."""
    load_dv_weights(path, module.backbone.unet, part="unet")
    if module.branch is not None:
        load_dv_weights(path, module.branch, part="branch")


def load_trained(recipe: str | Recipe | None, ckpt: str, use_ema: bool = True, device: str | torch.device = "cpu"):
    """The recipe's module with the checkpoint's (or export's) trained weights, in eval mode on `device`.

    `recipe` is a path, a parsed Recipe, or None for the recipe the checkpoint carries.
    """
    kind = _kind(ckpt)
    module = trained_recipe(recipe, ckpt).build_model()
    module.configure_model()
    if kind == "export":
        load_export(module, ckpt)
    else:
        restore_trained_weights(module, ckpt, use_ema=use_ema)
    return module.to(device).eval()
