"""`dv fit` through the CLI: resume exactness, checkpoints, export, and the demo chain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dv.cli import main as dv_main

REPO = Path(__file__).resolve().parents[2]


def tiny_recipe(tmp_path: Path, shards: Path, name: str, source: str = "recipes/demo-t2v.yaml", **trainer) -> Path:
    """The demo recipe made smaller: 2-step epochs, no workers, checkpoints under tmp_path."""
    recipe = yaml.safe_load((REPO / source).read_text())
    settings = dict(
        max_steps=4, val_check_interval=None, check_val_every_n_epoch=1, limit_val_batches=1, log_every_n_steps=1
    )
    recipe["trainer"].update({**settings, **trainer})
    recipe["trainer"]["logger"]["init_args"].update(save_dir=str(tmp_path / "runs"), name=name)
    recipe["trainer"]["callbacks"][0]["init_args"] = {"every_n_train_steps": 2, "save_last": True, "save_top_k": -1}
    data = recipe["data"]["init_args"]
    data.update(
        train_shards=str(shards / "train-*.tar"),
        val_shards=str(shards / "val-*.tar"),
        batch_size=2,
        num_workers=0,
        samples_per_epoch=4,
        num_frames=4,
        frame_size=16,
    )
    backbone = recipe["model"]["init_args"]["backbone"]
    channels = 3 * backbone["autoencoder"]["factor"] ** 2  # the recipe's space-to-depth latents
    backbone["unet"].update(in_channels=channels, out_channels=channels, block_out_channels=[16, 32], sample_size=4)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def fit(recipe: Path, *extra: str) -> None:
    assert dv_main(["fit", "--recipe", str(recipe), *extra]) == 0


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_continues_exactly(tmp_path, pans_shards):
    whole = tiny_recipe(tmp_path, pans_shards, "whole")
    fit(whole)
    halves = tiny_recipe(tmp_path, pans_shards, "halves")
    fit(halves, "--trainer.max_steps=2")
    ckpt_dir = tmp_path / "runs" / "halves" / "latest" / "checkpoints"
    assert load(ckpt_dir / "last.ckpt")["global_step"] == 2
    fit(halves, "--ckpt_path", "last")

    a = load(tmp_path / "runs" / "whole" / "latest" / "checkpoints" / "last.ckpt")
    b = load(ckpt_dir / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 4
    assert a["state_dict"].keys() == b["state_dict"].keys() and len(a["state_dict"]) > 0
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-5, atol=1e-6, msg=k)
    for k in a["ema"]["shadow"]:
        torch.testing.assert_close(a["ema"]["shadow"][k], b["ema"]["shadow"][k], rtol=1e-5, atol=1e-6, msg=k)
    assert a["ema"]["updates"] == b["ema"]["updates"] == 4
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert opt_a.keys() == opt_b.keys()
    for i in opt_a:
        assert int(opt_a[i]["step"]) == int(opt_b[i]["step"]) == 4
        torch.testing.assert_close(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"], rtol=1e-4, atol=1e-9)


def test_last_checkpoint_is_the_final_step(tmp_path, pans_shards):
    """3 steps with a save every 2: Lightning alone leaves last.ckpt at step 2."""
    fit(tiny_recipe(tmp_path, pans_shards, "odd", max_steps=3))
    assert load(tmp_path / "runs" / "odd" / "latest" / "checkpoints" / "last.ckpt")["global_step"] == 3


def test_checkpoint_holds_only_trainable_weights_and_exports(tmp_path, pans_shards):
    recipe = tiny_recipe(tmp_path, pans_shards, "t2v", max_steps=2)
    fit(recipe)
    run = tmp_path / "runs" / "t2v" / "latest"
    ckpt = load(run / "checkpoints" / "last.ckpt")  # weights_only=True must work
    keys = set(ckpt["state_dict"])
    assert keys and all(k.startswith("backbone.unet.") for k in keys)
    assert not any("autoencoder" in k or "text." in k for k in keys), "frozen parts do not belong in a checkpoint"
    out = tmp_path / "export.safetensors"
    assert (
        dv_main(
            [
                "export",
                "--recipe",
                str(run / "config.yaml"),
                "--ckpt",
                str(run / "checkpoints" / "last.ckpt"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    from safetensors import safe_open

    with safe_open(out, framework="pt") as f:
        assert f.metadata()["format"] == "dv" and f.metadata()["ema"] == "True"
        assert set(f.keys()) == {k.removeprefix("backbone.") for k in keys}
        name = next(iter(f.keys()))
        torch.testing.assert_close(f.get_tensor(name), ckpt["ema"]["shadow"]["backbone." + name])


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert dv_main(["info", "--recipe", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dv: error: ") and "\n" not in err and "Traceback" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: dv.lit.T2VModule\n  init_args: {trainable: spatial}\n")
    assert dv_main(["info", "--recipe", str(bad)]) == 2
    assert "trainable" in capsys.readouterr().err


def test_dv_command_help_and_version():
    out = subprocess.run([sys.executable, "-m", "dv", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("dv ")
    out = subprocess.run([sys.executable, "-m", "dv", "--help"], capture_output=True, text=True, check=True).stdout
    assert "fit" in out and "info" in out and "export" in out


@pytest.mark.slow
def test_make_demo_end_to_end(tmp_path):
    """The README's `make demo`, shortened to a few training steps, through the Makefile and the CLI: DreamVideo on
    the shipped backbone (pretrained/tiny-t2v), no T2V stage of its own."""
    runs = tmp_path / "runs"
    cmd = [
        "make",
        "-C",
        str(REPO),
        "demo",
        f"TINY_SHARDS={tmp_path / 'shards'}",
        f"RUNS={runs}",
        "FIT_ARGS=--trainer.max_steps=3 --trainer.val_check_interval=3 --trainer.limit_val_batches=1",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (runs / "demo-t2v").exists(), "the demo trains on the shipped backbone"
    assert (runs / "demo" / "export.safetensors").is_file()
    assert "retention branch" in result.stdout
    from safetensors import safe_open

    with safe_open(runs / "demo" / "export.safetensors", framework="pt") as f:
        parts = {k.split(".", 1)[0] for k in f.keys()}
    assert parts == {"unet", "branch"}
    from dv.data.video import decode_mp4

    video = decode_mp4((runs / "demo" / "sample.mp4").read_bytes())
    assert video.shape == (8, 32, 32, 3), "the demo recipe samples 8 frames of 32×32"
    assert (runs / "demo" / "sample.png").is_file() and (runs / "demo" / "sample.gif").is_file()
    import numpy as np
    from PIL import Image

    from data_prep.camera_pans import reference_view

    reference = np.asarray(Image.open(runs / "demo" / "rocket.png"))
    assert np.array_equal(reference, reference_view("rocket", 256)), (
        "the demo samples the held-out photo at the clips' scale"
    )
    table = (runs / "demo" / "latest" / "results.md").read_text()
    assert "| t2v |" in table and "| ti2v |" in table and "FFF_SSIM" in table
    assert "| pure noise |" in result.stdout, "make demo prints where sampling loses the clip"
    assert "tensorboard --logdir" in result.stdout


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--image", "/nonexistent/cat.png"], "does not exist"),
        (["--image", "{notimage}"], "not an image"),
        (["--prompt", "  "], "empty"),
        (["--guidance-text", "nan", "--prompt", "a cat"], "finite"),
        (["--guidance-image", "-1", "--prompt", "a cat"], ">= 0"),
        (["--steps", "0", "--prompt", "a cat"], "steps"),
    ],
)
def test_sample_bad_input_is_one_line(tmp_path, capsys, flags, needle):
    notimage = tmp_path / "notes.png"
    notimage.write_text("hello")
    flags = [f.format(notimage=notimage) for f in flags]
    code = dv_main(
        ["sample", "--recipe", str(REPO / "recipes" / "demo.yaml"), "--ckpt", str(tmp_path / "x.ckpt"), *flags]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("dv: error: ") and "\n" not in err, err
    assert needle in err


def test_validate_and_test_commands(tmp_path, pans_shards):
    recipe = tiny_recipe(tmp_path, pans_shards, "vt", max_steps=1)
    fit(recipe)
    ckpt = str(tmp_path / "runs" / "vt" / "latest" / "checkpoints" / "last.ckpt")
    assert dv_main(["validate", "--recipe", str(recipe), "--ckpt_path", ckpt]) == 0
    assert (
        dv_main(
            [
                "test",
                "--recipe",
                str(recipe),
                "--ckpt_path",
                ckpt,
                f"--data.init_args.test_shards={pans_shards / 'val-*.tar'}",
            ]
        )
        == 0
    )
