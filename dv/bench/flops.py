"""Model FLOPs counted by torch.utils.flop_counter, and MFU against a device's peak dense bf16 rate."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from dv.models.speed import no_recompute

PEAK_BF16 = (
    ("H200", 989.4e12),
    ("H100 PCIe", 756.0e12),
    ("H100", 989.4e12),  # SXM (HBM3)
    ("A100", 312.0e12),
)
"""Dense bf16 tensor-core peaks (NVIDIA datasheets), matched in order against torch.cuda.get_device_name()."""

aten = torch.ops.aten


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's table knows the CUDA attention kernels; on the CPU SDPA runs this one, which it would count as 0.
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of fn(): eager (compiled modules run uncompiled) and without checkpointing's recomputation."""
    # Per-module figures are left out: in backward, FlopCounterMode's module tracker credits one op to
    # every module whose backward is under way, so the shares of a U-Net fed by a branch overlap.
    counter = FlopCounterMode(display=False, depth=1, custom_mapping=CPU_ATTENTION)
    with no_recompute(), torch.compiler.set_stance("force_eager"), counter:
        fn()
    return counter.get_total_flops()


def peak_bf16_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None (CPU, or a GPU not in PEAK_BF16)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16 if key in name), None)


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak; None without a known peak."""
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / peak
