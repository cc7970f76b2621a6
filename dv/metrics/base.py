"""DetectorMetric: a torchmetrics Metric tied to one detector file, which it reports and never mixes with another."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from dv.errors import DVError
from dv.metrics.detectors import DetectorId, FrozenDetector

__all__ = ["DetectorMetric"]


class DetectorMetric(Metric):
    """A Metric whose states are features of one detector file (path + SHA-256), checked wherever states meet."""

    is_differentiable = False
    full_state_update = False
    detector: FrozenDetector

    def __init__(self, detector: FrozenDetector, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(detector, FrozenDetector):
            raise TypeError(
                f"{type(self).__name__} needs a detector loaded from a file (dv.metrics.detectors), not {type(detector).__name__}"
            )
        self.detector = detector

    @property
    def detector_id(self) -> DetectorId:
        """Kind, path and SHA-256 of the detector file this metric's features come from."""
        return self.detector.identity

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "detector" and "detector" in self._modules and value is not self._modules["detector"]:
            other = getattr(value, "identity", value)
            raise DVError(f"{type(self).__name__} keeps the detector it was built with; build a new metric for {other}")
        super().__setattr__(name, value)

    def report(self) -> dict[str, Any]:
        """The computed value with the detector file that produced it: {'value', 'detector', 'sha256'}."""
        value = self.compute()
        return {"value": float(value), "detector": self.detector_id.path, "sha256": self.detector_id.sha256}

    def _check_identity(self, sha256: str | None, where: str) -> None:
        if sha256 != self.detector_id.sha256:
            raise DVError(
                f"{type(self).__name__}: {where} come from detector sha256={sha256}, this metric uses "
                f"{self.detector_id.path} (sha256={self.detector_id.sha256}); features of different detectors cannot be mixed"
            )

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Merge another metric's (or a state dict's, with its 'detector_sha256') states made by the same detector."""
        if isinstance(incoming_state, DetectorMetric):
            self._check_identity(incoming_state.detector_id.sha256, "merged states")
        elif isinstance(incoming_state, dict):
            self._check_identity(incoming_state.get("detector_sha256"), "merged states")
            incoming_state = {k: v for k, v in incoming_state.items() if k != "detector_sha256"}
        super().merge_state(incoming_state)

    def get_extra_state(self) -> dict[str, str]:
        """The detector identity saved beside any persistent states."""
        return {"detector": self.detector_id.path, "sha256": self.detector_id.sha256}

    def set_extra_state(self, state: Any) -> None:
        """Nothing to restore: the detector is fixed at construction (checked in _load_from_state_dict)."""

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # Only saved states can mix features; a checkpoint without them may meet any detector.
        if any(prefix + key in state_dict for key in self._defaults):
            saved = state_dict.get(prefix + "_extra_state") or {}
            self._check_identity(saved.get("sha256"), "loaded states")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _sync_dist(self, dist_sync_fn: Any = gather_all_tensors, process_group: Any | None = None) -> None:
        # Every rank must have run the same file; a 32-byte gather says so before the features are summed.
        digest = torch.tensor(list(bytes.fromhex(self.detector_id.sha256)), dtype=torch.uint8, device=self.device)
        gathered: list[Tensor] = dist_sync_fn(digest, group=process_group or self.process_group)
        for rank, other in enumerate(gathered):
            if not torch.equal(other.to(digest.device), digest):
                self._check_identity(bytes(other.tolist()).hex(), f"rank {rank}'s states")
        super()._sync_dist(dist_sync_fn, process_group)
