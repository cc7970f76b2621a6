"""A counter of host syncs: what makes the host wait for a GPU's queued kernels, counted on any device."""

from __future__ import annotations

import sys

import torch
from torch.overrides import TorchFunctionMode

HOST_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "__array__"}
"""Tensor methods that copy a value to the host: on a GPU each one waits for every queued kernel."""

DATA_DEPENDENT = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "nonzero_static"}
"""Operations whose output shape depends on the values: the host reads the size back."""


def _is_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _device_of(value):
    return value.device if isinstance(value, torch.Tensor) else None


class SyncCounter(TorchFunctionMode):
    """Records, once armed, every torch call that syncs with the host, labelled with `self.label`.

    Counted: reads to the host (`.item()`, `.cpu()`, `bool(t)`, indexing by a 0-dim integer tensor), boolean-mask
    indexing and other data-dependent shapes, blocking copies between devices, and tensors made from host data on an
    explicit device (`torch.tensor(..., device=)`: a host-to-device copy off a pageable buffer).
    """

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.label = None
        self.syncs: list[tuple[object, str]] = []

    def _record(self, name: str) -> None:
        # torch.optim keeps a non-capturable optimizer's step counts on the host by design; reading them is free.
        frame = sys._getframe(2)
        if frame.f_code.co_filename.replace("\\", "/").find("/torch/optim/") < 0:
            self.syncs.append((self.label, name))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.armed:
            return out
        name = getattr(func, "__name__", str(func))
        if name in HOST_READS or name in DATA_DEPENDENT:
            self._record(name)
        elif name == "where" and len(args) == 1:
            self._record("where(condition)")
        elif name in ("__getitem__", "__setitem__", "index_put_") and len(args) > 1:
            index = args[1]
            if _is_bool_index(index):
                self._record(f"{name}[bool mask]")
            elif any(
                isinstance(i, torch.Tensor) and i.ndim == 0 and not i.is_floating_point()
                for i in (index if isinstance(index, tuple) else (index,))
            ):
                self._record(f"{name}[0-dim tensor]")
        elif name in ("to", "cuda", "copy_") and not kwargs.get("non_blocking", False):
            source = _device_of(args[1]) if name == "copy_" and len(args) > 1 else _device_of(args[0])
            target = _device_of(args[0]) if name == "copy_" else _device_of(out)
            if source is not None and target is not None and source != target:
                self._record(f"{name}({source}->{target})")
        elif name in ("tensor", "as_tensor") and kwargs.get("device") is not None:
            if not (args and isinstance(args[0], torch.Tensor)):
                self._record(f"{name}(host data, device=)")
        return out
