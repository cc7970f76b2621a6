"""Export of a training checkpoint's trained weights to one safetensors file (`dv export`)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from dv import __version__
from dv.checkpoint import trained_recipe
from dv.models.pretrained import save_dv_weights
from dv.models.trainable import export_part
from dv.recipe import Recipe, build_model, restore_trained_weights


def plain(value):
    """Dataclasses, tuples and dicts turned into JSON-friendly dicts and lists (weights_only-safe checkpoints)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def export_checkpoint(recipe: str | Recipe, ckpt: str, out: str, use_ema: bool = True) -> str:
    """Write the trained weights of `ckpt` (EMA when kept) as safetensors at `out`; returns `out`."""
    module = build_model(recipe)
    module.configure_model()
    # Raw weights into the parameters; the EMA shadows (restored alongside) are exported when asked for.
    checkpoint = restore_trained_weights(module, ckpt, use_ema=False)
    state = module.trained_state_dict(use_ema=use_ema)
    parts = sorted({export_part(k) for k in state})
    metadata = {
        "format": "dv",
        "dv_version": __version__,
        "parts": ",".join(parts),
        "module": type(module).__name__,
        "step": str(checkpoint.get("global_step", "")),
        "ema": str(bool(use_ema and module.ema is not None)),
        "hyper_parameters": json.dumps(plain(checkpoint.get("hyper_parameters", {}))),
    }
    save_dv_weights(out, state, metadata)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `dv export`."""
    parser.add_argument(
        "--recipe", default=None, help="the recipe it was trained with (default: the one the .ckpt carries)"
    )
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-ema", action="store_true", help="export the raw weights even when an EMA was kept")


def run(args: argparse.Namespace) -> None:
    """`dv export`: the checkpoint's trained weights (EMA when kept) to one safetensors file."""
    recipe = trained_recipe(args.recipe, args.ckpt)  # a checkpoint dv fit wrote carries its recipe
    print(f"wrote {export_checkpoint(recipe, args.ckpt, args.out, use_ema=not args.no_ema)}")
