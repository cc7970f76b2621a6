"""Latent shards of random content in a recipe's shapes: what `dv cache-latents --text` writes, without video.

The GPU script's loader measurement reads them (`dv bench --what loader` on a recipe pointed at them), so the
latent loader can be timed beside a training step on a machine with no dataset. The posterior, the reference
frame and the text embedding have the sizes the recipe's autoencoder and text encoder give (built with random
weights, on the meta device where possible); their values are noise.

    python benchmarks/latent_shards.py --recipe recipes/dreamvideo.yaml --out runs/latents --clips 256
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dv.bench.workload import video_shape
from dv.data.shards import (
    LATENT_KIND,
    SampleTarWriter,
    ShardStats,
    encode_latent_sample,
    shard_name,
    stats_name,
    write_stats,
)
from dv.models.autoencoder import AutoencoderConfig, FrameAutoencoder
from dv.models.text import TextEncoder, TextEncoderConfig
from dv.recipe import load_recipe


def latent_shapes(recipe: dict) -> tuple[tuple[int, ...], tuple[int, int]]:
    """((c, T, h, w) of a clip's posterior, (L, D) of its text embedding) for the recipe's model."""
    frames, size, _ = video_shape(recipe)
    backbone = recipe["model"]["init_args"].get("backbone") or {}
    ae_cfg = AutoencoderConfig(**{**(backbone.get("autoencoder") or {}), "weights": None})
    text_cfg = TextEncoderConfig(**{**(backbone.get("text") or {}), "checkpoint": None})
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        ae = FrameAutoencoder(ae_cfg)
        text = TextEncoder(text_cfg)
    d = ae.downscale
    return (ae.latent_channels, frames, size // d, size // d), (text.context_length, text.width)


def write_shards(recipe_path: str, out: str, clips: int, shards: int, seed: int = 0) -> list[str]:
    """`shards` train shards of `clips` clips in all under `out` (train-000000.tar ...); returns their paths."""
    recipe = load_recipe(recipe_path)
    latent, text = latent_shapes(recipe)
    _, size, _ = video_shape(recipe)
    g = torch.Generator().manual_seed(seed)
    Path(out).mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(shards):
        start = time.perf_counter()
        path = Path(out) / shard_name("train", index)
        n = len(range(index, clips, shards))
        with open(path, "wb") as f, SampleTarWriter(f) as tar:
            for j in range(n):
                meta = {"source_id": f"bench{index}-{j}", "stride": 4, "num_frames": latent[1], "size": [size, size]}
                tar.write(
                    encode_latent_sample(
                        f"bench{index:03d}_{j:05d}_c000",
                        torch.randn(latent, generator=g),
                        torch.full(latent, -6.0),
                        torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8),
                        "the camera pans slowly to the left over a city street at dusk",
                        meta,
                        "bench-vae",
                        text=torch.randn(text, generator=g),
                        text_encoder="bench-text",
                    )
                )
        stats = ShardStats(
            shard=path.name,
            split="train",
            index=index,
            source="bench",
            samples_written=n,
            duration_s=time.perf_counter() - start,
            bytes_written=path.stat().st_size,
            settings={"kind": LATENT_KIND, "sizes": [size], "frames": [latent[1]]},
        )
        write_stats(Path(out) / stats_name("train", index), stats)
        paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--out", required=True, help="folder for the shards")
    parser.add_argument("--clips", type=int, default=256)
    parser.add_argument("--shards", type=int, default=8)
    args = parser.parse_args()
    paths = write_shards(args.recipe, args.out, args.clips, args.shards)
    print(f"wrote {len(paths)} latent shards, {args.clips} clips, under {args.out}")


if __name__ == "__main__":
    main()
