"""`dv info`: parameter counts of a recipe's model, built on the meta device (no memory, no weights)."""

from __future__ import annotations

import torch

from dv.recipe import build_model

PAPER_TRAINABLE = 680e6
"""Trainable parameters the DreamVideo paper reports (§5.1)."""


def count(params) -> int:
    """Number of elements of the parameters."""
    return sum(p.numel() for p in params)


def parameter_table(module) -> list[tuple[str, int]]:
    """(part, parameters) rows of a built module (T2V, DreamVideo, or one with its own `parameter_rows`)."""
    unet = module.backbone.unet
    trainable = module.trainable_parameters()
    rows = [
        ("U-Net", count(unet.parameters())),
        ("  temporal layers (Temp-Conv, Temp-Attn, transformer_in)", count(p for n, p in unet.named_parameters() if "temp_" in n or "transformer_in" in n)),
        ("autoencoder (frozen)", count(module.backbone.autoencoder.parameters())),
        ("text encoder (frozen)", count(module.backbone.text.parameters())),
    ]
    if hasattr(module, "parameter_rows"):
        rows += module.parameter_rows()
    elif module.branch is not None:
        rows.append(("retention branch", count(module.branch.parameters())))
    rows += [("total", count(module.parameters())), ("trainable", count(p for _, p in trainable))]
    return rows


def run(recipe: str) -> None:
    """Print the parameter table of a recipe's model."""
    module = build_model(recipe)
    with torch.device("meta"):
        module.configure_model()
    print(f"{'part':58s} {'parameters':>16s}")
    for name, n in parameter_table(module):
        print(f"{name:58s} {n:>16,d}  ({n / 1e6:,.1f} M)")
    from dv.lit.dreamvideo import DreamVideoModule

    if isinstance(module, DreamVideoModule):
        print(f"{'paper (DreamVideo §5.1), trainable':58s} {int(PAPER_TRAINABLE):>16,d}  ({PAPER_TRAINABLE / 1e6:,.1f} M)")
