"""read_dataset's spec parsing and the synthetic generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cnnvit.data.readers import KNOWN_DATASETS, read_dataset
from cnnvit.data.readers.synthetic import synthetic
from cnnvit.data.types import DataError


def test_known_names() -> None:
    assert set(KNOWN_DATASETS) == {
        "fashion-mnist", "mnist", "cifar10", "cifar100", "svhn",
        "folder", "csv", "imagenet-val", "synthetic",
    }  # fmt: skip


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(DataError, match="Did you mean 'cifar100'") as info:
        read_dataset("cifar1000")
    assert all(name in str(info.value) for name in KNOWN_DATASETS)
    with pytest.raises(DataError, match="unknown dataset 'qqq'"):
        read_dataset("qqq")


def test_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    for name in ("folder", "cifar10", "fashion-mnist"):
        with pytest.raises(DataError, match="does not exist") as info:
            read_dataset(f"{name}:{missing}")
        assert str(missing) in str(info.value)
    with pytest.raises(DataError, match="needs a path"):
        read_dataset("folder")


def test_aliases_and_case() -> None:
    assert read_dataset("Synthetic:train_size=20,val_size=10").name == "synthetic"
    with pytest.raises(DataError, match="does not exist"):  # resolved to cifar10, then the path
        read_dataset("CIFAR_10:/definitely/not/here")


def test_synthetic_deterministic_and_seeded() -> None:
    a, b, c = synthetic(seed=3), synthetic(seed=3), synthetic(seed=4)
    assert a.train.images.tobytes() == b.train.images.tobytes()
    assert a.val.images.tobytes() == b.val.images.tobytes()
    assert np.array_equal(a.train.labels, b.train.labels)
    assert a.train.images.tobytes() != c.train.images.tobytes()
    # Train does not depend on how much val is asked for.
    assert synthetic(seed=3, val_size=7).train.images.tobytes() == a.train.images.tobytes()


def test_synthetic_shapes_and_balance() -> None:
    s = read_dataset("synthetic:num_classes=4,train_size=40,val_size=8,image_size=16,channels=1")
    assert s.train.images.shape == (40, 16, 16, 1) and s.val.images.shape == (8, 16, 16, 1)
    assert s.num_classes == 4 and np.bincount(s.train.labels).tolist() == [10] * 4
    default = read_dataset("synthetic")
    assert default.train.images.shape == (2000, 32, 32, 3) and default.num_classes == 10
    assert default.train.images.std() > 20  # not blank
    with pytest.raises(DataError, match="key=integer"):
        read_dataset("synthetic:classes=3")
    with pytest.raises(DataError, match="channels"):
        synthetic(channels=2)


def _nearest_centroid(
    train: np.ndarray, ytr: np.ndarray, val: np.ndarray, yva: np.ndarray
) -> float:
    centroids = np.stack([train[ytr == c].mean(0) for c in np.unique(ytr)])
    distances = ((val[:, None] - centroids[None]) ** 2).sum(-1)
    return float((distances.argmin(1) == yva).mean())


def _spectrum(images: np.ndarray) -> np.ndarray:
    """Shift-invariant features: the normalised 2-D amplitude spectrum of the first channel."""
    x = images[..., 0].astype(np.float64)
    x -= x.mean((1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(x))
    return (power / power.sum((1, 2), keepdims=True)).reshape(len(x), -1)


@pytest.mark.parametrize("channels", [1, 3])
def test_synthetic_is_learnable(channels: int) -> None:
    # The classes differ in stripe orientation/frequency wherever the blob lands, so even a
    # nearest-centroid rule on a shift-invariant spectrum separates them far above chance (10 %).
    s = synthetic(channels=channels, train_size=500, val_size=200)
    acc = _nearest_centroid(
        _spectrum(s.train.images), s.train.labels, _spectrum(s.val.images), s.val.labels
    )
    assert acc > 0.8
    if channels == 3:  # and the hue alone is a strong cue
        mean_colour = lambda x: x.reshape(len(x), -1, 3).mean(1)  # noqa: E731
        colour_acc = _nearest_centroid(
            mean_colour(s.train.images), s.train.labels, mean_colour(s.val.images), s.val.labels
        )
        assert colour_acc > 0.4
