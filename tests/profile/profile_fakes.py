"""A fake asynchronous device for the timing tests, and a model that runs on it."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnvit.runtime import Clock


class FakeAsyncDevice:
    """A device that queues work and only does it when synchronised, like a GPU stream.

    ``launch(seconds)`` returns at once; the device's own time advances by the queued work at
    ``synchronize()``; ``now()`` reads that time. A timer that reads the clock without
    synchronising sees launches take no time at all. ``log`` records every call in order.
    """

    def __init__(self) -> None:
        self.time = 0.0
        self.pending = 0.0
        self.log: list[str] = []

    def __deepcopy__(self, memo: dict) -> FakeAsyncDevice:
        return self  # a copied model still runs on the same device

    def launch(self, seconds: float) -> None:
        self.pending += seconds
        self.log.append("launch")

    def synchronize(self) -> None:
        self.time += self.pending
        self.pending = 0.0
        self.log.append("sync")

    def now(self) -> float:
        self.log.append("now")
        return self.time

    def clock(self) -> Clock:
        return Clock(synchronize=self.synchronize, now=self.now)


class AsyncLinear(nn.Module):
    """A real linear classifier whose forward also enqueues ``per_image_s`` per image of work
    on a :class:`FakeAsyncDevice` (and notes the memory layout of its input)."""

    def __init__(self, device: FakeAsyncDevice, per_image_s: float, in_features: int, classes: int):
        super().__init__()
        self.device, self.per_image_s = device, per_image_s
        self.fc = nn.Linear(in_features, classes)
        self.num_classes = classes
        self.channels_last_inputs: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.device.launch(self.per_image_s * x.shape[0])
        self.channels_last_inputs.append(
            x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        )
        return self.fc(x.flatten(1))
