"""The shapes data takes between the readers and the loaders.

A reader turns files on disk into a :class:`DatasetSplits`: class names plus a ``train`` and
(where the format has one) a ``val`` :class:`Source`. A source is either pixels already in memory
(:class:`ArraySource`, for idx/CIFAR/SVHN/synthetic) or a list of image files decoded later
(:class:`FileSource`, for folder/CSV/ImageNet-val layouts). Everything downstream (class subsets,
fractions, validation splits, loaders) works on these two types only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnvit.errors import UserError


class DataError(UserError, ValueError):
    """Bad data input (wrong path, empty folder, unknown class); the message says how to fix it."""


@dataclass(frozen=True)
class SkippedFile:
    """An image that could not be decoded and was left out of the dataset."""

    path: str
    reason: str


@dataclass
class ArraySource:
    """Images already decoded in memory."""

    images: np.ndarray  # (N, H, W, C) uint8, C in {1, 3}
    labels: np.ndarray  # (N,) int64

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(
                f"ArraySource images must be (N, H, W, C) uint8, got {self.images.shape} "
                f"{self.images.dtype}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ArraySource:
        return ArraySource(self.images[indices], self.labels[indices])


@dataclass
class FileSource:
    """Image files on disk, decoded by the loader (see :mod:`cnnvit.data.decode`)."""

    paths: list[Path]
    labels: np.ndarray  # (N,) int64

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> FileSource:
        return FileSource([self.paths[i] for i in indices], self.labels[indices])


Source = ArraySource | FileSource


@dataclass
class DatasetSplits:
    """What a reader returns: named classes and the splits the files provide."""

    name: str
    classes: list[str]
    train: Source
    val: Source | None = None  # the test split; None where the format has no held-out split
    # Held out of the training pool for every choice made during training (best epoch, early
    # stopping, recipe tuning); carved by the pipeline, never by a reader.
    selection: Source | None = None
    skipped: list[SkippedFile] = field(default_factory=list)
    # Per-channel mean/std of the raw pixels in [0, 1], where the format has well-known values.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)
