"""What a replica can read about the node it runs on: memory and CPU pressure, and GPU memory of
the GPUs it was given (NVML, via the pynvml that Ray bundles). Read in the heartbeat thread.

GPU memory is reported only where NVML answers (a GPU host); on CPU hosts the reading is None and
the memory scorer falls back to the KV-cache signal.
"""

from __future__ import annotations

import os

import psutil


def memory_used_ratio() -> float:
    return psutil.virtual_memory().percent / 100.0


def cpu_used_ratio() -> float:
    """CPU use since the previous call (the first call returns 0)."""
    return psutil.cpu_percent(interval=None) / 100.0


class GpuMemory:
    """Used/total memory over the GPUs visible to this process, or None without NVML."""

    def __init__(self) -> None:
        self._handles = []
        try:
            from ray._private.thirdparty import pynvml

            pynvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            count = pynvml.nvmlDeviceGetCount()
            indices = [int(i) for i in visible.split(",") if i.strip().isdigit()] if visible else range(count)
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices if i < count]
        except Exception:  # no driver, no GPU: nothing to read
            self._handles = []

    def used_ratio(self) -> float | None:
        if not self._handles:
            return None
        used = total = 0
        for h in self._handles:
            info = self._nvml.nvmlDeviceGetMemoryInfo(h)
            used += info.used
            total += info.total
        return used / total if total else None
