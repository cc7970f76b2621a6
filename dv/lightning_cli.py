"""DVLightningCLI: LightningCLI that runs the recipe given on the command line, and checks checkpoints and run folders first.

What it changes in LightningCLI:
- `--ckpt_path FILE` never applies the hyper-parameters saved in the checkpoint (LightningCLI's `_parse_ckpt_path`
  does): the recipe and the command-line overrides run. A file that is missing, unreadable or written for another
  model class is a one-line error before anything is built; a different trainable-weight set is refused when the
  checkpoint loads (T2VModule.on_load_checkpoint).
- `dv fit` refuses a run folder that already holds a run (checkpoints or TensorBoard events) unless resuming.
- `--ckpt_path last` with nothing to resume is an error; `--resume-if-exists` resumes the run folder's last
  checkpoint when there is one and trains from scratch when there is none.
- Every checkpoint `dv fit` writes keeps the recipe it ran (dv.checkpoint.RecipeInCheckpoint), so loading it
  for sampling needs no `--recipe`.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from dv.checkpoint import RecipeInCheckpoint
from dv.errors import ConfigError, WeightsError
from dv.recipe import load_checkpoint


class DVLightningCLI(LightningCLI):
    """LightningCLI with dv's checkpoint and run-folder rules (see the module docstring)."""

    def __init__(self, *args: Any, resume_if_exists: bool = False, **kwargs: Any) -> None:
        self.resume_if_exists = resume_if_exists
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        """A recipe's top-level `sampling:` section (dv.diffusion.sampling.recipe_sampling) is for the sampler, not fit."""
        parser.add_argument("--sampling", type=dict, default={}, help="sampler settings (compile, compile_mode)")

    def _parse_ckpt_path(self) -> None:
        """Check the checkpoint named on the command line; never merge its saved hyper-parameters into the config."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if self.resume_if_exists and ckpt_path not in (None, "last"):
            raise ConfigError("--resume-if-exists resumes the run folder's last checkpoint; drop --ckpt_path with it")
        if ckpt_path and ckpt_path not in ("last", "best", "hpc") and not ckpt_path.startswith("registry"):
            model = config.get("model")
            check_checkpoint(ckpt_path, getattr(model, "class_path", None) if model is not None else None)

    def instantiate_trainer(self, **kwargs: Any):
        """LightningCLI's, with the Trainer's own refusals of a setting (a ValueError or MisconfigurationException
        from its constructor, e.g. an unknown strategy name) turned into one-line ConfigErrors."""
        try:
            return super().instantiate_trainer(**kwargs)
        except (ValueError, MisconfigurationException) as e:
            raise ConfigError(f"trainer: {first_line(str(e))}") from e

    def before_fit(self) -> None:
        """Resolve `last`, refuse to mix two runs in one folder, and keep the recipe in the checkpoints."""
        recipe = self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False)
        self.trainer.callbacks.append(RecipeInCheckpoint(recipe))
        kwargs = self.config_init["fit"]
        ckpt_path = kwargs.get("ckpt_path")
        if ckpt_path == "last" or self.resume_if_exists:
            kwargs["ckpt_path"] = self._last_checkpoint(required=not self.resume_if_exists)
        elif ckpt_path is None:
            self._refuse_used_run_folder()

    def before_validate(self) -> None:
        """`last` must name a checkpoint in validate/test/predict too (Lightning would run the untrained recipe)."""
        kwargs = self.config_init[self.subcommand]
        if kwargs.get("ckpt_path") == "last":
            kwargs["ckpt_path"] = self._last_checkpoint(required=True)

    before_test = before_predict = before_validate

    def _checkpoint_folder(self) -> str | None:
        """Where the recipe's ModelCheckpoint writes (its dirpath, or the logger's run folder / checkpoints)."""
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                return str(callback._ModelCheckpoint__resolve_ckpt_dir(self.trainer))
        return None

    def _last_checkpoint(self, required: bool) -> str | None:
        """The newest `last*.ckpt` of the run folder; None (train from scratch) or a ConfigError when there is none."""
        found: set[str] = set()
        for callback in self.trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                found |= callback._find_last_checkpoints(self.trainer)
        found = found or self._last_checkpoints_of_earlier_versions()
        if found:
            return max(found, key=os.path.getmtime)
        if required:
            raise ConfigError(
                f"--ckpt_path last: no last checkpoint in {self._checkpoint_folder()!r}; check the run name and "
                "save_dir, or pass --resume-if-exists to train from scratch when there is nothing to resume"
            )
        return None

    def _last_checkpoints_of_earlier_versions(self) -> set[str]:
        """`last*.ckpt` of the logger's other `version_N` folders, when this run's folder is a new one.

        A recipe with `version: null` (recipes/dreamvideo.yaml) gets a new version_N folder on every run, so
        `--ckpt_path last` looked only in the empty new one: the documented resume line failed. The run resumes
        from the newest of them and logs into its new folder.
        """
        run_dir, folder = self.trainer.log_dir, self._checkpoint_folder()
        if not run_dir or not folder or os.path.exists(run_dir):
            return set()
        if not re.fullmatch(r"version_\d+", os.path.basename(run_dir)):
            return set()
        inside = os.path.relpath(folder, run_dir)
        if inside.startswith(".."):
            return set()
        return set(glob.glob(os.path.join(os.path.dirname(run_dir), "version_*", inside, "last*.ckpt")))

    def _refuse_used_run_folder(self) -> None:
        """A fresh `dv fit` into a run folder that holds checkpoints or TensorBoard events is refused."""
        run_dir = self.trainer.log_dir
        folder = self._checkpoint_folder()
        used = bool(run_dir and glob.glob(os.path.join(run_dir, "events.out.tfevents.*")))
        used = used or bool(folder and os.path.isdir(folder) and os.listdir(folder))
        if used:
            raise ConfigError(
                f"run folder {run_dir!r} already holds a run; resume it with --ckpt_path last, or start a new one "
                "under another --trainer.logger.init_args.name (or version)"
            )


def check_checkpoint(path: str, model_class: str | None) -> None:
    """A `--ckpt_path` must be a readable dv checkpoint of the recipe's model class (one-line WeightsError if not)."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "meta.pt")):
            raise WeightsError(f"checkpoint {path!r} is a folder without meta.pt, not a sharded checkpoint")
        return  # a DVFSDPStrategy shard folder: the strategy checks its weights when it loads

    # Memory-mapped: only the metadata is read here; Lightning loads the tensors once, later.
    checkpoint = load_checkpoint(path, mmap=True)  # missing, empty, truncated or foreign files: WeightsError
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise WeightsError(f"checkpoint {path!r} is not a Lightning checkpoint (it has no state_dict)")
    saved = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if model_class and saved and saved != model_class:
        raise WeightsError(
            f"checkpoint {path!r} was written by {saved}, but this recipe's model is {model_class}; "
            "was it written by a different recipe?"
        )


def first_line(message: str) -> str:
    """The first non-empty line of a message."""
    return next((line.strip() for line in message.splitlines() if line.strip()), message)


def argument_error_line(message: str) -> str:
    """One line out of a jsonargparse error: the full key and the innermost cause, without its dump of the section.

    'Parser key "model": ... Problem with given class_path 'dv.lit.T2VModule': Parser key "p_drop_text": Expected
    a <class 'float'>. Got value: abc' becomes "model.init_args.p_drop_text (dv.lit.T2VModule): Expected ...".
    """
    keys: list[str] = []
    owner, detail = None, None
    for line in (raw.strip() for raw in message.splitlines()):
        if (
            not line
            or "NoneType" in line
            or line.startswith(("Does not validate", "Subtypes:", "Errors:", "Given value"))
        ):
            continue
        line = line.removeprefix("- ")
        key = re.match(r'Parser key "([^"]+)":\s*(.*)', line)
        if key:
            keys.append(key.group(1) if not keys or owner is None else "init_args." + key.group(1))
            if key.group(2):
                detail = key.group(2)
                break
            continue
        cls = re.match(r"Problem with given class_path '([^']+)':\s*(.*)", line)
        if cls:
            owner = cls.group(1)
            if cls.group(2):
                detail = cls.group(2)
                break
            continue
        detail = line
        break
    where = ".".join(keys)
    if owner:
        where = f"{where} ({owner})" if where else owner
    return f"{where}: {detail}" if where and detail else (detail or first_line(message))
