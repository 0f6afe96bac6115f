"""SVHN .mat files written with scipy, read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from cnnvit.data.readers import read_dataset
from cnnvit.data.readers.svhn import svhn
from cnnvit.data.types import DataError
from stand_in_data import write_svhn


def test_svhn_round_trip(tmp_path: Path) -> None:
    train_images, train_digits = write_svhn(tmp_path / "train_32x32.mat", 12, 0)
    val_images, val_digits = write_svhn(tmp_path / "test_32x32.mat", 5, 1)
    extra_images, _ = write_svhn(tmp_path / "extra_32x32.mat", 3, 2)
    splits = read_dataset(f"svhn:{tmp_path}")
    np.testing.assert_array_equal(splits.train.images, train_images)
    np.testing.assert_array_equal(splits.train.labels, train_digits)
    np.testing.assert_array_equal(splits.val.images, val_images)
    np.testing.assert_array_equal(splits.val.labels, val_digits)
    assert splits.train.labels[0] == 0 and splits.train.labels.max() == 9  # 10 -> 0
    assert splits.classes == [str(d) for d in range(10)]
    assert splits.train.images.flags.c_contiguous
    with_extra = svhn(tmp_path / "train_32x32.mat", extra=True)  # a file path works too
    np.testing.assert_array_equal(with_extra.train.images[12:], extra_images)


def test_svhn_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train_32x32\.mat"):
        read_dataset(f"svhn:{tmp_path}")
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(DataError, match="expected variables X and y"):
        read_dataset(f"svhn:{tmp_path}")
    (tmp_path / "train_32x32.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(DataError, match="not a readable SVHN"):
        read_dataset(f"svhn:{tmp_path}")
