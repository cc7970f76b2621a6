"""`dv cache-latents` then `dv fit` on the latent shards, through the CLI, with a tiny KL autoencoder."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from dv.cli import main as dv_main
from dv.data.shards import read_stats
from tests.integration.test_fit import tiny_recipe

TINY_KL = {
    "kind": "kl",
    "kl": {
        "block_out_channels": [8, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "norm_num_groups": 4,
        "layers_per_block": 1,
        "latent_channels": 12,
    },
}


def kl_recipe(tmp_path: Path, shards: Path, name: str, **backbone) -> Path:
    """recipes/demo.yaml (DreamVideo) made tiny, over a tiny diffusers AutoencoderKL (random weights, seeded)."""
    path = tiny_recipe(tmp_path, shards, name, source="recipes/demo.yaml", max_steps=4)
    recipe = yaml.safe_load(path.read_text())
    init = recipe["model"]["init_args"]
    init["backbone"].update(autoencoder=TINY_KL, unet_weights=[], **backbone)
    init["backbone"]["unet"].update(in_channels=12, out_channels=12, sample_size=8)
    init["retention"]["image_channels"] = [8, 16]
    path.write_text(yaml.safe_dump(recipe))
    return path


def on_latents(recipe: Path, latents: Path) -> Path:
    """The same recipe with its data pointed at latent shards."""
    data = yaml.safe_load(recipe.read_text())
    data["data"]["init_args"].update(train_shards=str(latents / "train-*.tar"), val_shards=str(latents / "val-*.tar"))
    out = recipe.with_name(recipe.stem + "-latents.yaml")
    out.write_text(yaml.safe_dump(data))
    return out


def test_cache_latents_then_fit(tmp_path, pans_shards, capsys):
    recipe = kl_recipe(tmp_path, pans_shards, "cached")
    latents = tmp_path / "latents"
    args = [
        "cache-latents",
        "--recipe",
        str(recipe),
        "--shards",
        str(pans_shards / "train-*.tar"),
        str(pans_shards / "val-*.tar"),
        "--out",
        str(latents),
        "--text",
        "--workers",
        "1",
        "-q",
    ]
    assert dv_main(args) == 0
    stats = [read_stats(p) for p in sorted(latents.glob("*.stats.json"))]
    assert len(stats) == len(list(pans_shards.glob("*.tar")))
    assert all(
        s.settings["frames"] == [4] and s.settings["sizes"] == [16] and s.settings["text_encoder"] for s in stats
    )
    assert len({s.settings["vae"] for s in stats}) == 1 and all(s.bytes_written > 0 for s in stats)
    capsys.readouterr()
    assert dv_main(args) == 0  # a rerun finds every shard finished
    assert f"0 written, {len(stats)} already complete" in capsys.readouterr().err

    assert dv_main(["fit", "--recipe", str(on_latents(recipe, latents))]) == 0
    ckpt = torch.load(tmp_path / "runs" / "cached" / "latest" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and any(k.startswith("branch.") for k in ckpt["state_dict"])

    # A recipe whose VAE is not the one that made the cache (another random initialisation) is refused.
    other = on_latents(kl_recipe(tmp_path, pans_shards, "other", init_seed=1), latents)
    capsys.readouterr()
    assert dv_main(["fit", "--recipe", str(other)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("dv: error: ") and "another VAE" in last
