"""Lightning's FSDP fitted to dv modules: block-wise units, frozen encoders left out, trainable-only checkpoints.

`dv fit` switches strategy with one recipe line::

    trainer:
      strategy: ddp                                   # every GPU holds the whole model
      strategy:                                       # or: shard it
        class_path: dv.strategies.DVFSDPStrategy
        init_args: {sharding_strategy: FULL_SHARD}    # or SHARD_GRAD_OP

What this adds to `lightning.pytorch.strategies.FSDPStrategy` (FSDP1, `use_orig_params=True`, so
frozen and trainable parameters may share one FSDP unit):

- one FSDP unit per U-Net block and per retention-branch block (diffusers' unet_3d_blocks classes),
  and one per temporal layer inside them, so that frozen and trainable weights sit in separate units;
- the frozen autoencoder and text encoder are `ignored_modules`: never sharded, never given gradients;
- gradient clipping by norm through the root FSDP module (Lightning's FSDP plugin refuses it);
- checkpoints keep what T2VModule keeps (its trainable weights and their EMA, not the frozen billions),
  as one file (`state_dict_type: full`) or as a DCP folder (`sharded`, the default) that resumes on
  any number of GPUs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed.checkpoint as distributed_checkpoint
from lightning.fabric.strategies.fsdp import (
    _get_full_state_dict_context,
    _get_sharded_state_dict_context,
    _move_torchmetrics_to_device,
    _setup_activation_checkpointing,
)
from lightning.fabric.strategies.model_parallel import _load_raw_module_state
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.plugins.precision.fsdp import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch.distributed.checkpoint.optimizer import load_sharded_optimizer_state_dict
from torch.distributed.fsdp import (
    FullOptimStateDictConfig,
    FullStateDictConfig,
    OptimStateKeyType,
    ShardingStrategy,
    StateDictType,
)
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from dv.atomic import atomic_write, replace_folder
from dv.errors import ConfigError
from dv.models.trainable import EMA_KEY, WRAPPER_PREFIXES, check_saved, ema_entry, unwrapped_name

__all__ = ["DVFSDPStrategy", "WRAPPER_PREFIXES", "total_grad_norm", "unit_classes", "unwrapped_name"]

FSDP_UNITS = {
    "CrossAttnDownBlock3D": "diffusers.models.unets.unet_3d_blocks",
    "DownBlock3D": "diffusers.models.unets.unet_3d_blocks",
    "UNetMidBlock3DCrossAttn": "diffusers.models.unets.unet_3d_blocks",
    "CrossAttnUpBlock3D": "diffusers.models.unets.unet_3d_blocks",
    "UpBlock3D": "diffusers.models.unets.unet_3d_blocks",
    "TransformerTemporalModel": "diffusers.models.transformers.transformer_temporal",
    "TemporalConvLayer": "diffusers.models.resnet",
}
"""diffusers classes that become FSDP units, by name: the U-Net's (and the retention branch's) blocks and,
inside them, the temporal layers. A unit that mixed frozen and trainable weights would hold gradients for
its frozen ones too; with the temporal layers apart, the U-Net's block units are wholly frozen."""

FROZEN_ENCODERS = ("backbone.autoencoder", "backbone.text")
"""Submodules of a dv module that FSDP leaves alone: they run under no_grad and never train."""


def unit_classes(names: tuple[str, ...] | list[str] = tuple(FSDP_UNITS)) -> set[type[torch.nn.Module]]:
    """The classes of FSDP_UNITS of these names (an FSDP auto-wrap policy)."""
    import importlib

    unknown = [n for n in names if n not in FSDP_UNITS]
    if unknown:
        raise ConfigError(f"strategy wrap names unknown classes {unknown}; choose from {list(FSDP_UNITS)}")
    return {getattr(importlib.import_module(FSDP_UNITS[n]), n) for n in names}


class _NormClippingFSDPPrecision(FSDPPrecision):
    """FSDPPrecision that clips by the global gradient norm, through the root FSDP module."""

    def __init__(self, plugin: FSDPPrecision, strategy: DVFSDPStrategy) -> None:
        super().__init__(plugin.precision)
        # Set after: FSDPPrecision's check of a scaler given to __init__ reads self.precision before setting it.
        self.scaler = plugin.scaler
        self._strategy = strategy

    def clip_grad_by_norm(self, optimizer, clip_val) -> None:
        """Clip every rank's gradient shards by the norm of the whole (sharded) gradient."""
        self._strategy.model.clip_grad_norm_(clip_val)


class DVFSDPStrategy(FSDPStrategy):
    """FSDP for dv's LightningModules (T2VModule, DreamVideoModule): see the module docstring."""

    def __init__(
        self,
        sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
        state_dict_type: Literal["full", "sharded"] = "sharded",
        wrap: list[str] | None = None,
        ignored: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            sharding_strategy: FULL_SHARD shards weights, gradients and optimizer states (least memory);
                SHARD_GRAD_OP keeps each rank's weights whole between forward and backward (less traffic);
                NO_SHARD is DDP; HYBRID_SHARD shards within a node and replicates across nodes.
            state_dict_type: 'sharded' writes each checkpoint as a folder of per-rank shards that resumes
                on any number of GPUs; 'full' gathers the trainable weights into one file on rank 0.
            wrap: names of the diffusers classes that become FSDP units (default: all of FSDP_UNITS).
            ignored: submodule paths FSDP leaves unsharded and untouched (default: the frozen autoencoder
                and text encoder); they are moved to the device as they are.
            **kwargs: further FSDPStrategy / FullyShardedDataParallel arguments (e.g. cpu_offload).
        """
        if kwargs.get("auto_wrap_policy") is None:  # jsonargparse hands FSDPStrategy's own default, None, on
            kwargs["auto_wrap_policy"] = unit_classes(tuple(wrap or FSDP_UNITS))
        super().__init__(sharding_strategy=sharding_strategy, state_dict_type=state_dict_type, **kwargs)
        self.ignored = tuple(FROZEN_ENCODERS if ignored is None else ignored)

    # ---- precision: clipping by norm --------------------------------------------------------------------------
    @property
    def precision_plugin(self) -> FSDPPrecision:
        return FSDPStrategy.precision_plugin.fget(self)

    @precision_plugin.setter
    def precision_plugin(self, plugin) -> None:
        if type(plugin) is FSDPPrecision:
            plugin = _NormClippingFSDPPrecision(plugin, self)
        FSDPStrategy.precision_plugin.fset(self, plugin)

    @property
    def shards_gradients(self) -> bool:
        """True when each rank holds only a shard of each gradient (their norms must be combined)."""
        return self.sharding_strategy != ShardingStrategy.NO_SHARD

    @property
    def gradient_replicas(self) -> int:
        """How many ranks hold each gradient shard: the replicas of HYBRID_SHARD (by default one per node), else one."""
        if self.sharding_strategy not in (ShardingStrategy.HYBRID_SHARD, ShardingStrategy._HYBRID_SHARD_ZERO2):
            return 1
        mesh = self.kwargs.get("device_mesh")  # (replicas, shard size), made a DeviceMesh by setup_environment
        return mesh.size(0) if mesh is not None else self.num_nodes

    # ---- wrapping --------------------------------------------------------------------------------------------
    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Wrap the module in FSDP units (see FSDP_UNITS), leaving the `ignored` submodules out."""
        if isinstance(model, FSDP):  # e.g. validate after fit in one process
            return model
        ignored = [model.get_submodule(name) for name in self.ignored if _has_submodule(model, name)]
        for module in ignored:
            module.to(self.root_device)  # FSDP moves only what it manages
        # Lightning's FSDPStrategy passes device_id=root_device.index, which is None on CPU, where FSDP
        # then refuses to run; the device itself works on both (CPU: gloo, as in the tests).
        wrapped = FSDP(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,
            ignored_modules=ignored,
            **self.kwargs,
        )
        _move_torchmetrics_to_device(wrapped, self.root_device)
        _setup_activation_checkpointing(wrapped, self._activation_checkpointing_kwargs)
        ema = getattr(model, "ema", None)
        if ema is not None:
            # The trainable parameters are now views of this rank's shard: the EMA follows them there.
            # Nothing was trained or restored yet (checkpoints load after setup), so shadow == weights.
            ema.shadow = [p.detach().clone() for p in ema.params]
        return wrapped

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        """Write the checkpoint T2VModule made (trainable weights only) as one file or a folder of shards."""
        ema = getattr(self.lightning_module, "ema", None)
        if ema is not None and EMA_KEY in checkpoint:
            # The module wrote this rank's EMA shards; the checkpoint needs them gathered (full) or as
            # sharded tensors (sharded), exactly as the weights are: take them as weights.
            with ema.swapped():
                values = self.lightning_module_state_dict()
            checkpoint[EMA_KEY]["shadow"] = {n: values[n] for n in ema.names if n in values}
        if self._state_dict_type == "full":
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(filepath))
        # Every rank writes its shards into a staging folder beside `path`; once all have, rank 0 puts it in the
        # place of the old checkpoint in one step (dv.atomic.replace_folder). Writing into the old folder, a kill
        # or a full disk mid-save left a mix of two steps' shards and no whole checkpoint.
        staging = path.with_name(f".{path.name}.tmp")
        if self.global_rank == 0 and staging.exists():  # a killed save's
            shutil.rmtree(staging)
        self.barrier("dv_checkpoint_staging")
        staging.mkdir(parents=True, exist_ok=True)

        # Lightning's layout ("model", "optimizer_0", meta.pt), plus the EMA whole (decay, updates, shadow)
        # among the shards, so that lightning.pytorch.utilities.consolidate_checkpoint yields a dv checkpoint.
        state = {"model": checkpoint.pop("state_dict")}
        if EMA_KEY in checkpoint:
            state[EMA_KEY] = checkpoint.pop(EMA_KEY)
        state.update({f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))})
        distributed_checkpoint.save(state, checkpoint_id=staging)
        if self.global_rank == 0:
            with atomic_write(staging / _METADATA_FILENAME) as tmp:
                torch.save(checkpoint, tmp)
        self.barrier("dv_checkpoint_written")
        if self.global_rank == 0:
            replace_folder(staging, path)
        self.barrier("dv_checkpoint_replaced")

    def optimizer_state(self, optimizer) -> dict[str, Any]:
        """The optimizer state; in a full checkpoint keyed as a plain optimizer keys it (as DDP writes it)."""
        if self._state_dict_type == "sharded":
            return super().optimizer_state(optimizer)
        optimizer = getattr(optimizer, "_optimizer", optimizer)
        # offload_to_cpu on a CPU device leaves every state of a parameter a view of one reused gather
        # buffer (torch's .cpu() copies nothing there), so exp_avg came out equal to exp_avg_sq.
        offload = self.root_device.type != "cpu"
        with FSDP.state_dict_type(
            self.model,
            StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=offload, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=True),
        ):
            state = FSDP.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:
                # Lightning numbers the states by position in model.parameters(), frozen ones included;
                # numbered by position in the optimizer, a full checkpoint resumes under DDP and back.
                state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model, optim=optimizer)
        return state

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        """Restore trainable weights, EMA and optimizer states from a file or a shard folder of any world size."""
        path = Path(self.broadcast(checkpoint_path))
        if path.is_dir():
            saved = distributed_checkpoint.FileSystemReader(path).read_metadata().state_dict_metadata
            weights = {k.removeprefix("model.") for k in saved if k.startswith("model.")}
            self._check_trainable(weights, path)
            ema = (
                self._load_sharded_ema(path) if self._ema and any(k.startswith(f"{EMA_KEY}.") for k in saved) else None
            )
            checkpoint = self._load_sharded(path, weights, weights_only)
        else:
            # weights_only=True whatever the caller asks: dv checkpoints hold plain data only, never pickled objects.
            checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            self._check_trainable(set(checkpoint["state_dict"]), path)
            ema = self._load_full_ema(checkpoint[EMA_KEY]) if self._ema and EMA_KEY in checkpoint else None
            self._load_full(checkpoint)
        if ema is not None:
            checkpoint[EMA_KEY] = ema
        return checkpoint

    def _check_trainable(self, saved: set[str], path: Path) -> None:
        """A checkpoint must hold every trainable weight of the recipe."""
        trainable = {unwrapped_name(n) for n, p in self.model.named_parameters() if p.requires_grad}
        check_saved(trainable, saved, str(path), whole=False)

    @property
    def _ema(self):
        """The module's TrainableEMA, if it keeps one."""
        return getattr(self.lightning_module, "ema", None)

    def _ema_from_weights(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Copy the weights (which now hold the EMA) into this rank's EMA shadows; the trained weights load next."""
        ema = self._ema
        with torch.no_grad():
            for shadow, p in zip(ema.shadow, ema.params):
                shadow.copy_(p)
        # T2VModule.on_load_checkpoint then reads this rank's shadows back, and the update count.
        return ema_entry(entry["decay"], entry["updates"], ema.names, ema.shadow)

    def _load_full_ema(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Load a one-file checkpoint's EMA into the shadows (through the weights, which FSDP knows how to shard)."""
        _load_raw_module_state(dict(entry["shadow"]), self.model, world_size=self.world_size, strict=False)
        return self._ema_from_weights(entry)

    def _load_sharded_ema(self, path: Path) -> dict[str, Any]:
        """Load a shard folder's EMA into the shadows (through the weights, resharded to this world size)."""
        names = set(self._ema.names)
        with _get_sharded_state_dict_context(self.model):
            shadow = {k: v for k, v in self.model.state_dict().items() if k in names}
            state = {EMA_KEY: ema_entry(0.0, 0, list(shadow), list(shadow.values()))}
            distributed_checkpoint.load(state, checkpoint_id=path)
            self.model.load_state_dict(state[EMA_KEY]["shadow"], strict=False)
        return self._ema_from_weights(state[EMA_KEY])

    def _fitting(self) -> bool:
        return self.lightning_module.trainer.state.fn == TrainerFn.FITTING and bool(self.optimizers)

    def _load_full(self, checkpoint: dict[str, Any]) -> None:
        """Load a one-file checkpoint's weights and (when fitting) optimizer states; pops them from it."""
        _load_raw_module_state(checkpoint.pop("state_dict"), self.model, world_size=self.world_size, strict=False)
        states = checkpoint.pop("optimizer_states", None)
        if not self._fitting() or states is None:
            return
        with _get_full_state_dict_context(self.model, world_size=self.world_size, rank0_only=False):
            for optimizer, state in zip(self.optimizers, states):
                if all(isinstance(k, int) for k in state["state"]):  # a plain optimizer's numbering (DDP's, ours)
                    by_name = OptimStateKeyType.PARAM_NAME
                    state = FSDP.rekey_optim_state_dict(state, by_name, self.model, optim=optimizer)
                optimizer.load_state_dict(FSDP.optim_state_dict_to_load(self.model, optimizer, state))

    def _load_sharded(self, path: Path, weights: set[str], weights_only: bool | None) -> dict[str, Any]:
        """Load the trainable weights and optimizer states of a shard folder (any world size); returns meta.pt."""
        with _get_sharded_state_dict_context(self.model):
            # Only what the folder holds: the frozen weights came from the recipe's files.
            module_state = {"model": {k: v for k, v in self.model.state_dict().items() if k in weights}}
            distributed_checkpoint.load(module_state, checkpoint_id=path)
            self.model.load_state_dict(module_state["model"], strict=False)
            if self._fitting():
                reader = distributed_checkpoint.FileSystemReader(path=path)
                for i, optimizer in enumerate(self.optimizers):
                    key = f"optimizer_{i}"
                    state = load_sharded_optimizer_state_dict(
                        model_state_dict=module_state["model"], optimizer_key=key, storage_reader=reader
                    )
                    optimizer.load_state_dict(FSDP.optim_state_dict_to_load(self.model, optimizer, state[key]))
        return torch.load(path / _METADATA_FILENAME, weights_only=True)  # plain data only, as above


def _has_submodule(module: torch.nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True


def total_grad_norm(strategy, grads: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of the whole gradient, from this rank's gradient tensors (shards under FSDP).

    Every rank must call it when gradients are sharded (it all-reduces).
    """
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    if isinstance(strategy, DVFSDPStrategy) and strategy.shards_gradients:
        squares = strategy.reduce(norm.to(strategy.root_device).square(), reduce_op="sum")
        norm = (squares / strategy.gradient_replicas).sqrt()
    return norm


def _register() -> None:
    """`--trainer.strategy=dv_fsdp`: DVFSDPStrategy (FULL_SHARD) by a short name, as Lightning's own `fsdp` is."""
    from lightning.pytorch.strategies import StrategyRegistry

    if "dv_fsdp" not in StrategyRegistry:
        StrategyRegistry.register("dv_fsdp", DVFSDPStrategy, description="dv's FSDP: dv.strategies.DVFSDPStrategy")


_register()
