"""Lightning callbacks: checkpoints that keep the final step, throughput and memory logging, validation sampling with metrics and TensorBoard media."""

from dv.callbacks.checkpoint import ModelCheckpoint
from dv.callbacks.throughput import ThroughputLogger
from dv.callbacks.validation import VideoValidation

__all__ = ["ModelCheckpoint", "ThroughputLogger", "VideoValidation"]
