"""How fast a model runs: batch-1 latency, batched throughput, training steps, peak memory.

Every clock read goes through a :class:`cnnvit.runtime.Clock`, which synchronises the device
first; the clock is injected, so tests can drive the measuring code with a fake asynchronous
device and check the order of calls.

Each measurement runs ``warmup`` untimed calls (allocator, cuDNN autotuning, compilation), then
``repeats`` timed calls, one clock read before and after each. With ``repeats=None`` the count
is chosen from the last warm-up call so that the timed calls take about ``target_s`` seconds,
within ``[min_repeats, max_repeats]``; the count used is recorded with the figures. Results are
summarised by :class:`Spread` (median, p95, quartiles, standard deviation, range).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnvit.profile.record import MemoryPeak, Spread
from cnnvit.runtime import Clock, PeakMemory, Runtime, release_cached_memory

__all__ = [
    "RepeatPlan",
    "Timing",
    "measure_latency",
    "measure_memory",
    "measure_throughput",
    "measure_training",
    "time_repeats",
]

T = TypeVar("T")


# --- repeats and their summary ------------------------------------------------------------------


@dataclass(frozen=True)
class RepeatPlan:
    """How many calls to make: ``warmup`` untimed, then ``repeats`` timed (None: by time)."""

    warmup: int = 3
    repeats: int | None = None
    target_s: float = 1.0  # with repeats=None: timed calls take about this long
    min_repeats: int = 5
    max_repeats: int = 200

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.repeats is not None and self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if not 1 <= self.min_repeats <= self.max_repeats:
            raise ValueError("need 1 <= min_repeats <= max_repeats")

    def count(self, seconds_per_call: float | None) -> int:
        """Timed calls to make, given the duration of one call (None: unknown)."""
        if self.repeats is not None:
            return self.repeats
        if not seconds_per_call or seconds_per_call <= 0:
            return self.min_repeats
        wanted = math.ceil(self.target_s / seconds_per_call)
        return min(max(wanted, self.min_repeats), self.max_repeats)


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the timed repeats and the warm-up calls before them."""

    seconds: list[float]
    warmup_seconds: list[float] = field(default_factory=list)

    @property
    def spread(self) -> Spread:
        return Spread.of(self.seconds)

    def rate(self, items_per_call: int) -> Spread:
        """Items per second of each repeat, summarised."""
        return Spread.of([items_per_call / s for s in self.seconds])


def time_repeats(step: Callable[[], object], clock: Clock, plan: RepeatPlan) -> Timing:
    """Call ``step`` ``plan.warmup`` times, then the planned repeats, each between clock reads.

    The warm-up calls are timed too (the first one of a compiled model is its compile time).
    """
    warm = []
    for _ in range(plan.warmup):
        start = clock.read()
        step()
        warm.append(clock.read() - start)
    times = []
    for _ in range(plan.count(warm[-1] if warm else None)):
        start = clock.read()
        step()
        times.append(clock.read() - start)
    return Timing(seconds=times, warmup_seconds=warm)


# --- memory -------------------------------------------------------------------------------------


def measure_memory(device: torch.device, work: Callable[[], T]) -> tuple[T, MemoryPeak]:
    """Run ``work`` between a reset of the peak and its read; cached memory is released first.

    Returns ``work``'s result and the peak.
    """
    release_cached_memory(device)
    peak = PeakMemory(device)
    peak.reset()
    result = work()
    cuda = device.type == "cuda"
    return result, MemoryPeak(
        peak_mib=peak.peak_mb(),
        increase_mib=peak.increase_mb(),
        reserved_mib=peak.reserved_peak_mb(),
        source="torch.cuda.max_memory_allocated" if cuda else "VmHWM (peak resident set)",
        resettable=peak.resettable,
    )


# --- the measurements ---------------------------------------------------------------------------


def random_batch(
    runtime: Runtime, batch_size: int, in_chans: int, image_size: int, seed: int = 0
) -> torch.Tensor:
    """A normal-noise image batch on the device, channels_last when the runtime asks."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, in_chans, image_size, image_size, generator=gen)
    x = x.to(runtime.device)
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def forward_step(model: nn.Module, x: torch.Tensor, runtime: Runtime) -> Callable[[], object]:
    """One inference forward: eval mode (set by the caller), inference_mode, autocast."""

    def step() -> torch.Tensor:
        with torch.inference_mode(), runtime.autocast_context():
            return model(x)

    return step


def measure_latency(
    model: nn.Module,
    runtime: Runtime,
    *,
    image_size: int,
    in_chans: int = 3,
    clock: Clock | None = None,
    plan: RepeatPlan | None = None,
) -> Timing:
    """Seconds per forward of one image (eval mode, no gradients)."""
    clock = clock or Clock.for_device(runtime.device)
    model.eval()
    x = random_batch(runtime, 1, in_chans, image_size)
    return time_repeats(forward_step(model, x, runtime), clock, plan or RepeatPlan())


def measure_throughput(
    model: nn.Module,
    runtime: Runtime,
    *,
    batch_size: int,
    image_size: int,
    in_chans: int = 3,
    clock: Clock | None = None,
    plan: RepeatPlan | None = None,
) -> tuple[Timing, MemoryPeak]:
    """Seconds per forward of a ``batch_size`` batch, and the peak memory of the interval."""
    clock = clock or Clock.for_device(runtime.device)
    model.eval()
    x = random_batch(runtime, batch_size, in_chans, image_size)
    step = forward_step(model, x, runtime)
    timing, memory = measure_memory(
        runtime.device, lambda: time_repeats(step, clock, plan or RepeatPlan())
    )
    return timing, memory


def measure_training(
    model: nn.Module,
    runtime: Runtime,
    *,
    batch_size: int,
    image_size: int,
    num_classes: int,
    in_chans: int = 3,
    clock: Clock | None = None,
    plan: RepeatPlan | None = None,
    lr: float = 1e-4,
) -> tuple[Timing, MemoryPeak]:
    """Seconds per training step (forward, cross-entropy, backward, AdamW step) at batch N.

    The model's trainable parameters are updated (a small learning rate keeps them finite); the
    optimiser state is created in the first warm-up step, inside the memory interval.
    """
    clock = clock or Clock.for_device(runtime.device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: no training step to time")
    model.train()
    x = random_batch(runtime, batch_size, in_chans, image_size)
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(num_classes, (batch_size,), generator=gen).to(runtime.device)
    optimizer = torch.optim.AdamW(params, lr=lr)

    def step() -> None:
        with runtime.autocast_context():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    try:
        timing, memory = measure_memory(
            runtime.device, lambda: time_repeats(step, clock, plan or RepeatPlan())
        )
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.eval()
    return timing, memory
