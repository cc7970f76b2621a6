"""Lightning callbacks: throughput and memory logging, validation sampling with metrics and TensorBoard media."""

from dv.callbacks.throughput import ThroughputLogger
from dv.callbacks.validation import VideoValidation

__all__ = ["ThroughputLogger", "VideoValidation"]
