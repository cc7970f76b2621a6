"""Every command line shown in README.md and docs/*.md, run as written at tiny size, or as far as a CPU allows.

A documented line is a fenced line starting with `dv`, `make`, `python -m`, `srun` or `torchrun` (continuations
joined, comments dropped). Its command is named by its leading words (`dv fit`, `python -m data_prep build`,
`make demo`) and looked up in COMMANDS, longest match first. A line whose command has no entry fails
`test_every_documented_line_has_a_stand_in`: a new command in the docs needs its stand-in here. A renamed command
gets a second key pointing at the same stand-in, so the old and the new spelling both work.

Each entry says two things:
- `check`: cheap, in `make test-fast`: Lightning lines parse against the real recipes (`--print_config`), dv's own
  commands and the builders parse their flags, `make` lines expand (`make -n`) into commands that all have stand-ins.
- `run`: slow: the line runs as written in a folder laid out as the docs assume (`world`): `recipes/dreamvideo.yaml`
  and the other recipes there are tiny versions of the real ones (the tests' tiny recipes), `runs/dreamvideo/version_0`
  holds a tiny trained run, `data/shards/pexels` holds the tests' camera-pans shards, `R`, `C`, `cat.png` and
  `last.ckpt` are files. Only flags that set a size are appended (`--trainer.max_steps`, `--steps`). A line that cannot
  run here (8 GPUs on 4 nodes, a web server, source videos this machine lacks) names what is run instead and where.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from data_prep.__main__ import main as data_prep_main
from data_prep.__main__ import make_parser as data_prep_parser
from dv.cli import build_parser
from dv.cli import main as dv_main
from tests.integration.test_fit import REPO, tiny_recipe

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
STARTS = ("dv", "make", "python", "srun", "torchrun")
ENV_VALUES = {"$NODE_RANK": "0", "$MASTER_ADDR": "127.0.0.1", "$SLURM_ARRAY_TASK_ID": "0"}


@dataclass(frozen=True)
class Line:
    """One documented command line."""

    file: str
    lineno: int
    text: str

    @property
    def words(self) -> list[str]:
        """Its words, with the docs' `[optional flags]` brackets dropped and environment variables given values."""
        words = [w.strip("[]") for w in shlex.split(self.text, comments=True)]
        return [ENV_VALUES.get(w, w) for w in words if w]

    def __str__(self) -> str:
        return f"{self.file}:{self.lineno}"


def documented_lines() -> list[Line]:
    """Every fenced command line of the docs, in order."""
    lines = []
    for doc in DOCS:
        fenced, pending, start = False, "", 0
        for n, raw in enumerate(doc.read_text().splitlines(), 1):
            if raw.lstrip().startswith("```"):
                fenced, pending = not fenced, ""
                continue
            if not fenced:
                continue
            if not pending:
                start = n
            pending += raw.rstrip().removesuffix("\\") + " "
            if raw.rstrip().endswith("\\"):
                continue
            text, pending = " ".join(pending.split()), ""
            words = text.split()
            if words and words[0] in STARTS and (words[0] != "python" or words[1:2] == ["-m"]):
                lines.append(Line(str(doc.relative_to(REPO)), start, text))
    return lines


def command_words(words: list[str]) -> list[str]:
    """The words that name a line's command: `torchrun`'s own options are left out (`torchrun -m dv fit`)."""
    if words[0] == "torchrun":
        return ["torchrun", *words[words.index("-m") :]]
    return words


# ----------------------------------------------------------------------------------------------------------- checks


PLACEHOLDERS = {"C": "last.ckpt"}
"""The docs' placeholders that must be spelled out to run: dv tells a checkpoint from an export by its extension, and
`dv validate` takes a training checkpoint (`dv sample` and `dv app` take either)."""


def _lightning_argv(words: list[str]) -> list[str]:
    """`dv fit ...`, `srun dv fit ...`, `torchrun ... -m dv fit ...`: the arguments after `dv`."""
    words = command_words(words)
    return [PLACEHOLDERS.get(w, w) for w in words[words.index("dv") + 1 :]]


REAL_RECIPES = {
    "R": "recipes/demo.yaml",
    "runs/dreamvideo/version_0/config.yaml": "recipes/dreamvideo.yaml",
    "runs/dynamicrafter/version_0/config.yaml": "recipes/dynamicrafter.yaml",
    "runs/demo-dynamicrafter/latest/config.yaml": "recipes/demo-dynamicrafter.yaml",
}
"""The recipe a documented run folder (or the placeholder R) was made with, for the parse checks."""


def parse_lightning(words: list[str], capsys) -> None:
    """The line parses against the real recipe: LightningCLI prints the whole config and exits 0."""
    argv = [REAL_RECIPES.get(w, w) for w in _lightning_argv(words)]
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with pytest.raises(SystemExit) as exit_:
            dv_main([*argv, "--print_config"])
    finally:
        os.chdir(cwd)
    out = capsys.readouterr()
    assert exit_.value.code in (0, None), out.err[-3000:]
    assert "model:" in out.out and "trainer:" in out.out


def parse_dv(words: list[str], capsys) -> None:
    """dv's own command accepts the flags."""
    build_parser().parse_args(words[1:])


def parse_data_prep(words: list[str], capsys) -> None:
    """The shard builder accepts the flags (`python -m data_prep build ...`, or `dv shards ...` once renamed)."""
    if words[0] == "dv":
        return parse_dv(words, capsys)
    data_prep_parser().parse_args(words[3:])


def parse_help(words: list[str], capsys) -> None:
    """The command exists and takes `--help` (`python -m MODULE`, or the `dv` command of its new name)."""
    command = ["-m", "dv", words[1]] if words[0] == "dv" else ["-m", words[2]]
    result = subprocess.run([sys.executable, *command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


MAKE_IGNORED = ("python -m venv", "python -m pip", "python -m pytest", "python -c")
"""Commands of Makefile targets that are set-up or tests, not dv commands."""


def expand_make(words: list[str], capsys) -> None:
    """`make -n TARGET`: the target exists, and every dv / python -m command it runs has a stand-in."""
    result = subprocess.run(["make", "-n", "-C", str(REPO), *words[1:]], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    for text in result.stdout.replace("\\\n", " ").splitlines():
        text = re.sub(r"\S*/bin/(python3?|dv)\b", lambda m: "python" if m.group(1).startswith("python") else "dv", text)
        text = re.sub(r"^(\w+=\S*\s+)*", "", text.strip())  # OMP_NUM_THREADS=1 dv fit ...
        text = re.sub(r"^python3 ", "python ", text)
        if not text.startswith(("dv ", "python -m ")) or text.startswith(MAKE_IGNORED):
            continue
        assert stand_in(shlex.split(text, comments=True)) is not None, f"`make {' '.join(words[1:])}` runs {text!r}"


# ------------------------------------------------------------------------------------------------------------- runs


@dataclass
class World:
    """The folder the docs assume, at tiny size (see the module docstring)."""

    root: Path
    shards: Path

    def steps(self, run: str) -> int:
        """The step of the newest last.ckpt under runs/RUN (0 if none)."""
        found = sorted((self.root / "runs" / run).glob("*/checkpoints/last.ckpt"), key=os.path.getmtime)
        return torch.load(found[-1], weights_only=True)["global_step"] if found else 0


def _tiny(world_root: Path, shards: Path, source: str, name: str, version, **model) -> dict:
    """The tests' tiny recipe of `source`, logging to runs/NAME/VERSION of the world, reading data/shards/pexels."""
    path = tiny_recipe(world_root, shards, name, source=source, max_steps=2)
    recipe = yaml.safe_load(path.read_text())
    path.unlink()
    recipe["trainer"]["logger"]["init_args"].update(save_dir="runs", name=name, version=version)
    recipe["data"]["init_args"].update(
        train_shards="data/shards/pexels/train-*.tar", val_shards="data/shards/pexels/val-*.tar"
    )
    init = recipe["model"]["init_args"]
    init["backbone"]["unet_weights"] = []  # the tiny U-Net starts from its seed, not from pretrained/tiny-t2v
    for key, value in model.items():
        init[key] = {**init[key], **value} if isinstance(value, dict) else value
    return recipe


def _write(path: Path, recipe: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, pans_shards) -> World:
    root = tmp_path_factory.mktemp("world")
    (root / "data" / "shards").mkdir(parents=True)
    (root / "data" / "shards" / "pexels").symlink_to(pans_shards)
    (root / "pretrained").symlink_to(REPO / "pretrained")
    dream = _tiny(root, pans_shards, "recipes/demo.yaml", "dreamvideo", None, retention={"image_channels": [8, 16]})
    crafter = _tiny(
        root, pans_shards, "recipes/demo-dynamicrafter.yaml", "dynamicrafter", None, projection={"num_frames": 4}
    )
    for name in ("dreamvideo", "demo", "eval_ucf101", "eval_msrvtt"):  # the eval recipes validate DreamVideo models
        recipe = yaml.safe_load(yaml.safe_dump(dream))
        recipe["trainer"]["logger"]["init_args"].update(name=name, version="latest" if name == "demo" else None)
        _write(root / "recipes" / f"{name}.yaml", recipe)
    for name in ("dynamicrafter", "demo-dynamicrafter"):
        recipe = yaml.safe_load(yaml.safe_dump(crafter))
        recipe["trainer"]["logger"]["init_args"].update(
            name=name, version="latest" if name.startswith("demo") else None
        )
        _write(root / "recipes" / f"{name}.yaml", recipe)
    shutil.copy(root / "recipes" / "dreamvideo.yaml", root / "R")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        # runs/demo-dynamicrafter/latest is left to the documented `dv fit` line that makes it (a fresh fit into a
        # used folder is refused); the lines after it in docs/dynamicrafter.md use it.
        for name in ("dreamvideo", "dynamicrafter"):
            assert dv_main(["fit", "--recipe", f"recipes/{name}.yaml"]) == 0
        assert (
            dv_main(
                [
                    "export",
                    "--recipe",
                    "R",
                    "--ckpt",
                    "runs/dreamvideo/version_0/checkpoints/last.ckpt",
                    "--out",
                    "C.safetensors",
                ]
            )
            == 0
        )
        assert (
            dv_main(
                [
                    "export",
                    "--recipe",
                    "recipes/dynamicrafter.yaml",
                    "--ckpt",
                    "runs/dynamicrafter/version_0/checkpoints/last.ckpt",
                    "--out",
                    "runs/dynamicrafter/stage1.safetensors",
                ]
            )
            == 0
        )
    finally:
        os.chdir(cwd)
    last = root / "runs" / "dreamvideo" / "version_0" / "checkpoints" / "last.ckpt"
    shutil.copy(last, root / "last.ckpt")
    shutil.copy(
        last, f"{last}.consolidated"
    )  # what consolidate_checkpoint makes of a sharded one: a one-file checkpoint
    photo = Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3)))
    for path in ("cat.png", "photo.png", "runs/demo/rocket.png"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        photo.save(root / path)
    return World(root, pans_shards)


def _in_world(world: World, fn: Callable[[], int]) -> None:
    cwd = os.getcwd()
    os.chdir(world.root)
    try:
        assert fn() == 0
    finally:
        os.chdir(cwd)


def run_fit(words: list[str], world: World) -> None:
    """`dv fit` as written, one step past where its run folder is (a resumed line goes on from its checkpoint)."""
    argv = _lightning_argv(words)
    if any(a.endswith("backbone.compile=true") for a in argv):
        # Inductor compiling even the tiny model takes 8 minutes on 2 cores; the line is parsed by `check`, and dynamo
        # capturing the same modules without a graph break is tested by test_bench.py.
        pytest.skip("run by tests/unit/test_bench.py::test_explain_finds_one_graph_without_breaks")
    argv = [a for a in argv if not a.startswith(("--trainer.num_nodes", "--trainer.devices"))]  # 1 CPU process
    recipe = yaml.safe_load((world.root / argv[argv.index("--recipe") + 1]).read_text())
    name = next(
        (a.split("=", 1)[1] for a in argv if a.startswith("--trainer.logger.init_args.name=")),
        recipe["trainer"]["logger"]["init_args"]["name"],
    )
    steps = world.steps(name) + 1 if "--ckpt_path" in argv else 1
    _in_world(world, lambda: dv_main([*argv, f"--trainer.max_steps={steps}"]))


def run_dv(*extra: str) -> Callable[[list[str], World], None]:
    """A dv line as written, with `extra` (size) flags appended."""

    def run(words: list[str], world: World) -> None:
        _in_world(world, lambda: dv_main([*_lightning_argv(words), *extra]))

    return run


def run_torchrun(words: list[str], world: World) -> None:
    """The torchrun line on this machine: 1 node of 2 CPU processes, the same `-m dv fit` command."""
    argv = [w for w in _lightning_argv(words) if not w.startswith(("--trainer.num_nodes", "--trainer.devices"))]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--node-rank=0",
        "--master-addr=127.0.0.1",
        "--master-port=29517",
        "-m",
        "dv",
        *argv,
        "--trainer.num_nodes=1",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        "--trainer.max_steps=1",
        "--trainer.logger.init_args.name=torchrun",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=world.root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (world.root / "runs" / "torchrun").is_dir()


def run_data_prep_build(words: list[str], world: World) -> None:
    """camera-pans is built as written (into the world), at 32 px, one clip a move, the val split."""
    if words[0] == "dv":  # `dv shards ...` as `python -m data_prep build ...`
        words = ["python", "-m", "data_prep", "build", *words[2:]]
    if "camera-pans" not in words:
        pytest.skip(
            "needs the source's videos (Pexels, UCF-101, MSR-VTT): the flags are checked by `check`; the "
            "adapters are tested on small stand-in sources in tests/unit/test_data_prep.py"
        )
    _in_world(
        world,
        lambda: data_prep_main(
            [*words[3:], "--size", "32", "--clips-per-video", "1", "--split", "val", "--workers", "1", "-q"]
        ),
    )


def run_data_prep_stats(words: list[str], world: World) -> None:
    """`python -m data_prep stats ...`, or its new name `dv shard-stats ...`, as written."""
    if words[0] == "dv":
        return run_dv()(words, world)
    _in_world(world, lambda: data_prep_main(words[3:]))


def elsewhere(where: str) -> Callable[[list[str], World], None]:
    """A line whose tiny run lives in another test (too costly to repeat, or not a one-shot command)."""

    def run(words: list[str], world: World) -> None:
        path, _, name = where.partition("::")
        assert f"def {name}(" in (REPO / path).read_text(), f"{where} is gone"
        pytest.skip(f"run by {where}")

    return run


@dataclass(frozen=True)
class StandIn:
    check: Callable
    run: Callable


def dv_help(words: list[str], capsys_or_world=None) -> None:
    """`dv --help` lists every command, the moved ones included."""
    result = subprocess.run([sys.executable, "-m", "dv", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(name in result.stdout for name in ("shards", "check-data", "claims", "trajectory")), result.stdout


FIT = StandIn(parse_lightning, run_fit)
VALIDATE = StandIn(parse_lightning, run_dv())
DATA_PREP_BUILD = StandIn(parse_data_prep, run_data_prep_build)
SHARD_STATS = StandIn(parse_data_prep, run_data_prep_stats)
CLAIMS = StandIn(parse_help, elsewhere("tests/integration/test_claims.py::test_claims_pipeline_writes_every_table"))
CAPTION_PROBE = StandIn(
    parse_help, elsewhere("tests/unit/test_claims_captions.py::test_the_probe_sees_a_model_that_reads_the_caption")
)
TRAJECTORY = StandIn(
    parse_help, elsewhere("tests/unit/test_trajectory.py::test_table_has_one_row_per_start_and_is_seeded")
)
CHECK_DATA = StandIn(parse_help, elsewhere("tests/integration/test_fit.py::test_make_demo_end_to_end"))

COMMANDS: dict[str, StandIn] = {
    "dv fit": FIT,
    "srun dv fit": FIT,  # no SLURM here: the same command on 1 CPU process
    "torchrun -m dv fit": StandIn(parse_lightning, run_torchrun),
    "dv validate": VALIDATE,
    "dv test": VALIDATE,
    "dv export": StandIn(parse_dv, run_dv()),
    "dv info": StandIn(parse_dv, run_dv()),
    "dv sample": StandIn(parse_dv, run_dv("--steps", "2")),
    "dv bench": StandIn(
        parse_dv, run_dv("--steps", "1", "--warmup", "0", "--ddim-steps", "2", "--loader-batches", "2")
    ),
    "dv cache-latents": StandIn(parse_dv, run_dv("--workers", "0", "--accelerator", "cpu", "-q")),
    "dv app": StandIn(
        parse_dv, elsewhere("tests/integration/test_app.py::test_two_stage_video_decodes_and_dv_sample_reproduces_it")
    ),
    # The shard builder: `dv shards` is its new name.
    "python -m data_prep build": DATA_PREP_BUILD,
    "dv shards": DATA_PREP_BUILD,
    "python -m data_prep stats": SHARD_STATS,
    "dv shard-stats": SHARD_STATS,
    "dv --help": StandIn(dv_help, dv_help),
    "python -m lightning.pytorch.utilities.consolidate_checkpoint": StandIn(
        parse_help, elsewhere("tests/integration/test_distributed.py::test_fsdp_full_shard_trains_as_ddp_does")
    ),
    # Commands the Makefile runs (checked through `make -n`), under their old and new names.
    "python -m dv.claims": CLAIMS,
    "dv claims": CLAIMS,
    "python -m dv.claims.captions": CAPTION_PROBE,
    "dv probe-captions": CAPTION_PROBE,
    "python -m dv.diffusion.trajectory": TRAJECTORY,
    "dv trajectory": TRAJECTORY,
    "python -m dv.data.datamodule": CHECK_DATA,
    "dv check-data": CHECK_DATA,
    # make targets: expanded by `check`; their runs are the tests that run them at tiny size.
    "make demo": StandIn(expand_make, elsewhere("tests/integration/test_fit.py::test_make_demo_end_to_end")),
    "make test": StandIn(expand_make, elsewhere("tests/integration/test_docs_commands.py::test_documented_line_runs")),
    "make shards": StandIn(expand_make, elsewhere("tests/integration/test_docs_commands.py::run_data_prep_build")),
    "make claims": StandIn(
        expand_make, elsewhere("tests/integration/test_claims.py::test_claims_pipeline_writes_every_table")
    ),
    "make app": StandIn(
        expand_make,
        elsewhere("tests/integration/test_app.py::test_two_stage_video_decodes_and_dv_sample_reproduces_it"),
    ),
}


def stand_in(words: list[str]) -> StandIn | None:
    """The entry of the longest COMMANDS key that the line's command words start with."""
    words = command_words(words)
    keys = [k for k in COMMANDS if words[: len(k.split())] == k.split()]
    return COMMANDS[max(keys, key=len)] if keys else None


LINES = documented_lines()


def test_the_docs_show_commands():
    assert len(LINES) > 40 and any(line.file == "README.md" for line in LINES)
    assert any(line.words[0] == "torchrun" for line in LINES) and any(line.words[0] == "srun" for line in LINES)


def test_every_documented_line_has_a_stand_in():
    missing = [f"{line}: {line.text}" for line in LINES if stand_in(line.words) is None]
    assert not missing, "documented commands without a stand-in in COMMANDS:\n" + "\n".join(missing)


RENAMED = {
    "python -m dv.claims": "dv claims",
    "python -m dv.claims.captions": "dv probe-captions",
    "python -m dv.diffusion.trajectory": "dv trajectory",
    "python -m data_prep build": "dv shards",
    "python -m data_prep stats": "dv shard-stats",
    "python -m dv.data.datamodule": "dv check-data",
}
"""Old command -> new name (the old stays an alias): both spellings must find the same stand-in."""


def test_renamed_commands_keep_one_stand_in():
    for old, new in RENAMED.items():
        assert stand_in(old.split()) is stand_in(new.split()) is not None, (old, new)


@pytest.mark.parametrize("line", LINES, ids=str)
def test_documented_line_checks(line, capsys):
    stand_in(line.words).check(line.words, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("line", LINES, ids=str)
def test_documented_line_runs(line, world):
    stand_in(line.words).run(line.words, world)
