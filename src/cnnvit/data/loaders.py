"""Batches of uint8 images on the training device, from memory or streamed from files.

Both loaders yield ``(images, labels)`` with images uint8 (B, C, H, W) already on the device;
:class:`cnnvit.data.augment.BatchTransform` turns them into float model input. Shuffling draws
from a CPU ``torch.Generator`` owned by the caller, so a resumed run replays the same order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from cnnvit.data.decode import FileImageDataset, collate_skipping
from cnnvit.data.types import ArraySource, FileSource, SkippedFile

Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 (B, C, H, W), int64 (B,)


class InMemoryLoader:
    """A dataset held as one uint8 tensor on the device, sliced into batches."""

    def __init__(
        self,
        source: ArraySource,
        *,
        device: torch.device,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None = None,
    ) -> None:
        # (N, H, W, C) numpy -> (N, C, H, W) on the device, once.
        self.images = torch.from_numpy(np.ascontiguousarray(source.images)).permute(0, 3, 1, 2)
        self.images = self.images.contiguous().to(device)
        self.labels = torch.from_numpy(source.labels.astype(np.int64)).to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        if shuffle and generator is None:
            raise ValueError("a shuffling loader needs a torch.Generator")

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.labels.device)
        else:
            order = torch.arange(n, device=self.labels.device)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.images[idx], self.labels[idx]


class StreamingLoader:
    """Image files decoded by DataLoader workers; bad files are dropped and remembered."""

    def __init__(
        self,
        source: FileSource,
        *,
        size: int,
        device: torch.device,
        batch_size: int,
        shuffle: bool,
        num_workers: int,
        generator: torch.Generator | None = None,
    ) -> None:
        self.dataset = FileImageDataset(source, size)
        sampler = (
            RandomSampler(self.dataset, generator=generator)
            if shuffle
            else SequentialSampler(self.dataset)
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate_skipping,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
        )
        self.device = device
        self.skipped: dict[str, SkippedFile] = {}

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_images(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[Batch]:
        for images, labels, skipped in self.loader:
            for item in skipped:
                self.skipped[item.path] = item
            if len(labels) == 0:
                continue
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
            )


Loader = InMemoryLoader | StreamingLoader
