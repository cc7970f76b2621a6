"""VideoValidation through `dv fit` and `dv validate`: metrics, TensorBoard tags, the results table."""

from __future__ import annotations

import glob

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dv.cli import main as dv_main
from tests.integration.test_fit import tiny_recipe


def with_validation(path, modes):
    recipe = yaml.safe_load(path.read_text())
    recipe["model"]["init_args"]["backbone"]["unet_weights"] = []
    for callback in recipe["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ThroughputLogger"):
            callback["init_args"]["every_n_steps"] = 1
    recipe["trainer"]["callbacks"].append(
        {
            "class_path": "dv.callbacks.VideoValidation",
            "init_args": {
                "every_n_steps": 2,
                "num_videos": 2,
                "modes": modes,
                "steps": 2,
                "log_videos": 1,
                "paper_rows": "ucf101",
            },
        }
    )
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_fit_logs_dashboard_tags_and_validate_writes_the_table(tmp_path, pans_shards):
    modes = ["t2v", "ti2v", "zero_shot"]
    recipe = with_validation(tiny_recipe(tmp_path, pans_shards, "dash", source="recipes/demo.yaml", max_steps=3), modes)
    assert dv_main(["fit", "--recipe", str(recipe)]) == 0
    run = tmp_path / "runs" / "dash" / "latest"
    ea = EventAccumulator(glob.glob(str(run / "events.out.tfevents.*"))[0], size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    scalars, images = set(ea.Tags()["scalars"]), set(ea.Tags()["images"])
    for tag in ("train/loss", "train/grad_norm", "lr-AdamW", "perf/clips_per_sec", "val/loss"):
        assert tag in scalars, tag
    for mode in modes:
        assert f"val_{mode}/fff_ssim" in scalars
        assert f"val_{mode}/video_0" in images and f"val_{mode}/reference_first_last" in images
    layout = ea.PluginTagToContent("custom_scalars") if hasattr(ea, "PluginTagToContent") else None
    assert layout, "a custom-scalars layout is written"
    hparams = ea.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams, "hyper-parameters are logged with the metrics"

    assert not list((tmp_path / "runs" / "dash").glob("*/results.md")), "fit's validation loop writes no table"
    ckpt = run / "checkpoints" / "last.ckpt"
    assert dv_main(["validate", "--recipe", str(recipe), "--ckpt_path", str(ckpt)]) == 0
    table = next((tmp_path / "runs" / "dash").glob("*/results.md")).read_text()
    assert "ti2v" in table and "zero_shot" in table and "paper: DreamVideo (Table 1)" in table
    assert "FFF_SSIM" in table and "FVD" in table
    assert "Detectors: none configured" in table
