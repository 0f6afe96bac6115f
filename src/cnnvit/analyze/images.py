"""The images an analysis looks at: uint8, in memory, with labels and class names.

From a run folder the split is rebuilt from ``config.yaml`` exactly as training built it (reader,
classes, test holdout, test subset), without downloading; from a data spec it is the
dataset's own split. Either way a stratified subset (the same for every model and every re-run)
bounds the count, and image files are decoded at one size (shorter side resized, centre crop).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from cnnvit.config import read_run_config
from cnnvit.data.decode import materialize
from cnnvit.data.pipeline import image_size, rebuild_splits
from cnnvit.data.readers import read_dataset
from cnnvit.data.splits import nested_fraction_indices
from cnnvit.data.types import ArraySource, Source
from cnnvit.folders import RunFolder

__all__ = ["ImageSet", "Split", "images_from_run", "images_from_spec"]

Split = Literal["train", "val"]


@dataclass
class ImageSet:
    """``images`` uint8 (N, C, H, W) on the CPU, ``labels`` int64 (N,), class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 (b, C, H, W), labels (b,)) in order."""
        for start in range(0, len(self), batch_size):
            yield self.images[start : start + batch_size], self.labels[start : start + batch_size]

    def subset(self, count: int | None, seed: int = 0) -> ImageSet:
        """At most ``count`` images, stratified by class, in their original order."""
        if count is None or count >= len(self):
            return self
        return self.take(stratified_indices(self.labels.numpy(), count, seed))

    def take(self, indices: np.ndarray | list[int]) -> ImageSet:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageSet(self.images[idx], self.labels[idx], self.classes, self.name)


def stratified_indices(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``count`` samples, classes in proportion (largest remainders first)."""
    # nested_fraction_indices keeps ceil(fraction * n_class) per class: slightly over count,
    # so trim evenly across classes from the end of each class's draw.
    picked = nested_fraction_indices(labels, min(1.0, count / len(labels)), seed)
    if len(picked) <= count:
        return picked
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(picked, size=count, replace=False))


def images_from_run(
    run_dir: str | Path, split: Split = "val", *, max_images: int | None = None, seed: int = 0
) -> ImageSet:
    """The run's ``split`` as it trained (train: the whole training fraction it saw)."""
    cfg = read_run_config(RunFolder(run_dir).config)
    splits = rebuild_splits(cfg.data)
    source = splits.val if split == "val" else splits.train
    assert source is not None  # load_splits always provides a test split
    size = image_size(cfg.data, source)
    return _to_image_set(source, splits.classes, size, max_images, seed, f"{splits.name} {split}")


def images_from_spec(
    spec: str,
    split: Split = "val",
    *,
    image_size: int = 224,
    max_images: int | None = None,
    seed: int = 0,
    root: str | Path | None = None,
) -> ImageSet:
    """A dataset's ``split`` (``val``: its held-out split, or all images when it has none)."""
    splits = read_dataset(spec, root=root, download=False)
    source = splits.train if split == "train" else (splits.val or splits.train)
    return _to_image_set(source, splits.classes, image_size, max_images, seed, spec)


def _to_image_set(
    source: Source, classes: list, size: int, max_images: int | None, seed: int, name: str
) -> ImageSet:
    if max_images is not None and max_images < len(source):
        source = source.subset(stratified_indices(source.labels, max_images, seed))
    if not isinstance(source, ArraySource):
        source, _skipped = materialize(source, size, progress=False)  # unreadable files dropped
    images = torch.from_numpy(np.ascontiguousarray(source.images)).permute(0, 3, 1, 2)
    return ImageSet(
        images.contiguous(),  # (N, C, H, W)
        torch.from_numpy(np.asarray(source.labels, dtype=np.int64)),
        [str(c) for c in classes],
        name,
    )
