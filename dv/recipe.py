"""Reading recipes (LightningCLI YAML) outside of `dv fit`: the model and data sections, and dv checkpoints."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
import yaml
from jsonargparse import ArgumentParser

from dv.errors import ConfigError, WeightsError


def load_recipe(path: str) -> dict[str, Any]:
    """The recipe's YAML as a dict; a missing or malformed file is a ConfigError."""
    if not os.path.isfile(path):
        raise ConfigError(f"recipe {path!r} does not exist; recipes live in recipes/ (e.g. recipes/demo.yaml)")
    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(recipe, dict) or "model" not in recipe:
        raise ConfigError(f"recipe {path!r} has no 'model' section")
    return recipe


def _reason(message: str) -> str:
    """The useful line of a jsonargparse error: the first listed error that is not about NoneType."""
    lines = [line.strip() for line in message.splitlines()]
    for i, line in enumerate(lines):
        if line.startswith("- ") and "NoneType" not in line:
            detail = line[2:]
            if detail.endswith(":") and i + 1 < len(lines):
                detail += " " + lines[i + 1]
            return detail
    return lines[0] if lines else message


def _instantiate(section: dict, base: type, key: str, where: str):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(base, key, required=True)
    try:
        cfg = parser.parse_object({key: section})
        return parser.instantiate(cfg)[key]
    except ConfigError:
        raise
    except Exception as e:  # jsonargparse wraps every problem, ours included, in one message
        raise ConfigError(f"the {key} section of {where} is invalid: {_reason(str(e))}") from None


def build_model(recipe_path: str) -> L.LightningModule:
    """The recipe's LightningModule, constructed (networks not built yet: call configure_model)."""
    return _instantiate(load_recipe(recipe_path)["model"], L.LightningModule, "model", recipe_path)


def build_datamodule(recipe_path: str) -> L.LightningDataModule:
    """The recipe's LightningDataModule."""
    recipe = load_recipe(recipe_path)
    if "data" not in recipe:
        raise ConfigError(f"recipe {recipe_path!r} has no 'data' section")
    return _instantiate(recipe["data"], L.LightningDataModule, "data", recipe_path)


def load_checkpoint(path: str, mmap: bool = False) -> dict:
    """A dv training checkpoint (Lightning .ckpt), read with weights_only=True (memory-mapped: tensors read lazily)."""
    if not os.path.isfile(path):
        raise WeightsError(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        # torch's own messages run to several sentences of advice about weights_only; the first says what failed.
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:160]
        raise WeightsError(
            f"checkpoint {path!r} cannot be read (empty, truncated, or not a weights-only torch checkpoint): "
            f"{type(e).__name__}{': ' + first if first else ''}"
        ) from None


def restore_trained_weights(module: L.LightningModule, ckpt_path: str, use_ema: bool = True) -> dict:
    """Load a checkpoint's trained weights (EMA ones when present and asked for) into a built module.

    The module's EMA state is restored too (on_load_checkpoint); returns the checkpoint read.
    """
    checkpoint = load_checkpoint(ckpt_path)
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    if use_ema and getattr(module, "ema", None) is not None and "ema" in checkpoint:
        with torch.no_grad():
            for p, s in zip(module.ema.params, module.ema.shadow):
                p.copy_(s)
    return checkpoint
