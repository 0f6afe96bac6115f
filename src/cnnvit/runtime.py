"""Where and how work runs: one policy for ``train``, ``evaluate``, ``profile`` and the analyses.

The same words mean the same thing everywhere (``cnnvit.config.RuntimeConfig`` holds them):

* ``device``: ``auto`` is CUDA, then MPS, then the CPU; a CUDA device where none is visible is
  refused.
* ``precision``: ``auto`` is bf16 autocast on a CUDA GPU that supports it and fp32 elsewhere;
  ``bf16`` is autocast wherever the hardware has bf16 arithmetic (CUDA with bf16, a CPU with
  AVX512-BF16 or AMX) and refused where it has not; ``fp32`` is plain float32.
* ``channels_last``: ``auto`` is on for CUDA, off elsewhere.
* ``threads``: torch's CPU threads while the work runs (None: as set), restored afterwards.
* ``compile``: ``torch.compile`` (True: inductor, or a backend name).

Also here: peak memory over an interval, the clock that synchronises the device before it is
read, and the record of the environment a run executed in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Protocol

import psutil
import torch
import torchvision

from cnnvit import __version__
from cnnvit.errors import UserError

__all__ = [
    "Clock",
    "Environment",
    "PeakMemory",
    "Runtime",
    "RuntimeSettingError",
    "capture_environment",
    "cpu_supports_bf16",
    "device_name",
    "num_threads",
    "release_cached_memory",
    "resolve_device",
    "resolve_runtime",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class RuntimeSettingError(UserError, ValueError):
    """A device, precision or layout this machine cannot give; the message says what to use."""


class RuntimeWords(Protocol):
    """The config words of :func:`resolve_runtime` (``cnnvit.config.RuntimeConfig`` has them)."""

    device: str
    precision: str
    channels_last: str
    threads: int | None
    compile: bool | str


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype  # autocast dtype; float32 means no autocast
    channels_last: bool
    compile: bool | str = False
    threads: int | None = None

    @property
    def autocast(self) -> bool:
        return self.dtype != torch.float32

    @property
    def precision(self) -> str:
        """``fp32`` or ``bf16``: the dtype in the config's words."""
        return next(k for k, v in DTYPES.items() if v == self.dtype)

    def autocast_context(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast)

    def clock(self) -> Clock:
        return Clock.for_device(self.device)

    def compiled(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` through ``torch.compile`` where the runtime asks for it."""
        if not self.compile:
            return model
        backend = self.compile if isinstance(self.compile, str) else "inductor"
        return torch.compile(model, backend=backend)  # type: ignore[return-value]

    def threads_applied(self) -> AbstractContextManager[None]:
        """torch's CPU threads as the runtime says while the context is open."""
        return num_threads(self.threads)


# --- resolving the words ----------------------------------------------------------------------


def resolve_device(name: str | torch.device) -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise RuntimeSettingError(
            f"unknown device {name!r}; use auto, cpu, cuda, cuda:1 or mps"
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeSettingError(f"device {name} asked for, but no CUDA GPU is visible; use cpu")
    return device


def cpu_supports_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX), where bf16 autocast pays.

    torch exposes these checks only as private helpers of ``torch.cpu``; without them the
    answer is no, and bf16 is refused on the CPU rather than emulated slowly.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def _supports_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_supports_bf16()
    return False


def resolve_runtime(words: RuntimeWords) -> Runtime:
    """Device, autocast dtype, layout, threads and compile from the config words (module
    docstring). Raises :class:`RuntimeSettingError` for what this machine cannot give."""
    device = resolve_device(words.device)
    cuda = device.type == "cuda"
    if words.precision == "bf16":
        if not _supports_bf16(device):
            raise RuntimeSettingError(
                f"precision bf16 asked for, but {device_name(device)} has no bf16 arithmetic "
                "(a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX); use fp32"
            )
        dtype = torch.bfloat16
    elif words.precision == "auto" and cuda and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    elif words.precision in ("auto", "fp32"):
        dtype = torch.float32
    else:
        raise RuntimeSettingError(f"unknown precision {words.precision!r}; use auto, fp32 or bf16")
    if words.channels_last not in ("auto", "on", "off"):
        raise RuntimeSettingError(
            f"unknown channels_last {words.channels_last!r}; use auto, on or off"
        )
    channels_last = words.channels_last == "on" or (words.channels_last == "auto" and cuda)
    if words.threads is not None and words.threads < 1:
        raise RuntimeSettingError(f"threads must be at least 1, got {words.threads}")
    if cuda:
        # TF32 matmuls for any fp32 work left outside autocast (Ampere and newer).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return Runtime(device, dtype, channels_last, words.compile, words.threads)


@contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` (None: unchanged) inside, restored after."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- the clock -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clock:
    """``read()``: synchronise the device, then read the time (seconds).

    A GPU runs work asynchronously, so reading ``time.perf_counter`` right after a launch times
    the launch, not the work. ``synchronize`` and ``now`` are injected, so tests can drive the
    measuring code with a fake asynchronous device and check the order of calls.
    """

    synchronize: Callable[[], None]
    now: Callable[[], float] = time.perf_counter

    def read(self) -> float:
        self.synchronize()
        return self.now()

    @classmethod
    def for_device(cls, device: torch.device) -> Clock:
        """``time.perf_counter`` after ``torch.cuda.synchronize`` / ``torch.mps.synchronize``."""
        if device.type == "cuda":
            return cls(synchronize=lambda: torch.cuda.synchronize(device))
        if device.type == "mps":
            return cls(synchronize=torch.mps.synchronize)
        return cls(synchronize=_no_sync)  # CPU kernels return when their work is done


def _no_sync() -> None:
    pass


# --- peak memory ---------------------------------------------------------------------------------
#
# CUDA has ``torch.cuda.reset_peak_memory_stats``. For the CPU no library offers a resettable
# peak: psutil reports the current RSS only. Linux keeps the high-water mark in
# ``/proc/self/status`` (VmHWM) and resets it when "5" is written to ``/proc/self/clear_refs``;
# where that is not possible the figure is the peak since the process started, and
# ``resettable`` says so. Figures are MiB (2**20 bytes).

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_MIB = 2**20


class PeakMemory:
    """``reset()`` at the start of an interval, ``peak_mb()`` at its end (MiB).

    ``increase_mb()`` is the peak above what was in use at ``reset()`` (the model's weights at
    rest and the process itself): the memory the measured work added.
    """

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
    """Free unreachable objects and hand cached memory back (the CUDA caching allocator's free
    blocks, glibc's free heap), so that a peak measured next belongs to the work measured."""
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


# --- the environment a run executed in ---------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{_cpu_model()} ({torch.get_num_threads()} threads)"
    return device.type


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} CPU"


def git_revision(path: Path | None = None) -> str | None:
    """The git commit of the working directory (+dirty if it has changes); None outside git."""
    try:
        cwd = path or Path.cwd()
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


@dataclass(frozen=True)
class Environment:
    python: str
    torch: str
    torchvision: str
    timm: str
    cnnvit: str
    platform: str
    device: str
    device_name: str
    dtype: str
    channels_last: bool
    threads: int
    git_revision: str | None
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def capture_environment(runtime: Runtime, seed: int) -> Environment:
    return Environment(
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,  # with its build tag, as torch
        timm=version("timm"),
        cnnvit=__version__,
        platform=platform.platform(),
        device=str(runtime.device),
        device_name=device_name(runtime.device),
        dtype=str(runtime.dtype).removeprefix("torch."),
        channels_last=runtime.channels_last,
        threads=torch.get_num_threads(),
        git_revision=git_revision(),
        seed=seed,
    )
