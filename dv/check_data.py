"""`dv check-data --shards PATTERN`: stream one training batch of shards through VideoDataModule and print it."""

from __future__ import annotations

import argparse
import logging

from dv.data.datamodule import VideoDataModule


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `dv check-data`."""
    parser.add_argument(
        "--shards", required=True, help="shard pattern: DIR/train-*.tar or DIR/train-{000000..000003}.tar"
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--num-frames", type=int, default=None)
    parser.add_argument("--frame-size", type=int, default=None)


def run(args: argparse.Namespace) -> None:
    """Stream one batch and print its shape, value range, and each clip's key, caption and frames."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    dm = VideoDataModule(
        train_shards=args.shards,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        samples_per_epoch=args.batch_size * max(args.num_workers, 1),
        num_frames=args.num_frames,
        frame_size=args.frame_size,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    video = batch["video"]
    print(f"video: {tuple(video.shape)} {video.dtype} (B, T, H, W, C), values {int(video.min())}..{int(video.max())}")
    for caption, meta in zip(batch["caption"], batch["meta"]):
        print(f"  {meta.get('key')}: {caption!r} (source {meta.get('source_id')}, frames {meta.get('frame_indices')})")
