"""What a benchmark needs from the device: waiting for queued work, peak memory, a readable name."""

from __future__ import annotations

import os
import platform
import re
import resource
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (a no-op on the CPU), so that host clocks measure the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo (or platform), with the cores this process may use."""
    name = platform.processor() or platform.machine()
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        name = match.group(1).strip() if match else name
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores available"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_name()}, torch uses {torch.get_num_threads()} threads"


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement (CUDA allocator stats; on Linux the process RSS high-water mark)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # "5" resets the RSS high-water mark that getrusage reports (Linux >= 4.0); elsewhere it keeps growing
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA max_memory_allocated, or the process RSS peak on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "CUDA max_memory_allocated"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024, "process RSS peak"
