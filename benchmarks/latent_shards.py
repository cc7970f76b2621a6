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

from dv.bench.workload import meta_workload
from dv.data.shards import (
    LATENT_KIND,
    SampleTarWriter,
    ShardStats,
    encode_latent_sample,
    shard_name,
    stats_name,
    write_stats,
)


def latent_shapes(recipe_path: str) -> tuple[tuple[int, ...], tuple[int, int], int]:
    """((c, T, h, w) of a clip's posterior, (L, D) of its text embedding, frame size) for the recipe's model."""
    module, frames, size, _, _ = meta_workload(recipe_path, None)  # built on the meta device: shapes only
    ae, text = module.backbone.autoencoder, module.backbone.text
    d = ae.downscale
    return (ae.latent_channels, frames, size // d, size // d), (text.context_length, text.width), size


def write_shards(recipe_path: str, out: str, clips: int, shards: int, seed: int = 0) -> list[str]:
    """`shards` train shards of `clips` clips in all under `out` (train-000000.tar ...); returns their paths."""
    latent, text, size = latent_shapes(recipe_path)
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
