"""Training memory per activation-checkpointing choice, estimated on the meta device (no memory, no compute).

The recipe's model is built on the meta device and its denoiser (U-Net and branch) runs one forward
pass there per choice. What autograd keeps for backward is counted exactly: every tensor saved by
the forward (a saved-tensors hook), each storage once, plus the inputs of checkpointed blocks. A
checkpointed block is recomputed in backward, one block at a time, so the largest one's own saved
tensors come on top. Weights, gradients and AdamW's two moments are added from the parameter counts.
Attention counts as a fused kernel (flash or memory-efficient, as on a GPU) keeps it: q, k, v, the
output and a log-sum-exp per row; the meta device's own fallback would keep every attention matrix.
Not counted: the frozen encoders' passes (no_grad, freed before the denoiser runs), the gradients of
activations in flight during backward, and the allocator's fragmentation; so this is a floor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dv.models.speed import (
    CHECKPOINTING_CHOICES,
    apply_checkpointing,
    checkpointable_blocks,
    remove_checkpointing,
    select_blocks,
)

GIB = 2**30


@dataclass
class MemoryEstimate:
    """Bytes of one training step's peak, by kind."""

    choice: str
    weights: int
    """Every parameter (fp32), frozen ones included."""
    gradients: int
    """One fp32 gradient per trainable weight."""
    optimizer: int
    """AdamW's two fp32 moments per trainable weight (and the EMA's copy when the recipe keeps one)."""
    autocast_copies: int
    """bf16 copies of the denoiser's weights autocast makes and backward keeps (0 in fp32)."""
    activations: int
    """Tensors the forward keeps for backward, plus the largest checkpointed block's recomputation."""

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.autocast_copies + self.activations


class FusedAttention(torch.autograd.Function):
    """scaled_dot_product_attention on the meta device, saving what a fused attention kernel saves for backward."""

    @staticmethod
    def forward(ctx, query, key, value):
        out = query.new_empty(*query.shape[:-1], value.shape[-1])
        lse = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # never run: the estimate has no backward pass
        raise NotImplementedError


@contextlib.contextmanager
def fused_attention() -> Iterator[None]:
    """Within the block, F.scaled_dot_product_attention is FusedAttention (diffusers looks it up at each call)."""
    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda q, k, v, *args, **kwargs: FusedAttention.apply(q, k, v)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


class SavedTensors:
    """Counts each storage autograd saves for backward once, and what each named block saves inside itself."""

    def __init__(self, blocks: dict[str, nn.Module]) -> None:
        self.storages: dict[int, int] = {}
        self.per_block: dict[str, int] = {name: 0 for name in blocks}
        self._running: list[str] = []
        self._handles = []
        for name, block in blocks.items():
            self._handles.append(block.register_forward_pre_hook(self._enter(name), with_kwargs=True))
            self._handles.append(block.register_forward_hook(self._leave, always_call=True))

    def _enter(self, name: str):
        def hook(module, args, kwargs):
            self._running.append(name)
            # A checkpointed block keeps its inputs (not saved through autograd's hooks): count them too.
            for value in (*args, *kwargs.values()):
                if isinstance(value, torch.Tensor):
                    self._add(value, inside=False)

        return hook

    def _leave(self, *args) -> None:
        self._running.pop()

    def _add(self, tensor: torch.Tensor, inside: bool = True) -> None:
        storage = tensor.untyped_storage()
        if storage._cdata in self.storages:
            return
        self.storages[storage._cdata] = storage.nbytes()
        if inside and self._running:
            self.per_block[self._running[-1]] += storage.nbytes()

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self._add(tensor)
        return tensor

    @contextlib.contextmanager
    def counting(self) -> Iterator[SavedTensors]:
        """Within the block, saved tensors are counted."""
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
                yield self
        finally:
            for handle in self._handles:
                handle.remove()

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def denoiser_inputs(module, batch: int, frames: int, size: int, dtype: torch.dtype) -> tuple:
    """Meta tensors of one training call of the denoiser: noisy latents, timesteps, text and image features."""
    backbone = module.backbone
    ae = backbone.autoencoder
    h = size // ae.downscale
    latents = torch.empty(batch, ae.latent_channels, frames, h, h, device="meta", dtype=dtype)
    t = torch.zeros(batch, device="meta", dtype=torch.long)
    text = torch.empty(batch, backbone.text.context_length, backbone.text.width, device="meta", dtype=dtype)
    features = None
    if module.branch is not None:
        features = module.branch.encode_image(torch.empty(batch, 3, size, size, device="meta", dtype=dtype))
    return latents, t, text, features


def saved_by_forward(module, inputs: tuple, selection=None) -> SavedTensors:
    """What one forward of the denoiser saves for backward under a checkpointing choice; with None, also what
    each block saves inside itself. The module is left without checkpointing."""
    unet, branch = module.backbone.unet, module.branch
    blocks = checkpointable_blocks(unet, branch)
    chosen = apply_checkpointing(unet, branch, selection)
    watched = blocks if selection is None else {name: blocks[name] for name in chosen}
    try:
        with fused_attention(), SavedTensors(watched).counting() as saved:
            module.denoiser(*inputs)
    finally:
        remove_checkpointing(unet, branch)
    return saved


def estimate(
    module, batch: int, frames: int, size: int, bf16: bool, choices: tuple | list = CHECKPOINTING_CHOICES
) -> list[MemoryEstimate]:
    """A MemoryEstimate per checkpointing choice of a module built on the meta device (configure_model under
    torch.device('meta')), for a training step of `batch` clips of `frames` × `size`²."""
    module.train()
    trainable = sum(p.numel() for _, p in module.trainable_parameters())
    total = sum(p.numel() for p in module.parameters())
    denoiser_params = sum(p.numel() for p in module.backbone.unet.parameters())
    if module.branch is not None:
        denoiser_params += sum(p.numel() for p in module.branch.parameters())
    ema = trainable if getattr(module, "ema_decay", None) is not None else 0
    dtype = torch.bfloat16 if bf16 else torch.float32
    # The activations are counted with the weights in the activation dtype: autocast's casts are not modelled on meta.
    module.to(dtype)
    inputs = denoiser_inputs(module, batch, frames, size, dtype)
    remove_checkpointing(module.backbone.unet, module.branch)
    plain = saved_by_forward(module, inputs)  # each block's own saved tensors: what its recomputation holds
    blocks = list(checkpointable_blocks(module.backbone.unet, module.branch))
    rows = []
    for choice in choices:
        kept = saved_by_forward(module, inputs, choice)
        recompute = max((plain.per_block[name] for name in select_blocks(choice, blocks)), default=0)
        saved = kept.total
        rows.append(
            MemoryEstimate(
                choice=choice if isinstance(choice, str) else ",".join(choice),
                weights=4 * total,
                gradients=4 * trainable,
                optimizer=4 * (2 * trainable + ema),
                autocast_copies=2 * denoiser_params if bf16 else 0,
                activations=saved + recompute,
            )
        )
    return rows
