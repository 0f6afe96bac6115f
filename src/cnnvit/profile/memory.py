"""Peak memory over an interval: GPU allocator peak on CUDA, resident-set peak on CPU.

CUDA has ``torch.cuda.reset_peak_memory_stats``. For the CPU no library offers a resettable
peak: psutil reports the current RSS only. Linux keeps the high-water mark in
``/proc/self/status`` (VmHWM) and resets it when "5" is written to ``/proc/self/clear_refs``;
where that is not possible the figure is the peak since the process started, and ``resettable``
says so.

Figures are MiB (2**20 bytes). ``increase_mb()`` is the peak above what was in use at
``reset()`` (the model's weights at rest and the process itself): the memory the measured work
added. :func:`release_cached_memory` first hands back what earlier work left cached (the CUDA
caching allocator's free blocks, glibc's free heap), so that the figures belong to the work
measured next and not to what ran before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from pathlib import Path

import psutil
import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_MIB = 2**20


class PeakMemory:
    """``reset()`` at the start of an interval, ``peak_mb()`` at its end (MiB)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = device.type == "cuda"
        self.baseline_mb = 0.0  # in use at the last reset()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / _MIB
            return
        try:
            _CLEAR_REFS.write_text("5")
            self.resettable = True
        except OSError:
            self.resettable = False
        self.baseline_mb = psutil.Process().memory_info().rss / _MIB

    def peak_mb(self) -> float:
        """CUDA: max allocated since reset; CPU: peak resident set since reset."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / _MIB
        return _cpu_peak_rss_bytes() / _MIB

    def reserved_peak_mb(self) -> float | None:
        """CUDA: max reserved by the caching allocator since reset; None elsewhere."""
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_reserved(self.device) / _MIB

    def increase_mb(self) -> float:
        """The peak above what was in use at ``reset()``."""
        return max(self.peak_mb() - self.baseline_mb, 0.0)


def release_cached_memory(device: torch.device) -> None:
    """Free unreachable objects and hand cached memory back: CUDA cache, glibc's free heap."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    elif sys.platform.startswith("linux"):
        _malloc_trim()


def _malloc_trim() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        pass


def _cpu_peak_rss_bytes() -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return psutil.Process().memory_info().rss
