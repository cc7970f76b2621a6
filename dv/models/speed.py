"""How the networks run in less memory or less time: activation checkpointing per block, and torch.compile
of the whole networks or of each repeated layer (regional compilation).

diffusers' ``UNet3DConditionModel.enable_gradient_checkpointing()`` raises (the class does not
support it), so dv wraps the chosen blocks' ``forward`` in ``torch.utils.checkpoint`` itself
(non-reentrant). The blocks stay where they are: parameter names, state dicts and checkpoints
do not change. Non-reentrant checkpointing restores the RNG state before recomputing, so the
temporal convs' dropout draws the same masks in the recomputation as in the forward pass.

Regional compilation compiles each instance of the four layer classes the U-Net repeats
(REGION_CLASSES) in place. Instances of one class with the same input signature share one compiled
graph, so compiling 112 layers traces a few dozen graphs instead of one huge one. diffusers'
``compile_repeated_blocks`` cannot do this for UNet3DConditionModel: its ``_repeated_blocks`` is empty.
"""

from __future__ import annotations

import contextlib
import fnmatch
import types
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from dv.errors import ConfigError

SHORTHANDS = {"down": "*down_blocks.*", "mid": "*mid_block", "up": "*up_blocks.*"}
"""`backbone.checkpointing` words and the block-name patterns they stand for ('high-res' is resolved per model)."""

CHECKPOINTING_CHOICES = ("none", "high-res", "down", "up", "all")
"""The named `backbone.checkpointing` choices, least recomputation first (`dv bench --what memory` compares them)."""

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
"""`backbone.compile_backend`: inductor generates kernels; aot_eager traces forward and backward and runs them eagerly
(graph breaks and recompiles show without code generation); eager traces the forward only."""

COMPILE_REGIONS = ("model", "layers")
"""`backbone.compile_regions`: compile the whole U-Net and branch, or each repeated layer (REGION_CLASSES)."""

REGION_CLASSES = ("ResnetBlock2D", "TemporalConvLayer", "Transformer2DModel", "TransformerTemporalModel")
"""diffusers layer classes compiled one instance at a time by `compile_regions: layers`."""

RECOMPILE_LIMIT = 64
"""Graphs dynamo may keep per layer class under regional compilation (its default, 8, is below the distinct
signatures one class sees across the U-Net's levels and the branch; past the limit it silently runs eager)."""

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


def high_res_blocks(names: list[str]) -> list[str]:
    """The blocks that run at the latent's full resolution, where activations are largest: the first down
    block of the U-Net and of the branch, and the U-Net's last up block."""
    last_up = max((n for n in names if ".up_blocks." in n), key=lambda n: int(n.rsplit(".", 1)[1]), default=None)
    return [n for n in names if n.endswith(".down_blocks.0") or n == last_up]


def select_blocks(selection: str | list[str] | None, names: list[str]) -> list[str]:
    """The block names a `backbone.checkpointing` value picks: 'none', 'all', 'high-res', or words/patterns
    (see SHORTHANDS)."""
    if selection is None or selection == "none" or (isinstance(selection, (list, tuple)) and not selection):
        return []
    if selection == "all":
        return list(names)
    patterns = [selection] if isinstance(selection, str) else list(selection)
    chosen: list[str] = []
    for pattern in patterns:
        if pattern == "high-res":
            hits = high_res_blocks(names)
        else:
            hits = fnmatch.filter(names, SHORTHANDS.get(pattern, "*" if pattern == "all" else pattern))
        if not hits:
            raise ConfigError(
                f"backbone.checkpointing entry {pattern!r} matches no block; use none, all, high-res, down, mid, up "
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


def remove_checkpointing(unet: nn.Module, branch: nn.Module | None) -> None:
    """Undo apply_checkpointing: every block runs its own forward again."""
    for block in checkpointable_blocks(unet, branch).values():
        if is_checkpointed(block):
            del block.forward


def is_checkpointed(block: nn.Module) -> bool:
    """True when apply_checkpointing wrapped this block."""
    forward = block.__dict__.get("forward")
    return isinstance(forward, types.MethodType) and forward.__func__ is _checkpointed_forward


def compile_regions(net: nn.Module) -> list[nn.Module]:
    """The layers regional compilation compiles: every REGION_CLASSES instance, outermost first (a layer
    inside another compiled one is left to it)."""
    regions: list[nn.Module] = []
    inside: set[int] = set()
    for module in net.modules():
        if id(module) in inside:
            continue
        if type(module).__name__ in REGION_CLASSES:
            regions.append(module)
            inside.update(id(m) for m in module.modules())
    return regions


def apply_compile(
    unet: nn.Module,
    branch: nn.Module | None,
    mode: str | None = None,
    regions: str = "model",
    backend: str = "inductor",
) -> int:
    """torch.compile the U-Net and the branch in place (``Module.compile``: names and state dicts unchanged),
    whole or per repeated layer; returns the number of compiled modules."""
    if mode not in COMPILE_MODES:
        raise ConfigError(
            f"backbone.compile_mode must be one of {', '.join(str(m) for m in COMPILE_MODES)}, not {mode!r}"
        )
    if regions not in COMPILE_REGIONS:
        raise ConfigError(f"backbone.compile_regions must be one of {', '.join(COMPILE_REGIONS)}, not {regions!r}")
    if backend not in COMPILE_BACKENDS:
        raise ConfigError(f"backbone.compile_backend must be one of {', '.join(COMPILE_BACKENDS)}, not {backend!r}")
    mode = None if mode == "default" else mode
    if backend != "inductor" and mode is not None:
        raise ConfigError(f"backbone.compile_mode {mode!r} is inductor's; compile_backend {backend!r} takes none")
    nets = [net for net in (unet, branch) if net is not None]
    if regions == "model":
        for net in nets:
            net.compile(mode=mode, backend=backend)
        return len(nets)
    # One graph per layer class and input signature; the limit counts them per code object (the class's forward).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    layers = [layer for net in nets for layer in compile_regions(net)]
    for layer in layers:
        layer.compile(mode=mode, backend=backend)
    return len(layers)
