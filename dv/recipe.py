"""Reading recipes (LightningCLI YAML) outside of `dv fit`: one parse through jsonargparse, and dv checkpoints.

`Recipe` parses each section once, through the same jsonargparse signatures LightningCLI uses, so the defaults
of the recipe's classes are filled in: what a recipe leaves out is what training used, not a guess.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import lightning as L
import torch
import yaml
from jsonargparse import ArgumentParser, Namespace

from dv.diffusion.sampling import recipe_sampling
from dv.errors import ConfigError, WeightsError

SECTIONS = ("model", "data", "trainer")
"""The recipe sections dv reads; the rest (seed_everything, ckpt_path, optimizer...) belong to `dv fit` alone."""


def read_recipe_text(text: str, where: str) -> dict[str, Any]:
    """A recipe's YAML text as a dict; malformed YAML or a missing 'model' section is a ConfigError."""
    try:
        recipe = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {where!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(recipe, dict) or "model" not in recipe:
        raise ConfigError(f"recipe {where!r} has no 'model' section")
    return recipe


def load_recipe(path: str) -> dict[str, Any]:
    """The recipe's YAML as a dict; a missing or malformed file is a ConfigError."""
    if not os.path.isfile(path):
        raise ConfigError(f"recipe {path!r} does not exist; recipes live in recipes/ (e.g. recipes/demo.yaml)")
    with open(path, encoding="utf-8") as f:
        return read_recipe_text(f.read(), path)


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


@functools.cache
def _parser(key: str) -> ArgumentParser:
    """The jsonargparse parser of one section, with LightningCLI's signatures (built once per process)."""
    parser = ArgumentParser(exit_on_error=False)
    if key == "trainer":
        parser.add_class_arguments(L.Trainer, key, fail_untyped=False)
    else:
        base = L.LightningModule if key == "model" else L.LightningDataModule
        parser.add_subclass_arguments(base, key, required=True)
    return parser


class Recipe:
    """A recipe parsed once: its model, data and trainer sections, each with its classes' defaults filled in.

    `where` names the recipe in errors (its path, or the checkpoint it came from). The trainer section is parsed
    when first asked for (loading a model for sampling never needs it), then kept.
    """

    def __init__(self, sections: dict[str, Any], where: str) -> None:
        self.where = where
        self.config: dict[str, Namespace] = {}
        self._trainer = sections.get("trainer") or {}
        self._sampling = {"sampling": sections.get("sampling")}
        for key in ("model", "data"):
            if sections.get(key) is not None:
                self.config[key] = self._parse(key, sections[key])

    @classmethod
    def load(cls, path: str) -> Recipe:
        """The recipe file at `path`, parsed."""
        return cls(load_recipe(path), path)

    @classmethod
    def from_text(cls, text: str, where: str) -> Recipe:
        """A recipe kept as YAML text (in a checkpoint), parsed."""
        return cls(read_recipe_text(text, where), where)

    def _parse(self, key: str, section: Any) -> Namespace:
        try:
            return _parser(key).parse_object({key: section})
        except ConfigError:
            raise
        except Exception as e:  # jsonargparse wraps every problem, ours included, in one message
            raise ConfigError(f"the {key} section of {self.where} is invalid: {_reason(str(e))}") from None

    def _build(self, key: str):
        if key not in self.config:
            raise ConfigError(f"recipe {self.where!r} has no '{key}' section")
        try:
            return _parser(key).instantiate(self.config[key])[key]
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"the {key} section of {self.where} is invalid: {_reason(str(e))}") from None

    @property
    def model_class(self) -> str:
        """The model's class path, e.g. 'dv.lit.DreamVideoModule'."""
        return self.config["model"].model.class_path

    def build_model(self) -> L.LightningModule:
        """The recipe's LightningModule, constructed (networks not built yet: call configure_model)."""
        return self._build("model")

    def build_datamodule(self) -> L.LightningDataModule:
        """The recipe's LightningDataModule."""
        return self._build("data")

    def data_args(self) -> Namespace | None:
        """The data module's init arguments, defaults included; None when the recipe has no data section."""
        return self.config["data"].data.init_args if "data" in self.config else None

    def sampling_settings(self) -> dict:
        """The SamplerConfig settings of the recipe's top-level `sampling:` section (e.g. compile), checked."""
        return recipe_sampling(self._sampling)

    def trainer_args(self) -> Namespace:
        """The Trainer's arguments, defaults included (Lightning's own when the recipe has no trainer section)."""
        if "trainer" not in self.config:
            self.config["trainer"] = self._parse("trainer", self._trainer)
        return self.config["trainer"].trainer

    def video_shape(self) -> tuple[int, int]:
        """(frames, size) of the clips the model trains on: the data section's num_frames and frame_size.

        A recipe that does not set them (its data module keeps the shards' own) is a ConfigError: the caller
        names the shape (`--frames`, `--size`) rather than dv guessing one.
        """
        data = self.data_args()
        frames = getattr(data, "num_frames", None) if data is not None else None
        size = getattr(data, "frame_size", None) if data is not None else None
        if frames is None or size is None:
            raise ConfigError(
                f"{self.where!r} does not set data.num_frames and data.frame_size; "
                "give the video shape (--frames and --size) or a recipe that sets it"
            )
        return int(frames), int(size)

    def callback_args(self, name: str) -> Namespace | None:
        """The init arguments (defaults included) of the trainer's first callback whose class is `name`."""
        for callback in self.trainer_args().callbacks or []:
            if isinstance(callback, Namespace) and str(callback.class_path).rsplit(".", 1)[-1] == name:
                return callback.init_args
        return None

    def dump(self) -> str:
        """The parsed sections as YAML (what a checkpoint keeps to rebuild the model without the file)."""
        self.trainer_args()
        out = {}
        for key, config in self.config.items():
            out.update(yaml.safe_load(_parser(key).dump(config)))
        return yaml.safe_dump(out, sort_keys=False)


def build_model(recipe: str | Recipe) -> L.LightningModule:
    """The recipe's LightningModule, constructed (networks not built yet: call configure_model)."""
    return (recipe if isinstance(recipe, Recipe) else Recipe.load(recipe)).build_model()


def build_datamodule(recipe: str | Recipe) -> L.LightningDataModule:
    """The recipe's LightningDataModule."""
    return (recipe if isinstance(recipe, Recipe) else Recipe.load(recipe)).build_datamodule()


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
