"""Same recipe, same seed, same machine and thread count: bit-identical weights and logged losses.

The runs go through a validation pass (val/loss at each epoch's end), VideoValidation sampling during training, and
an epoch boundary (the loader's resampling of a new epoch). A third run without the sampling must train the same
weights: validation sampling must not disturb what training draws.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.integration.test_fit import fit, load, tiny_recipe

BUCKETS = "train/loss_t"


def recipe(tmp_path: Path, shards: Path, name: str, sample_every: int) -> Path:
    """The tiny DreamVideo recipe: 2 epochs of 2 steps, val/loss at each epoch end, sampling every `sample_every` steps."""
    path = tiny_recipe(tmp_path, shards, name, source="recipes/demo.yaml", max_steps=4)
    data = yaml.safe_load(path.read_text())
    data["data"]["init_args"]["num_workers"] = 1  # the worker path: each epoch's stream is seeded in the worker
    for callback in data["trainer"]["callbacks"]:
        if callback["class_path"].endswith("VideoValidation"):
            callback["init_args"].update(
                every_n_steps=sample_every, num_videos=2, steps=2, modes=["ti2v"], log_videos=1
            )
    data["model"]["init_args"]["backbone"]["unet_weights"] = []
    path.write_text(yaml.safe_dump(data))
    return path


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run's TensorBoard events: tag -> [(step, value)]."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, pans_shards):
    tmp = tmp_path_factory.mktemp("determinism")
    for name, every in (("a", 2), ("b", 2), ("no_sampling", 0)):
        fit(recipe(tmp, pans_shards, name, every))
    return {name: tmp / "runs" / name / "latest" for name in ("a", "b", "no_sampling")}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] == 4
    assert a["state_dict"].keys() == b["state_dict"].keys() and a["state_dict"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
        assert torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]), k
    for i, state in a["optimizer_states"][0]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer_states"][0]["state"][i]["exp_avg_sq"]), i


def test_two_runs_are_bit_identical(runs):
    assert_same_weights(load(runs["a"] / "checkpoints" / "last.ckpt"), load(runs["b"] / "checkpoints" / "last.ckpt"))
    a, b = scalars(runs["a"]), scalars(runs["b"])
    losses = [tag for tag in a if "loss" in tag]
    assert "train/loss" in losses and "val/loss" in losses and any(t.startswith("val_ti2v/") for t in a)
    for tag in losses:
        assert a[tag] == b[tag], tag
    assert len(a["val/loss"]) == 2, "a validation pass at each of the 2 epochs' ends"


def test_validation_sampling_does_not_disturb_training(runs):
    assert_same_weights(
        load(runs["a"] / "checkpoints" / "last.ckpt"), load(runs["no_sampling"] / "checkpoints" / "last.ckpt")
    )
    a, c = scalars(runs["a"]), scalars(runs["no_sampling"])
    assert a["train/loss"] == c["train/loss"] and a["val/loss"] == c["val/loss"]


def test_empty_loss_buckets_are_not_logged(runs):
    """A step logs at most one bucket per sample (batch 2): an empty bucket never repeats an older step's value."""
    logged = scalars(runs["a"])
    per_step: dict[int, int] = {}
    for tag, points in logged.items():
        if tag.startswith(BUCKETS):
            for step, _ in points:
                per_step[step] = per_step.get(step, 0) + 1
    assert len(per_step) == 4 and all(1 <= n <= 2 for n in per_step.values()), per_step
