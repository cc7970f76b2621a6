"""The documented strategy lines (docs/distributed.md) work from the command line, as written."""

from __future__ import annotations

import pytest

from dv.cli import _recipe_to_config
from dv.lightning_cli import DVLightningCLI
from dv.strategies import DVFSDPStrategy
from tests.integration.test_distributed import checkpoint, dist_recipe, dv_fit
from tests.integration.test_fit import REPO, load

README_FORMS = [
    (["--trainer.strategy=dv_fsdp"], "FULL_SHARD"),
    (["--trainer.strategy=dv.strategies.DVFSDPStrategy"], "FULL_SHARD"),
    (["--trainer.strategy", "dv.strategies.DVFSDPStrategy"], "FULL_SHARD"),
    (
        ["--trainer.strategy=dv.strategies.DVFSDPStrategy", "--trainer.strategy.sharding_strategy=SHARD_GRAD_OP"],
        "SHARD_GRAD_OP",
    ),
    (["--trainer.strategy=dv_fsdp", "--trainer.strategy.sharding_strategy=SHARD_GRAD_OP"], "SHARD_GRAD_OP"),
]


def test_readme_lines_are_the_tested_forms():
    readme = (REPO / "docs" / "distributed.md").read_text()
    assert "--trainer.strategy=dv_fsdp" in readme and "--trainer.strategy.sharding_strategy=SHARD_GRAD_OP" in readme


@pytest.mark.parametrize("flags,sharding", README_FORMS)
def test_strategy_flags_build_dv_fsdp(flags, sharding):
    """The Trainer that `dv fit --recipe recipes/dreamvideo.yaml FLAGS` builds, on 2 CPU processes."""
    args = _recipe_to_config(
        [
            "fit",
            "--recipe",
            str(REPO / "recipes" / "dreamvideo.yaml"),
            *flags,
            "--trainer.accelerator=cpu",
            "--trainer.devices=2",
            "--trainer.precision=32-true",
        ]
    )
    args = [a for a in args[1:] if not a.startswith("--weights_only")]  # no subcommand: only the classes are built
    cli = DVLightningCLI(
        run=False, args=args, subclass_mode_model=True, subclass_mode_data=True, parser_kwargs={"exit_on_error": False}
    )
    assert isinstance(cli.trainer.strategy, DVFSDPStrategy)
    assert cli.trainer.strategy.sharding_strategy.name == sharding


@pytest.mark.slow
def test_readme_shard_grad_op_line_trains_on_two_processes(tmp_path, pans_shards):
    """The README's SHARD_GRAD_OP line, with the tiny DreamVideo recipe on 2 CPU processes (gloo)."""
    recipe = dist_recipe(tmp_path, pans_shards, "sgo_cli", "ddp", devices=2)
    dv_fit(
        recipe,
        "--trainer.max_steps=1",
        "--trainer.strategy=dv.strategies.DVFSDPStrategy",
        "--trainer.strategy.sharding_strategy=SHARD_GRAD_OP",
        "--trainer.strategy.state_dict_type=full",
    )
    ckpt = load(checkpoint(tmp_path, "sgo_cli", 1))
    assert ckpt["global_step"] == 1 and ckpt["state_dict"]
