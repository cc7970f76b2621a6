"""`dv cache-latents`: encode video shards once with a recipe's frozen VAE (and text encoder) into latent shards."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

import torch
from lightning.fabric import Fabric

from dv.data.filters import ClipFilter
from dv.data.latent_cache import CacheConfig, CacheSummary, Encoders, build_cache
from dv.data.shards import expand_shards
from dv.errors import ConfigError, DataError
from dv.models.backbone import Backbone
from dv.models.conditions import video_to_model
from dv.models.identity import text_encoder_identity
from dv.recipe import Recipe


def _cpus() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `dv cache-latents`."""
    parser.add_argument(
        "--recipe", required=True, help="the recipe whose autoencoder (and text encoder) encode the clips"
    )
    parser.add_argument(
        "--shards", required=True, nargs="+", help="video shards: 'DIR/train-*.tar' or 'DIR/train-{000000..000009}.tar'"
    )
    parser.add_argument("--out", required=True, help="folder for the latent shards (named like the video shards)")
    parser.add_argument("--text", action="store_true", help="also cache the captions' text embeddings")
    parser.add_argument(
        "--num-frames", type=int, default=None, help="frames per clip (default: the recipe's data.num_frames)"
    )
    parser.add_argument(
        "--frame-size", type=int, default=None, help="frame size (default: the recipe's data.frame_size)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="clips per encoder call (default: 8)")
    parser.add_argument("--workers", type=int, default=min(4, _cpus()), help="processes decoding video shards")
    parser.add_argument("--accelerator", default="auto", help="where the encoders run: auto, cuda, cpu (default: auto)")
    parser.add_argument(
        "--precision", default=None, help="Lightning precision (default: the recipe's trainer.precision)"
    )
    parser.add_argument("--num-nodes", type=int, default=1, help="machines (or processes) sharing the work")
    parser.add_argument("--node-rank", type=int, default=0, help="this one's rank: caches shards i with i %% N == R")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def recipe_encoders(recipe: Recipe, text: bool, accelerator: str = "auto", precision: str | None = None) -> Encoders:
    """The recipe's frozen VAE (and text encoder) as training builds them, wired as the cache's encoder callables.

    They run on the accelerator under the recipe's precision (autocast for the mixed ones), as they
    would inside a training step, so the cache holds what encoding on the fly computes.
    """
    config = getattr(recipe.build_model(), "backbone_config", None)
    if config is None:
        raise ConfigError(f"the model of {recipe.where} has no backbone (autoencoder) to encode with")
    # Built whole, as training builds it (random initialisations draw in the same order), with no
    # U-Net weights loaded (the cache does not use the U-Net) and no text weights unless asked for.
    config = replace(config, unet_weights=[], text=config.text if text else replace(config.text, checkpoint=None))
    backbone = Backbone(config)
    ae, vae = backbone.autoencoder, backbone.autoencoder.identity()
    fabric = Fabric(accelerator=accelerator, devices=1, precision=precision or recipe.trainer_args().precision)
    ae.to(fabric.device)

    def posterior(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 clips (B, T, H, W, C) -> posterior mean and log-variance (B, c, T, h, w)."""
        with torch.inference_mode(), fabric.autocast():
            return ae.posterior(video_to_model(video.to(fabric.device)))

    if not text:
        return Encoders(posterior=posterior, vae=vae)
    text_id = text_encoder_identity(backbone.text)
    backbone.text.to(fabric.device)

    def embed(captions: list[str]) -> torch.Tensor:
        """Captions -> text embeddings (B, L, D), as training computes them."""
        with torch.inference_mode(), fabric.autocast():
            return backbone.encode_text(captions)

    return Encoders(posterior=posterior, vae=vae, text=embed, text_encoder=text_id)


def run(args: argparse.Namespace) -> CacheSummary:
    """Cache the shards named by parsed `dv cache-latents` arguments; DataError when a shard failed."""
    for flag in ("num_frames", "frame_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
    recipe = Recipe.load(args.recipe)  # parsed once: the clip shape, the filters and the encoders come from it
    data = recipe.data_args()
    if data is None:
        raise ConfigError(f"recipe {args.recipe!r} has no 'data' section (the clip shape and filters to cache with)")
    cfg = CacheConfig(
        out_dir=args.out,
        num_frames=args.num_frames or data.num_frames,
        frame_size=args.frame_size or data.frame_size,
        batch_size=args.batch_size,
        workers=args.workers,
        num_nodes=args.num_nodes,
        node_rank=args.node_rank,
        filters=ClipFilter.from_config(data.filters),
    )
    shards = expand_shards(args.shards)
    cfg.validate(shards)  # before the encoders are built, which takes a while at full size
    encoders = recipe_encoders(recipe, args.text, args.accelerator, args.precision)
    summary = build_cache(shards, encoders, cfg, quiet=args.quiet)
    print(summary.report(), file=sys.stderr)
    if summary.shards_failed:
        raise DataError(
            f"{len(summary.shards_failed)} shards failed (listed above); rerun the same command to redo them"
        )
    print(f"latent shards in {args.out}: point the recipe's data.train_shards at them, e.g. {args.out}/train-*.tar")
    return summary
