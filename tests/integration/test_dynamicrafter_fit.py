"""recipes/demo-dynamicrafter.yaml end to end: `dv fit`, `dv validate`, `dv export` and `dv sample` with no new flags."""

from __future__ import annotations

import numpy as np
import yaml
from PIL import Image

from dv.cli import main as dv_main
from dv.data.video import decode_mp4
from tests.integration.test_fit import fit, load, tiny_recipe


def test_demo_dynamicrafter_fits_validates_and_samples(tmp_path, pans_shards, capsys):
    path = tiny_recipe(tmp_path, pans_shards, "dc", source="recipes/demo-dynamicrafter.yaml", max_steps=3)
    recipe = yaml.safe_load(path.read_text())
    model = recipe["model"]["init_args"]
    model["backbone"]["unet_weights"] = []  # no stage-1 export here: the backbone starts from its seed
    model["projection"]["num_frames"] = 4  # the clips tiny_recipe loads
    recipe["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 3
    path.write_text(yaml.safe_dump(recipe))
    fit(path)

    run = tmp_path / "runs" / "dc" / "latest"
    ckpt = load(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3
    keys = set(ckpt["state_dict"])
    assert any(".processor.to_v_img." in k for k in keys) and any(k.startswith("branch.projection.") for k in keys)
    assert any("conv_in.reference" in k for k in keys) and any("time_embedding.cond_proj" in k for k in keys)
    assert not any("image_encoder" in k for k in keys), "the frozen image encoder does not belong in a checkpoint"

    config, last = str(run / "config.yaml"), str(run / "checkpoints" / "last.ckpt")
    assert dv_main(["validate", "--recipe", config, "--ckpt_path", last]) == 0
    table = (run / "results.md").read_text()
    assert "ti2v" in table and "zero_shot" in table

    export = tmp_path / "dc.safetensors"
    assert dv_main(["export", "--recipe", config, "--ckpt", last, "--out", str(export)]) == 0
    image = tmp_path / "ref.png"
    Image.fromarray(np.full((24, 20, 3), 200, dtype=np.uint8)).save(image)
    for weights in (last, str(export)):
        out = tmp_path / f"sample-{len(weights)}.mp4"
        assert (
            dv_main(
                [
                    "sample",
                    "--recipe",
                    config,
                    "--ckpt",
                    weights,
                    "--image",
                    str(image),
                    "--prompt",
                    "the camera pans left over a photo of a cat",
                    "--steps",
                    "2",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        assert decode_mp4(out.read_bytes()).shape == (4, 16, 16, 3)
    assert dv_main(["info", "--recipe", config]) == 0
    assert "projection P" in capsys.readouterr().out
