"""`dv info`: parameter counts of a recipe's model, built on the meta device (no memory, no weights)."""

from __future__ import annotations

import argparse

import torch

from dv.models.denoiser import count
from dv.recipe import build_model


def parameter_table(module) -> list[tuple[str, int]]:
    """(part, parameters) rows of a built module: the backbone's, then its branch's own rows (parameter_rows)."""
    unet = module.backbone.unet
    trainable = module.trainable_parameters()
    rows = [
        ("U-Net", count(unet.parameters())),
        (
            "  temporal layers (Temp-Conv, Temp-Attn, transformer_in)",
            count(p for n, p in unet.named_parameters() if "temp_" in n or "transformer_in" in n),
        ),
        ("autoencoder (frozen)", count(module.backbone.autoencoder.parameters())),
        ("text encoder (frozen)", count(module.backbone.text.parameters())),
    ]
    if module.branch is not None:
        rows += module.branch.parameter_rows(unet)
    rows += [("total", count(module.parameters())), ("trainable", count(p for _, p in trainable))]
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `dv info`."""
    parser.add_argument("--recipe", required=True)


def run(args: argparse.Namespace) -> None:
    """Print the parameter table of a recipe's model, and the trainable count its paper reports, if any."""
    module = build_model(args.recipe)
    with torch.device("meta"):
        module.configure_model()
    print(f"{'part':58s} {'parameters':>16s}")
    for name, n in parameter_table(module):
        print(f"{name:58s} {n:>16,d}  ({n / 1e6:,.1f} M)")
    paper = module.branch.paper_trainable if module.branch is not None else None
    if paper is not None:
        source, n = paper
        print(f"{'paper (' + source + '), trainable':58s} {int(n):>16,d}  ({n / 1e6:,.1f} M)")
