"""Lightning callbacks: throughput and memory logging (validation sampling and metrics come later)."""

from dv.callbacks.throughput import ThroughputLogger

__all__ = ["ThroughputLogger"]
