"""The trained-weights contract of dv's checkpoints and exports, in one place.

- A checkpoint's `state_dict` holds the trainable weights only, by their plain names (`backbone.unet.*`, `branch.*`),
  whatever wrappers (FSDP units, activation checkpointing, torch.compile) nest the modules; the frozen rest comes back
  from the recipe's files.
- Its `ema` entry is `{"decay", "updates", "shadow": {plain name: tensor}}`, over the same names.
- A checkpoint that lacks one of the recipe's trainable weights is refused (a WeightsError), as is, when loaded whole,
  one that holds weights the recipe does not train.
- An export names the same weights without the `backbone.` prefix (`unet.*`, `branch.*`).

The LightningModules' checkpoint hooks, `DVFSDPStrategy` and `dv export` all go through these functions.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from dv.errors import WeightsError

WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
"""What FSDP units, activation-checkpoint wrappers and torch.compile insert into parameter names."""

EMA_KEY = "ema"
"""The checkpoint entry of the EMA: {"decay", "updates", "shadow": {name: tensor}}."""


def unwrapped_name(name: str) -> str:
    """A parameter's name as the unwrapped module (and every state dict) calls it."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def named_trainable(prefix: str, named: Iterable[tuple[str, torch.nn.Parameter]], keep=lambda name: True):
    """(plain name, parameter) of `named` (a module's named_parameters) whose plain name `keep` accepts, under `prefix`."""
    return [(f"{prefix}{unwrapped_name(n)}", p) for n, p in named if keep(unwrapped_name(n))]


def saved_weights(state_dict: dict[str, torch.Tensor], names: Iterable[str]) -> dict[str, torch.Tensor]:
    """The entries of a module's state dict that a checkpoint keeps: the trainable weights."""
    keep = set(names)
    return {k: v for k, v in state_dict.items() if k in keep}


def ema_entry(decay: float, updates: int, names: list[str], shadows: list[torch.Tensor]) -> dict:
    """The checkpoint's EMA entry."""
    return {"decay": decay, "updates": updates, "shadow": dict(zip(names, shadows))}


def check_saved(
    expected: set[str], saved: set[str], source: str, whole: bool = True, writer: str | None = None
) -> None:
    """WeightsError unless a checkpoint's weights `saved` cover the recipe's trainable `expected` (and, when the
    checkpoint is loaded `whole`, hold nothing else)."""
    missing = sorted(expected - saved)
    extra = sorted(saved - expected) if whole else []
    if not (missing or extra):
        return
    if whole:
        raise WeightsError(
            f"the checkpoint's trainable weights ({len(saved)}, written by {writer or 'another recipe'}) differ from "
            f"this recipe's {source} ({len(expected)}): {len(missing)} missing (e.g. {missing[:2]}), {len(extra)} not "
            f"trained here (e.g. {extra[:2]}); was it written by a different recipe?"
        )
    raise WeightsError(
        f"checkpoint {source!r} lacks {len(missing)} trainable weights of this recipe (e.g. {missing[:3]}); "
        "was it written by a different recipe?"
    )


def export_name(name: str) -> str:
    """A trainable weight's name in an export (`unet.*`, `branch.*`)."""
    return name.removeprefix("backbone.")


def export_part(name: str) -> str:
    """The part ('unet', 'branch') an export's weight belongs to."""
    return name.split(".", 1)[0]
