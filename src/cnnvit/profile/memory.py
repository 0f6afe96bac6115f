"""Peak memory over an interval: GPU allocator peak on CUDA, resident-set peak on CPU.

CUDA has ``torch.cuda.reset_peak_memory_stats``. For the CPU no library offers a resettable
peak: psutil reports the current RSS only. Linux keeps the high-water mark in
``/proc/self/status`` (VmHWM) and resets it when "5" is written to ``/proc/self/clear_refs``;
where that is not possible the figure is the peak since the process started, and ``resettable``
says so.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class PeakMemory:
    """``reset()`` at the start of an interval, ``peak_mb()`` at its end."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = device.type == "cuda"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            _CLEAR_REFS.write_text("5")
            self.resettable = True
        except OSError:
            self.resettable = False

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return _cpu_peak_rss_bytes() / 2**20


def _cpu_peak_rss_bytes() -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return psutil.Process().memory_info().rss
