"""SVHN (Street View House Numbers), the cropped-digits version in MATLAB ``.mat`` files.

``--data svhn:PATH`` where PATH is the folder holding ``train_32x32.mat`` and ``test_32x32.mat``
(the test file is optional; without it the caller carves a validation split), or the path of
``train_32x32.mat`` itself. ``extra_32x32.mat`` (531,131 easier images) is added to train only
when asked (``extra=True``). In the files ``X`` is (32, 32, 3, N) uint8 and ``y`` is (N, 1) with
the digit 0 stored as label 10; here images are (N, 32, 32, 3) and 10 becomes 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from cnnvit.data.readers._common import data_root
from cnnvit.data.types import ArraySource, DataError, DatasetSplits

# Widely used per-channel statistics of the SVHN training set.
SVHN_MEAN_STD = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
URL = "http://ufldl.stanford.edu/housenumbers/"


def svhn(
    path: Path | None = None, *, root: Path | None = None, extra: bool = False
) -> DatasetSplits:
    """SVHN digits '0'..'9' from ``train_32x32.mat`` (+ ``test_32x32.mat``, ``extra_32x32.mat``)."""
    folder = _locate(path, root)
    train = read_mat(folder / "train_32x32.mat")
    if extra:
        more = read_mat(folder / "extra_32x32.mat")
        train = ArraySource(
            np.concatenate([train.images, more.images]), np.concatenate([train.labels, more.labels])
        )
    test = folder / "test_32x32.mat"
    val = read_mat(test) if test.is_file() else None
    mean, std = SVHN_MEAN_STD
    return DatasetSplits("svhn", [str(d) for d in range(10)], train, val, mean=mean, std=std)


def _locate(path: Path | None, root: Path | None) -> Path:
    if path is not None:
        path = Path(path).expanduser()
        folder = path.parent if path.is_file() else path
        candidates = [folder, folder / "svhn"]
    else:
        base = data_root(root)
        candidates = [base, base / "svhn"] if base is not None else []
    for folder in candidates:
        if (folder / "train_32x32.mat").is_file():
            return folder
    where = f"{path} holds" if path is not None else "no path was given and the data root holds"
    raise DataError(
        f"svhn: {where} no train_32x32.mat. Download train_32x32.mat and test_32x32.mat from "
        f"{URL} into a folder and pass --data svhn:/that/folder."
    )


def read_mat(path: Path) -> ArraySource:
    """Read one SVHN ``.mat`` file into (N, 32, 32, 3) uint8 images and labels 0..9."""
    if not path.is_file():
        raise DataError(f"missing SVHN file {path}")
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except (ValueError, OSError, NotImplementedError) as err:
        # NotImplementedError: MATLAB v7.3 files are HDF5, which scipy cannot read.
        raise DataError(f"{path} is not a readable SVHN .mat file ({err})") from err
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path}: expected variables X and y, found {sorted(mat)}")
    x, y = mat["X"], mat["y"].reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[2] != 3 or x.dtype != np.uint8 or x.shape[3] != len(y):
        raise DataError(f"{path}: X is {x.shape} {x.dtype}, expected (32, 32, 3, {len(y)}) uint8")
    if y.size and (y.min() < 0 or y.max() > 10):
        raise DataError(f"{path}: labels must be 1..10 (10 = digit 0), found {y.min()}..{y.max()}")
    y[y == 10] = 0  # SVHN stores the digit 0 as class 10
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2))  # (32, 32, 3, N) -> (N, 32, 32, 3)
    return ArraySource(images, y)
