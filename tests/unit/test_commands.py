"""Every command is a `dv` subcommand: the moved ones, their old forms (a deprecation line, then the same run), one
place that prints errors, loading from a checkpoint that carries its recipe, and who may import what."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dv.checkpoint import RECIPE_KEY, RecipeInCheckpoint, carried_recipe, load_trained, trained_recipe
from dv.cli import COMMANDS, OLD_FORMS, build_parser, deprecation_line
from dv.cli import main as dv_main
from dv.errors import ConfigError
from dv.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPE = "recipes/demo-t2v.yaml"  # T2VModule, 8 frames of 32x32, random tiny weights: no weight file needed


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (`from a import b` counts as a and a.b), at any level of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("new", sorted(set(OLD_FORMS.values())))
def test_every_moved_command_is_a_dv_subcommand(new, capsys):
    name = new.split()[1]
    assert name in COMMANDS
    with pytest.raises(SystemExit) as done:
        dv_main([name, "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: dv {name}")


def test_dv_help_lists_every_command_without_importing_them(capsys):
    build_parser().parse_args([])  # every command's flags build
    with pytest.raises(SystemExit):
        dv_main(["--help"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in COMMANDS)


@pytest.mark.parametrize(
    "old, argv, error",
    [
        ("python -m dv.claims", ["--model", "nope", "--val-shards", "x"], "dv: error: --model takes NAME=RECIPE,CKPT"),
        ("python -m dv.claims.captions", ["--model", "nope", "--val-shards", "x"], "dv: error: --model takes"),
        (
            "python -m dv.diffusion.trajectory",
            ["--ckpt", "missing.ckpt", "--shards", "x"],
            "dv: error: checkpoint 'missing.ckpt' does not exist",
        ),
        ("python -m dv.data.datamodule", ["--shards", "nothing-here/train-*.tar"], "dv: error: shard pattern"),
        (
            "python -m data_prep build",
            ["--source", "camera-pans", "--out", "o", "--size", "15"],
            "data_prep: error: --size must be an even number",
        ),
    ],
)
def test_old_forms_print_the_new_form_then_run_it(old, argv, error):
    module_argv = old.split()[2:]
    run = subprocess.run(
        [sys.executable, "-m", *module_argv, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr[-2000:]
    assert lines[0] == deprecation_line(old) and OLD_FORMS[old] in lines[0]
    assert lines[-1].startswith(error), lines


def test_one_place_prints_errors():
    printers = [
        p.relative_to(ROOT).as_posix()
        for p in python_files("dv", "data_prep")
        if ": error:" in p.read_text(encoding="utf-8")
    ]
    assert printers == ["dv/cli.py"]


def test_no_module_but_the_cli_imports_dv_sample():
    importers = []
    for path in python_files("dv", "data_prep", "benchmarks", "tests"):
        if path == Path(__file__).resolve():
            continue  # this test names the module it looks for
        text = path.read_text(encoding="utf-8")
        if {"dv.sample"} & imported_modules(path) or '"dv.sample"' in text:
            importers.append(path.relative_to(ROOT).as_posix())
    assert importers == ["dv/cli.py"]


def test_the_library_imports_no_data_prep():
    assert [p for p in python_files("dv") if any(m.split(".")[0] == "data_prep" for m in imported_modules(p))] == []


def test_claims_modules_import_no_package_main():
    assert [p for p in python_files("dv/claims") if "dv.claims.__main__" in imported_modules(p)] == []


def training_checkpoint(tmp_path: Path, carries_recipe: bool) -> Path:
    """What `dv fit` writes for RECIPE after training: the module's checkpoint hooks, and its recipe when asked."""
    module = Recipe.load(RECIPE).build_model()
    module.configure_model()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01)  # "trained": differs from a fresh build
    hparams = {
        **module.hparams,
        "_class_path": "dv.lit.T2VModule",
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
    }
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": hparams, "global_step": 1}
    module.on_save_checkpoint(checkpoint)
    if carries_recipe:
        RecipeInCheckpoint((ROOT / RECIPE).read_text()).on_save_checkpoint(None, module, checkpoint)
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_that_carries_its_recipe_needs_no_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    ckpt = str(training_checkpoint(tmp_path, carries_recipe=True))
    assert RECIPE_KEY in torch.load(ckpt, weights_only=True)
    assert carried_recipe(ckpt).video_shape() == Recipe.load(RECIPE).video_shape() == (8, 32)
    given, carried = load_trained(RECIPE, ckpt), load_trained(None, ckpt)
    assert type(given) is type(carried)
    for (name, a), (_, b) in zip(given.state_dict().items(), carried.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    out = tmp_path / "v.mp4"
    assert (
        dv_main(
            [
                "sample",
                "--ckpt",
                ckpt,
                "--prompt",
                "the camera pans left",
                "--steps",
                "1",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert out.stat().st_size > 0
    # dv export too: the checkpoint's recipe rebuilds the model; the export equals one made with --recipe.
    exports = [tmp_path / "carried.safetensors", tmp_path / "given.safetensors"]
    assert dv_main(["export", "--ckpt", ckpt, "--out", str(exports[0])]) == 0
    assert dv_main(["export", "--recipe", RECIPE, "--ckpt", ckpt, "--out", str(exports[1])]) == 0
    carried_w, given_w = (load_file(str(p)) for p in exports)
    assert carried_w.keys() == given_w.keys() and all(torch.equal(carried_w[k], given_w[k]) for k in given_w)


def test_a_checkpoint_without_its_recipe_rebuilds_the_model_but_asks_for_the_shape(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    ckpt = str(training_checkpoint(tmp_path, carries_recipe=False))
    recipe = trained_recipe(None, ckpt)
    assert recipe.model_class == "dv.lit.T2VModule" and "data" not in recipe.config
    with pytest.raises(ConfigError, match="--frames and --size"):
        recipe.video_shape()


def test_card_animates_the_held_out_photos_unless_told_which():
    """`dv card --photos`: the four held-out photos by default, any camera-pans photo by name, a clear error else."""
    from dv.data.camera_pans import VAL_PHOTOS

    base = ["card", "--recipe", "r.yaml", "--ckpt", "m.safetensors", "--val-shards", "v"]
    assert tuple(build_parser().parse_args(base).photos) == VAL_PHOTOS
    assert build_parser().parse_args([*base, "--photos", "astronaut", "coffee"]).photos == ["astronaut", "coffee"]
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--photos", "nowhere"])
