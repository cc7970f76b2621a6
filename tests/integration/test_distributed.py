"""`dv fit` on 2 CPU processes (gloo): DDP against one process, FSDP against DDP, sharded checkpoints on 1 process.

How the comparisons are made honest: every rank draws its own noise, timesteps and dropout masks
(seeded by (seed, step, batch, rank)), so no single-process `dv fit` makes the same draws as a 2-rank
one. What can match exactly, and is compared:
- DDP's first step against one process computing the loss of the same global batch (both ranks'
  samples, each with the draws its rank made) with the module's own functions: the clipped gradient
  (read back from AdamW's first moment) and the updated weights agree to float32 rounding.
- FSDP against DDP with the same 2 ranks: same data, same draws, so weights, EMA and optimizer
  states after 2 steps agree to float32 rounding (here they come out bitwise equal).
- A 2-rank FSDP run resumed from DDP's one-file checkpoint against the uninterrupted DDP run (every
  checkpoint ends an epoch, so a resumed run streams what the uninterrupted one streamed).
- A 2-rank FSDP shard folder resumed on 1 process against the 2-rank DDP checkpoint of that step
  resumed on 1 process: the continuations see the same data and draws and must agree.
The recipe is the tiny DreamVideo one (frozen text encoder, autoencoder and spatial U-Net layers;
trainable temporal layers and retention branch), which is what DDP without find_unused_parameters
and FSDP with mixed frozen/trainable units must cope with.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.plugins import MixedPrecision
from torch.utils.data import DataLoader, IterableDataset

from dv.cli import main as dv_main
from dv.recipe import build_datamodule, build_model
from tests.integration.test_fit import load, tiny_recipe
from tests.tiny import tiny_dreamvideo
from tests.unit.test_models import make_batch

REPO = Path(__file__).resolve().parents[2]
FSDP = {"class_path": "dv.strategies.DVFSDPStrategy"}
# float32 rounding of a sum over ranks taken in another order, through one AdamW step of lr 1e-3
# (whose first update is about lr * sign(gradient)): far below the 1e-3 each weight moves.
ATOL = 1e-6
# AdamW's step g / (|g| + eps) changes by up to lr * dg / eps for a change dg of the gradient. Gradients
# summed in another order differ by ~1e-10 (elements that cancel to ~1e-9 relative to their tensor's
# largest, e.g. temporal attention keys whose softmax hardly moves): with the default eps of 1e-8 that
# is up to lr, with 1e-5 it is ~1e-8, under ATOL, while gradients of 1e-4 and more still step by ~lr.
ADAM_EPS = 1e-5


def dist_recipe(tmp_path: Path, shards: Path, name: str, strategy, devices: int = 2) -> Path:
    """The tiny DreamVideo recipe on `devices` CPU processes: random backbone, one batch per epoch and a
    checkpoint at the end of each, no validation."""
    path = tiny_recipe(
        tmp_path, shards, name, source="recipes/demo.yaml", max_steps=2, devices=devices, limit_val_batches=0
    )
    recipe = yaml.safe_load(path.read_text())
    recipe["data"]["init_args"]["samples_per_epoch"] = 2  # per rank: one batch of 2
    recipe["trainer"]["strategy"] = strategy
    callbacks = [c for c in recipe["trainer"]["callbacks"] if not c["class_path"].endswith("VideoValidation")]
    callbacks[0]["init_args"] = {"every_n_train_steps": 1, "save_top_k": -1}
    recipe["trainer"]["callbacks"] = callbacks
    model = recipe["model"]["init_args"]
    model["backbone"]["unet_weights"] = []
    model["optim"]["warmup_steps"] = 1  # full lr from the first step: weights move by ~1e-3, far above rounding
    model["optim"]["eps"] = ADAM_EPS
    path.write_text(yaml.safe_dump(recipe))
    return path


def dv_fit(recipe: Path, *extra: str) -> None:
    """`dv fit` in a fresh interpreter, as a user runs it; Lightning starts the other ranks from its command line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dv", "fit", "--recipe", str(recipe), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]


def checkpoint(tmp_path: Path, name: str, step: int) -> Path:
    """The checkpoint (file or shard folder) written after `step` steps, at the end of epoch step - 1."""
    return tmp_path / "runs" / name / "latest" / "checkpoints" / f"epoch={step - 1}-step={step}.ckpt"


def consolidated(folder: Path) -> dict:
    """A sharded checkpoint folder made one file by Lightning's tool (the README's command), loaded."""
    subprocess.run(
        [sys.executable, "-m", "lightning.pytorch.utilities.consolidate_checkpoint", str(folder)],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    return load(Path(f"{folder}.consolidated"))


def assert_same_training_state(a: dict, b: dict, names: list[str]) -> None:
    """Trainable weights, EMA, optimizer moments and counters agree; `names` maps optimizer indices to weights."""
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys() == set(names)
    for k in names:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=ATOL, msg=k)
        torch.testing.assert_close(a["ema"]["shadow"][k], b["ema"]["shadow"][k], rtol=0, atol=ATOL, msg=k)
    assert a["ema"]["updates"] == b["ema"]["updates"] == a["global_step"]
    states = [c["optimizer_states"][0]["state"] for c in (a, b)]
    for i, k in enumerate(names):
        # A one-file checkpoint numbers states as the optimizer does; a consolidated shard folder names them.
        sa, sb = (s[i] if i in s else s[k] for s in states)
        assert int(sa["step"]) == int(sb["step"]) == a["global_step"]
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[moment].reshape(-1), sb[moment].reshape(-1), rtol=1e-5, atol=1e-9, msg=k)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, pans_shards):
    """A 2-process DDP run of 2 steps (checkpoints at steps 1 and 2), and its trainable weights' names."""
    tmp = tmp_path_factory.mktemp("ddp")
    recipe = dist_recipe(tmp, pans_shards, "ddp", "ddp")
    dv_fit(recipe)
    module = build_model(str(recipe))
    module.configure_model()
    names = [n for n, _ in module.trainable_parameters()]  # the optimizer's order, which numbers its states
    return SimpleNamespace(tmp=tmp, recipe=recipe, names=names, step=lambda s: checkpoint(tmp, "ddp", s))


def one_process_first_step(recipe: Path):
    """The first training step on the 2 ranks' global batch, computed in one process with the module's own functions."""
    torch.manual_seed(0)  # the recipe's seed_everything, which the branch's random initialisation draws from
    module = build_model(str(recipe))
    module.configure_model()
    module.train()
    batches = []
    for rank in (0, 1):
        datamodule = build_datamodule(str(recipe))  # a fresh one per rank: each pass moves a datamodule's epoch on
        datamodule.setup("fit", rank=rank, world_size=2)
        batches.append(next(iter(datamodule.train_dataloader())))
    per_sample = []
    for rank, batch in enumerate(batches):
        # step_seed reads the rank from the trainer: this stand-in tells it which rank's draws to make,
        # in training_step's order (dropout masks from the global RNG, then conditions, t and noise).
        module._trainer = SimpleNamespace(global_rank=rank)
        torch.manual_seed(module.step_seed(0, 0, 1))
        losses, t = module.diffusion_loss(batch, module.step_generator(0, 0), drop=True)
        per_sample.append(
            losses * module.loss_weights(t)
        )  # training_step's loss (Min-SNR weights, where the recipe has them)
    module._trainer = None
    torch.cat(per_sample).mean().backward()  # equal per-rank batches: the mean of the ranks' means
    named = module.trainable_parameters()
    torch.nn.utils.clip_grad_norm_([p for _, p in named], max_norm=1.0)  # the recipe's gradient_clip_val
    grads = {n: p.grad.clone() for n, p in named}
    optimizer = module.configure_optimizers()["optimizer"]  # held: its LR scheduler only keeps a weak reference
    optimizer.step()
    keys = [[m["key"] for m in b["meta"]] for b in batches]
    return keys, grads, {n: p.detach().clone() for n, p in named}, [n for n, _ in named]


def test_ddp_step_equals_one_process_on_the_global_batch(ddp):
    keys, grads, weights, names = one_process_first_step(ddp.recipe)
    # Each rank resamples shards on its own stream (seeded by rank): different batches, not disjoint sets.
    assert keys[0] != keys[1], f"the ranks read the same batch: {keys}"
    ckpt = load(ddp.step(1))
    assert set(ckpt["state_dict"]) == set(names), "the checkpoint holds exactly the trainable weights"
    assert any(n.startswith("branch.") for n in names) and any("temp_" in n for n in names)
    moments = ckpt["optimizer_states"][0]["state"]
    beta1 = ckpt["optimizer_states"][0]["param_groups"][0]["betas"][0]
    for i, n in enumerate(names):
        # AdamW's first moment after one step is (1 - beta1) * gradient: DDP's averaged, clipped gradient.
        torch.testing.assert_close(moments[i]["exp_avg"] / (1 - beta1), grads[n], rtol=1e-4, atol=1e-8, msg=n)
        torch.testing.assert_close(ckpt["state_dict"][n], weights[n], rtol=0, atol=ATOL, msg=n)
    after = load(ddp.step(2))["state_dict"]
    moved = max((ckpt["state_dict"][n] - after[n]).abs().max().item() for n in names)
    assert moved > 100 * ATOL, "the weights must move more than the tolerance for the comparison to mean anything"


@pytest.fixture(scope="module")
def fsdp_sharded(ddp, pans_shards):
    """The DDP run's twin under FULL_SHARD with sharded checkpoints (a folder per checkpoint)."""
    strategy = {**FSDP, "init_args": {"sharding_strategy": "FULL_SHARD", "state_dict_type": "sharded"}}
    dv_fit(dist_recipe(ddp.tmp, pans_shards, "fsdp", strategy))
    return lambda step: checkpoint(ddp.tmp, "fsdp", step)


@pytest.mark.slow
def test_fsdp_full_shard_trains_as_ddp_does(ddp, fsdp_sharded):
    folder = fsdp_sharded(2)
    assert folder.is_dir() and len(list(folder.glob("*.distcp"))) == 2, "one shard file per rank"
    assert_same_training_state(consolidated(folder), load(ddp.step(2)), ddp.names)
    # The consolidated file is a dv checkpoint: `dv export` takes it.
    out = ddp.tmp / "fsdp.safetensors"
    assert dv_main(["export", "--recipe", str(ddp.recipe), "--ckpt", f"{folder}.consolidated", "--out", str(out)]) == 0


@pytest.mark.slow
def test_fsdp_shard_grad_op_resumes_a_ddp_checkpoint_and_writes_one_like_it(ddp, pans_shards):
    strategy = {**FSDP, "init_args": {"sharding_strategy": "SHARD_GRAD_OP", "state_dict_type": "full"}}
    dv_fit(dist_recipe(ddp.tmp, pans_shards, "sgo", strategy), "--ckpt_path", str(ddp.step(1)))
    ckpt = load(checkpoint(ddp.tmp, "sgo", 2))  # one file, its optimizer states numbered as DDP numbers them
    assert_same_training_state(ckpt, load(ddp.step(2)), ddp.names)


@pytest.mark.slow
def test_two_process_fsdp_checkpoint_resumes_on_one_process(ddp, fsdp_sharded, pans_shards):
    one = {**FSDP, "init_args": {"state_dict_type": "full"}}
    dv_fit(dist_recipe(ddp.tmp, pans_shards, "fsdp1", one, devices=1), "--ckpt_path", str(fsdp_sharded(1)))
    single = dist_recipe(ddp.tmp, pans_shards, "ddp1", "auto", devices=1)
    assert dv_main(["fit", "--recipe", str(single), "--ckpt_path", str(ddp.step(1))]) == 0  # in-process: no launcher
    resumed = load(checkpoint(ddp.tmp, "fsdp1", 2))
    assert resumed["global_step"] == 2
    assert_same_training_state(resumed, load(checkpoint(ddp.tmp, "ddp1", 2)), ddp.names)


class _Repeat(IterableDataset):
    """The same batch forever."""

    def __iter__(self):
        while True:
            yield make_batch(2, 4, 16)


def _grad_norm_after_one_step(**trainer) -> tuple[float, pl.LightningModule]:
    torch.manual_seed(0)
    module = tiny_dreamvideo(ema_decay=0.9)
    fit = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        **trainer,
    )
    fit.fit(module, DataLoader(_Repeat(), batch_size=None))
    return fit.callback_metrics["train/grad_norm"].item(), module


def test_grad_norm_and_ema_see_unscaled_gradients_under_16_mixed():
    # Lightning refuses 16-mixed on CPU by name (it picks bf16); its plugin, given explicitly, runs the
    # fp16 autocast and the GradScaler on CPU, as on a GPU.
    plain, _ = _grad_norm_after_one_step(precision="32-true")
    scaler = torch.amp.GradScaler("cpu")
    scaled, module = _grad_norm_after_one_step(plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
    assert scaler.get_scale() > 1, "the loss was scaled"
    assert scaled == pytest.approx(plain, rel=1e-3), "train/grad_norm is logged after unscaling"
    assert module.ema.updates == 1
    moved = [(s - p).abs().max() for s, p in zip(module.ema.shadow, module.ema.params)]
    assert max(moved) > 0, "the EMA lags the stepped weights"


def test_the_recipes_fsdp_line_builds_the_strategy():
    # The commented alternative in recipes/dreamvideo.yaml, uncommented, is what jsonargparse instantiates.
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import Strategy

    from dv.errors import ConfigError
    from dv.strategies import FSDP_UNITS, DVFSDPStrategy

    lines = (REPO / "recipes" / "dreamvideo.yaml").read_text().splitlines()
    start = lines.index("  #   strategy:")
    fragment = "\n".join(line.replace("#", "", 1) for line in lines[start : start + 3])
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Strategy, "strategy")
    strategy = parser.instantiate(parser.parse_object(yaml.safe_load(fragment.replace("    ", "", 1)))).strategy
    assert isinstance(strategy, DVFSDPStrategy) and strategy.sharding_strategy.name == "FULL_SHARD"
    assert {c.__name__ for c in strategy.kwargs["auto_wrap_policy"]._module_classes} == set(FSDP_UNITS)
    assert strategy.ignored == ("backbone.autoencoder", "backbone.text") and strategy.kwargs["use_orig_params"]
    with pytest.raises(ConfigError, match="UNet3DBlock"):
        DVFSDPStrategy(wrap=["UNet3DBlock"])


def test_fsdp_wraps_blocks_and_temporal_layers_and_leaves_the_frozen_encoders_alone():
    from torch.distributed.fsdp import FullyShardedDataParallel

    from dv.strategies import DVFSDPStrategy, unit_classes

    torch.distributed.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        module = tiny_dreamvideo(ema_decay=0.9)
        expected = [m for m in module.modules() if isinstance(m, tuple(unit_classes()))]
        names = [n for n, _ in module.trainable_parameters()]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            wrapped = DVFSDPStrategy(parallel_devices=[torch.device("cpu")])._setup_model(module)
        # FSDP warns of any unit holding frozen and trainable weights (it would keep gradients for both).
        assert not [w for w in caught if "requires_grad=True and False" in str(w.message)]
        fsdp = [m for m in wrapped.modules() if isinstance(m, FullyShardedDataParallel)]
        assert fsdp[0].module is module and {id(m.module) for m in fsdp[1:]} == {id(m) for m in expected}
        assert len(expected) > 8, "5 U-Net blocks and 3 branch blocks, and the temporal layers in them"
        assert [n for n, _ in module.trainable_parameters()] == names, "checkpoint names survive the wrapping"
        # Each unit's FlatParameter lists the original parameters it manages (use_orig_params).
        sharded = {id(p) for unit in fsdp for flat in unit.params for p in flat._params}
        frozen = [*module.backbone.autoencoder.parameters(), *module.backbone.text.parameters()]
        assert frozen and not any(id(p) in sharded or p.requires_grad for p in frozen), "encoders left alone"
        assert all(s.shape == p.shape for s, p in zip(module.ema.shadow, module.ema.params)), "EMA follows the views"
    finally:
        torch.distributed.destroy_process_group()
