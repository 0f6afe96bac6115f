"""DataConfig -> ready loaders and transforms: read, subset, split, fraction, place, batch.

Training gets three loaders: ``train`` (the cell's fraction of the training pool), ``selection``
(scored during training: best epoch, early stopping, tuning) and ``test``, which refuses to be
read until :meth:`PreparedData.open_test` says the final evaluation has begun, so that nothing
chosen during training can have seen it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from cnnvit.config import DataConfig
from cnnvit.data.augment import BatchTransform
from cnnvit.data.decode import materialize
from cnnvit.data.loaders import InMemoryLoader, Loader, StreamingLoader
from cnnvit.data.readers import read_dataset
from cnnvit.data.splits import (
    carve_selection,
    ensure_validation,
    nested_fraction_indices,
    select_classes,
)
from cnnvit.data.types import ArraySource, DatasetSplits, FileSource, SkippedFile, Source

log = logging.getLogger(__name__)

# Files of any size are resized to this side when the config names none (timm's usual input).
DEFAULT_FILE_IMAGE_SIZE = 224


class SealedSplitError(RuntimeError):
    """The test split was read before the final evaluation."""


class SealedLoader:
    """A loader that refuses iteration until it is opened: the test split during training."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader
        self.opened = False

    def open(self) -> Loader:
        self.opened = True
        return self.loader

    def __iter__(self):
        if not self.opened:
            raise SealedSplitError(
                "the test split was read before the final evaluation; choices made during "
                "training must use the selection split"
            )
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_images(self) -> int:
        return self.loader.num_images


@dataclass
class PreparedData:
    """Everything the training loop needs from the data side."""

    name: str
    classes: list[str]
    image_size: int
    channels: int
    train: Loader
    selection: Loader
    test: SealedLoader
    train_transform: BatchTransform
    eval_transform: BatchTransform
    in_memory: bool
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def open_test(self) -> Loader:
        """The test split's loader, for the final evaluation only."""
        return self.test.open()

    def all_skipped(self) -> list[SkippedFile]:
        """Files skipped at read time plus those the streaming loaders met so far."""
        found = {s.path: s for s in self.skipped}
        for loader in (self.train, self.selection, self.test.loader):
            if isinstance(loader, StreamingLoader):
                found.update(loader.skipped)
        return sorted(found.values(), key=lambda s: s.path)


def load_splits(cfg: DataConfig) -> DatasetSplits:
    """Read the dataset, keep the configured classes, and split it three ways: the test split
    (``val``: the dataset's own or a hold-out), the selection split held out of the training
    pool, and the configured fraction of what remains (``train``)."""
    splits = read_dataset(cfg.spec, root=cfg.root, download=cfg.download)
    if cfg.classes:
        splits = select_classes(splits, cfg.classes)
    splits = ensure_validation(splits, cfg.test_fraction, cfg.holdout_seed)
    assert splits.val is not None
    if cfg.max_test_images is not None and cfg.max_test_images < len(splits.val):
        # Seed 0, not split_seed: every run of a study is tested on the very same images.
        fraction = cfg.max_test_images / len(splits.val)
        splits.val = splits.val.subset(nested_fraction_indices(splits.val.labels, fraction, 0))
    splits = carve_selection(splits, cfg.selection_size, cfg.holdout_seed)
    if cfg.train_fraction < 1:
        idx = nested_fraction_indices(splits.train.labels, cfg.train_fraction, cfg.split_seed)
        splits.train = splits.train.subset(idx)
    return splits


def rebuild_splits(cfg: DataConfig) -> DatasetSplits:
    """The splits a run trained and validated on, rebuilt from its data config without
    downloading: a later stage (evaluation, analyses, agreement) reads what is already here."""
    return load_splits(cfg.model_copy(update={"download": False}))


def image_size(cfg: DataConfig, source: Source) -> int:
    """The side images are used at: the config's, else the array's own, else the default for
    files."""
    if cfg.image_size is not None:
        return cfg.image_size
    if isinstance(source, ArraySource):
        return int(source.images.shape[1])
    return DEFAULT_FILE_IMAGE_SIZE


def _fits_in_memory(cfg: DataConfig, splits: DatasetSplits, size: int) -> bool:
    if cfg.in_memory != "auto":
        return cfg.in_memory == "always"
    n = len(splits.train) + len(splits.val or []) + len(splits.selection or [])
    channels = 3 if isinstance(splits.train, FileSource) else splits.train.images.shape[-1]
    return n * size * size * channels <= cfg.max_memory_mb * 2**20


def normalization(
    cfg: DataConfig, splits: DatasetSplits, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if cfg.normalize == "none":
        return (0.0,) * channels, (1.0,) * channels
    if cfg.normalize == "imagenet" or splits.mean is None or splits.std is None:
        if cfg.normalize == "dataset" and isinstance(splits.train, ArraySource):
            mean, std = _measurenormalization(splits.train.images)
        else:
            mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    else:
        mean, std = splits.mean, splits.std
    if len(mean) == 1 and channels == 3:
        mean, std = mean * 3, std * 3
    if len(mean) == 3 and channels == 1:
        mean, std = (float(np.mean(mean)),), (float(np.mean(std)),)
    return tuple(mean), tuple(std)


def _measurenormalization(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    sample = images[:: max(1, len(images) // 5000)].astype(np.float64) / 255  # (n, H, W, C)
    return tuple(sample.mean((0, 1, 2)).tolist()), tuple(sample.std((0, 1, 2)).tolist())


def prepare_data(
    cfg: DataConfig,
    *,
    device: torch.device,
    batch_size: int,
    eval_batch_size: int,
    generator: torch.Generator,
    progress: bool = True,
) -> PreparedData:
    """Build train/val loaders and their transforms from a DataConfig."""
    splits = load_splits(cfg)
    size = image_size(cfg, splits.train)
    in_memory = _fits_in_memory(cfg, splits, size)
    skipped = list(splits.skipped)
    assert splits.val is not None and splits.selection is not None
    sources = [splits.train, splits.selection, splits.val]
    if in_memory:
        arrays = [_to_array(src, size, progress) for src in sources]
        sources = [array for array, _ in arrays]
        skipped += [bad for _, bad_files in arrays for bad in bad_files]
    train_src, selection_src, test_src = sources

    def loader(src: Source, shuffle: bool, bs: int) -> Loader:
        gen = generator if shuffle else None
        if isinstance(src, ArraySource):
            return InMemoryLoader(src, device=device, batch_size=bs, shuffle=shuffle, generator=gen)
        return StreamingLoader(
            src,
            size=size,
            device=device,
            batch_size=bs,
            shuffle=shuffle,
            num_workers=cfg.num_workers,
            generator=gen,
        )

    mean, std = normalization(cfg, splits, cfg.channels)
    common = dict(size=size, channels=cfg.channels, mean=mean, std=std)
    return PreparedData(
        name=splits.name,
        classes=splits.classes,
        image_size=size,
        channels=cfg.channels,
        train=loader(train_src, True, batch_size),
        selection=loader(selection_src, False, eval_batch_size),
        test=SealedLoader(loader(test_src, False, eval_batch_size)),
        train_transform=BatchTransform(**common, augment=cfg.augment),
        eval_transform=BatchTransform(**common),
        in_memory=in_memory,
        skipped=skipped,
    )


def _to_array(src: Source, size: int, progress: bool) -> tuple[ArraySource, list[SkippedFile]]:
    if isinstance(src, ArraySource):
        return src, []
    return materialize(src, size, progress=progress)
