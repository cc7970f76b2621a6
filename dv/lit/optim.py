"""The optimizer of dv's training modules, and gradient clipping by a norm computed once per step."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the dataclass lives with the module that configures it
    from dv.lit.t2v import OptimConfig


def adamw(params: list[torch.nn.Parameter], optim: OptimConfig, fused: bool) -> torch.optim.AdamW:
    """AdamW with the recipe's settings: the fused kernel when `fused`, else torch's default (foreach)."""
    return torch.optim.AdamW(
        params,
        lr=optim.lr,
        betas=tuple(optim.betas),
        eps=optim.eps,
        weight_decay=optim.weight_decay,
        fused=fused or None,
    )


@torch.no_grad()
def clip_gradients(
    params: list[torch.nn.Parameter],
    clip_val: float,
    algorithm: str | None,
    norm: torch.Tensor | None,
    scale: torch.Tensor | float = 1.0,
) -> None:
    """Clip the parameters' gradients in place, as torch.nn.utils.clip_grad_norm_ / clip_grad_value_ would.

    `norm` is the whole gradient's norm (all ranks' shards under FSDP), already computed for the log: clipping by it
    computes nothing twice. `scale` is a loss scale still in the gradients (a fused optimizer unscales in its step).
    """
    if not params:
        return
    if str(algorithm or "norm").lower().endswith("value"):
        for p in params:
            p.grad.clamp_(-clip_val * scale, clip_val * scale)
        return
    if norm is None:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params]) / scale
    # clip_grads_with_norm_ scales by max_norm / (norm + 1e-6), at most 1: in scaled units, both sides scale.
    torch.nn.utils.clip_grads_with_norm_(params, clip_val * scale, norm * scale)
