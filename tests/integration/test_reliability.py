"""docs/reliability.md, end to end: checkpoints are the command line's, bad input is one line, runs never mix."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from dv.cli import main as dv_main
from tests.integration.test_fit import REPO, fit, load, tiny_recipe


def one_line_error(capsys, code: int) -> str:
    """The error printed by a dv command that must fail with exit 2 and one line, no traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err[-20:]
    assert err and err[-1].startswith("dv: error: "), err[-20:]
    assert not any("Traceback" in line or "usage:" in line for line in err), err
    return err[-1]


@pytest.fixture(scope="module")
def t2v_run(tmp_path_factory, pans_shards):
    """A 2-step tiny T2V run: its recipe and last.ckpt."""
    tmp = tmp_path_factory.mktemp("t2v")
    recipe = tiny_recipe(tmp, pans_shards, "t2v", max_steps=2)
    fit(recipe)
    return recipe, tmp / "runs" / "t2v" / "latest" / "checkpoints" / "last.ckpt"


def test_checkpoint_of_another_model_class_is_refused(tmp_path, pans_shards, t2v_run, capsys):
    _, ckpt = t2v_run
    other = tiny_recipe(tmp_path, pans_shards, "dreamvideo", source="recipes/demo.yaml", max_steps=3)
    for command in ("fit", "validate"):
        line = one_line_error(capsys, dv_main([command, "--recipe", str(other), "--ckpt_path", str(ckpt)]))
        assert "dv.lit.T2VModule" in line and "dv.lit.DreamVideoModule" in line, line
    assert not (tmp_path / "runs" / "dreamvideo" / "latest" / "checkpoints").exists(), "nothing was trained"


def test_checkpoint_of_another_trainable_set_is_refused(tmp_path, pans_shards, t2v_run, capsys):
    _, ckpt = t2v_run  # trains all of the U-Net
    temporal = tiny_recipe(tmp_path, pans_shards, "temporal", max_steps=3)
    recipe = yaml.safe_load(temporal.read_text())
    recipe["model"]["init_args"]["trainable"] = "temporal"
    temporal.write_text(yaml.safe_dump(recipe))
    line = one_line_error(capsys, dv_main(["fit", "--recipe", str(temporal), "--ckpt_path", str(ckpt)]))
    assert "differ from this recipe's T2VModule" in line and "not trained here" in line, line


def test_resume_applies_command_line_overrides(tmp_path, pans_shards):
    """The checkpoint's saved hyper-parameters (lr 4e-3, EMA 0.99) must not replace the command line's."""
    recipe = tiny_recipe(tmp_path, pans_shards, "resume", max_steps=2)
    fit(recipe)
    fit(
        recipe,
        "--ckpt_path",
        "last",
        "--trainer.max_steps=3",
        "--model.init_args.optim.lr=0.5",
        "--model.init_args.ema_decay=0.5",
        "--model.init_args.optim.warmup_steps=1",
    )
    ckpt = load(tmp_path / "runs" / "resume" / "latest" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3
    assert ckpt["hyper_parameters"]["optim"]["lr"] == 0.5 and ckpt["hyper_parameters"]["ema_decay"] == 0.5
    assert ckpt["ema"]["decay"] == 0.5
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    assert group["initial_lr"] == 0.5 and group["lr"] == 0.5, group["lr"]
    assert ckpt["lr_schedulers"][0]["base_lrs"] == [0.5]


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "missing", "folder"])
@pytest.mark.parametrize("command", ["fit", "validate"])
def test_bad_checkpoint_file_is_one_line(tmp_path, t2v_run, capsys, kind, command):
    recipe, good = t2v_run
    bad = tmp_path / f"{kind}.ckpt"
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "garbage":
        bad.write_bytes(os.urandom(4096))
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "folder":
        bad.mkdir()
    line = one_line_error(capsys, dv_main([command, "--recipe", str(recipe), "--ckpt_path", str(bad)]))
    assert str(bad) in line, line


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--model.init_args.bogus=1"], "'bogus' is not accepted"),
        (["--model.init_args.p_drop_text=abc"], "model.init_args.p_drop_text"),
        (["--trainer.max_stepz=3"], "--trainer.max_stepz"),
        (["--data.init_args.train_shards=/nonexistent/train-*.tar"], "matches no file"),
        (["--trainer.strategy=nonesuch"], "nonesuch"),
    ],
)
def test_bad_recipe_values_are_one_line(tmp_path, pans_shards, capsys, extra, needle):
    recipe = tiny_recipe(tmp_path, pans_shards, "bad", max_steps=1)
    line = one_line_error(capsys, dv_main(["fit", "--recipe", str(recipe), *extra]))
    assert needle in line and "fit fit" not in line, line


def test_unknown_key_in_a_recipe_file_is_one_line(tmp_path, pans_shards, capsys):
    recipe = tiny_recipe(tmp_path, pans_shards, "unknown", max_steps=1)
    data = yaml.safe_load(recipe.read_text())
    data["model"]["init_args"]["learning_rate"] = 0.1
    recipe.write_text(yaml.safe_dump(data))
    assert "learning_rate" in one_line_error(capsys, dv_main(["fit", "--recipe", str(recipe)]))


def test_output_path_through_a_file_is_one_line(tmp_path, pans_shards, t2v_run, capsys):
    recipe, ckpt = t2v_run
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    fresh = tiny_recipe(tmp_path, pans_shards, "out", max_steps=1)
    line = one_line_error(
        capsys, dv_main(["fit", "--recipe", str(fresh), f"--trainer.logger.init_args.save_dir={blocker}/runs"])
    )
    assert str(blocker) in line
    line = one_line_error(
        capsys,
        dv_main(["export", "--recipe", str(recipe), "--ckpt", str(ckpt), "--out", str(blocker / "x.safetensors")]),
    )
    assert "a-file" in line


def test_export_file_mode_follows_the_umask(tmp_path, t2v_run):
    recipe, ckpt = t2v_run
    old = os.umask(0o022)
    try:
        assert (
            dv_main(["export", "--recipe", str(recipe), "--ckpt", str(ckpt), "--out", str(tmp_path / "x.safetensors")])
            == 0
        )
    finally:
        os.umask(old)
    assert (tmp_path / "x.safetensors").stat().st_mode & 0o777 == 0o644


def test_rerun_into_a_used_run_folder_and_resume_flags(tmp_path, pans_shards, capsys):
    """A fresh fit into a used folder is refused; `last` with nothing is an error; --resume-if-exists starts or resumes."""
    recipe = tiny_recipe(tmp_path, pans_shards, "rerun", max_steps=1)
    ckpts = tmp_path / "runs" / "rerun" / "latest" / "checkpoints"
    line = one_line_error(capsys, dv_main(["fit", "--recipe", str(recipe), "--ckpt_path", "last"]))
    assert "no last checkpoint" in line and "--resume-if-exists" in line
    assert not ckpts.exists()
    fit(recipe, "--resume-if-exists")  # nothing to resume: from scratch
    assert load(ckpts / "last.ckpt")["global_step"] == 1
    line = one_line_error(capsys, dv_main(["fit", "--recipe", str(recipe)]))
    assert "already holds a run" in line
    assert (
        dv_main(
            [
                "test",
                "--recipe",
                str(recipe),
                "--ckpt_path",
                "last",
                f"--data.init_args.test_shards={pans_shards / 'val-*.tar'}",
            ]
        )
        == 0
    )  # `last` resolves in test too
    assert [p.name for p in ckpts.iterdir()] == ["last.ckpt"], "no last-v1.ckpt beside it"
    fit(recipe, "--resume-if-exists", "--trainer.max_steps=2")
    assert load(ckpts / "last.ckpt")["global_step"] == 2


def test_fit_output_is_quiet(tmp_path, pans_shards):
    """Lightning's advertisements, the intended eval-mode encoders and 'Total FLOPs: 0' are not printed."""
    recipe = tiny_recipe(tmp_path, pans_shards, "quiet", max_steps=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "dv", "fit", "--recipe", str(recipe), "--resume-if-exists"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    for noise in (
        "Tip:",
        "litlogger",
        "module(s) in eval mode",
        "Total FLOPs: 0",
        "no last checkpoint",
        "args parameter is intended",
    ):
        assert noise not in out, noise
    assert "Trainable params" in out, "the model summary itself stays"
