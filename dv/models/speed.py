"""How the networks run in less memory or less time: activation checkpointing per block, and torch.compile.

diffusers' ``UNet3DConditionModel.enable_gradient_checkpointing()`` raises (the class does not
support it), so dv wraps the chosen blocks' ``forward`` in ``torch.utils.checkpoint`` itself
(non-reentrant). The blocks stay where they are: parameter names, state dicts and checkpoints
do not change. Non-reentrant checkpointing restores the RNG state before recomputing, so the
temporal convs' dropout draws the same masks in the recomputation as in the forward pass.
"""

from __future__ import annotations

import contextlib
import fnmatch
import types
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from dv.errors import ConfigError

SHORTHANDS = {"down": "*down_blocks.*", "mid": "*mid_block", "up": "*up_blocks.*"}
"""`backbone.checkpointing` words and the block-name patterns they stand for."""

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

_recompute = True  # switched off by no_recompute(): model FLOPs are counted without the recomputation


@contextlib.contextmanager
def no_recompute() -> Iterator[None]:
    """Run checkpointed blocks as plain ones inside the block (e.g. to count model FLOPs without recomputation)."""
    global _recompute
    before, _recompute = _recompute, False
    try:
        yield
    finally:
        _recompute = before


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    """The block's own forward under torch.utils.checkpoint while gradients are recorded."""
    forward = type(self).forward.__get__(self)
    if _recompute and torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def checkpointable_blocks(unet: nn.Module, branch: nn.Module | None = None) -> dict[str, nn.Module]:
    """The blocks checkpointing can wrap, by name: unet.down_blocks.i, unet.mid_block, unet.up_blocks.i, branch.*."""
    blocks: dict[str, nn.Module] = {}
    for prefix, net in (("unet", unet), ("branch", branch)):
        if net is None:
            continue
        for i, block in enumerate(getattr(net, "down_blocks", ())):
            blocks[f"{prefix}.down_blocks.{i}"] = block
        if getattr(net, "mid_block", None) is not None:
            blocks[f"{prefix}.mid_block"] = net.mid_block
        for i, block in enumerate(getattr(net, "up_blocks", ())):
            blocks[f"{prefix}.up_blocks.{i}"] = block
    return blocks


def select_blocks(selection: str | list[str] | None, names: list[str]) -> list[str]:
    """The block names a `backbone.checkpointing` value picks: 'none', 'all', or words/patterns (see SHORTHANDS)."""
    if selection is None or selection == "none" or (isinstance(selection, (list, tuple)) and not selection):
        return []
    if selection == "all":
        return list(names)
    patterns = [selection] if isinstance(selection, str) else list(selection)
    chosen: list[str] = []
    for pattern in patterns:
        hits = fnmatch.filter(names, SHORTHANDS.get(pattern, "*" if pattern == "all" else pattern))
        if not hits:
            raise ConfigError(
                f"backbone.checkpointing entry {pattern!r} matches no block; use none, all, down, mid, up "
                f"or a pattern over {', '.join(names)}"
            )
        chosen += [n for n in hits if n not in chosen]
    return [n for n in names if n in chosen]


def apply_checkpointing(unet: nn.Module, branch: nn.Module | None, selection: str | list[str] | None) -> list[str]:
    """Wrap the selected blocks' forward in non-reentrant activation checkpointing; returns their names."""
    blocks = checkpointable_blocks(unet, branch)
    names = select_blocks(selection, list(blocks))
    for name in names:
        block = blocks[name]
        # An instance attribute, not a wrapper module: the block's parameter names stay as they are.
        block.forward = types.MethodType(_checkpointed_forward, block)
    return names


def is_checkpointed(block: nn.Module) -> bool:
    """True when apply_checkpointing wrapped this block."""
    forward = block.__dict__.get("forward")
    return isinstance(forward, types.MethodType) and forward.__func__ is _checkpointed_forward


def apply_compile(unet: nn.Module, branch: nn.Module | None, mode: str | None = None) -> None:
    """torch.compile the U-Net and the branch in place (``Module.compile``: names and state dicts unchanged)."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"backbone.compile_mode must be one of {', '.join(str(m) for m in COMPILE_MODES)}, not {mode!r}")
    for net in (unet, branch):
        if net is not None:
            net.compile(mode=None if mode == "default" else mode)
