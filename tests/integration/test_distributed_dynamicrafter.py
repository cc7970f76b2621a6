"""DynamiCrafter-style training under FSDP: its checkpoint names survive the wrapping, and 2 CPU processes train and
resume it exactly (the DreamVideo counterparts are in test_distributed.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from dv.recipe import build_model
from dv.strategies import DVFSDPStrategy
from tests.integration.test_distributed import (
    ADAM_EPS,
    FSDP,
    assert_same_training_state,
    checkpoint,
    consolidated,
    dv_fit,
)
from tests.integration.test_fit import tiny_recipe
from tests.tiny import tiny_dynamicrafter


def test_dynamicrafter_checkpoint_names_survive_fsdp_wrapping():
    torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        module = tiny_dynamicrafter(ema_decay=0.9)
        names = [n for n, _ in module.trainable_parameters()]
        assert any(n.startswith("branch.projection.") for n in names) and any("conv_in.reference" in n for n in names)
        DVFSDPStrategy(parallel_devices=[torch.device("cpu")])._setup_model(module)
        wrapped = [n for n, _ in module.trainable_parameters()]
        assert wrapped == names, "plain names (as the checkpoint keeps them) under FSDP units"
        assert module.ema.names == names
    finally:
        torch.distributed.destroy_process_group()


def dc_recipe(tmp_path: Path, shards: Path, name: str) -> Path:
    """The tiny DynamiCrafter recipe on 2 CPU processes under FSDP (FULL_SHARD, shard folders): random backbone, one
    batch per epoch and a checkpoint at the end of each, no validation."""
    path = tiny_recipe(
        tmp_path, shards, name, source="recipes/demo-dynamicrafter.yaml", max_steps=2, devices=2, limit_val_batches=0
    )
    recipe = yaml.safe_load(path.read_text())
    recipe["data"]["init_args"]["samples_per_epoch"] = 2  # per rank: one batch of 2
    recipe["trainer"]["strategy"] = {
        **FSDP,
        "init_args": {"sharding_strategy": "FULL_SHARD", "state_dict_type": "sharded"},
    }
    callbacks = [c for c in recipe["trainer"]["callbacks"] if not c["class_path"].endswith("VideoValidation")]
    callbacks[0]["init_args"] = {"every_n_train_steps": 1, "save_top_k": -1}
    recipe["trainer"]["callbacks"] = callbacks
    model = recipe["model"]["init_args"]
    model["backbone"]["unet_weights"] = []
    model["projection"]["num_frames"] = 4  # the clips tiny_recipe loads
    model["optim"].update(warmup_steps=1, eps=ADAM_EPS)  # weights move by ~lr from the first step
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_dynamicrafter_trains_and_resumes_under_two_process_fsdp(tmp_path, pans_shards):
    recipe = dc_recipe(tmp_path, pans_shards, "dc")
    dv_fit(recipe)
    resumed = dc_recipe(tmp_path, pans_shards, "dc_resumed")
    dv_fit(resumed, "--ckpt_path", str(checkpoint(tmp_path, "dc", 1)))
    module = build_model(str(recipe))
    module.configure_model()
    names = [n for n, _ in module.trainable_parameters()]
    whole, again = consolidated(checkpoint(tmp_path, "dc", 2)), consolidated(checkpoint(tmp_path, "dc_resumed", 2))
    assert any(n.startswith("branch.projection.") for n in names) and not any("image_encoder" in n for n in names)
    assert_same_training_state(again, whole, names)
    first = consolidated(checkpoint(tmp_path, "dc", 1))["state_dict"]
    assert max((first[n] - whole["state_dict"][n]).abs().max().item() for n in names) > 1e-4, "the weights moved"
