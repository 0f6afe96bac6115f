"""A dataset with one class is refused where it is read, and when data.classes names one."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cnnvit.config import DataConfig
from cnnvit.data.pipeline import load_splits
from cnnvit.data.readers import read_dataset
from cnnvit.data.types import DataError


def _dataset(root: Path, classes: str) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (4, 4), i).save(root / name / f"{i}.png")
    return root


def test_one_class_is_refused(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "cats", "c")
    with pytest.raises(DataError, match=r"has 1 class \('c'\).* at least 2") as info:
        read_dataset(f"folder:{root}")
    assert "folder:" in str(info.value) and "\n" not in str(info.value)
    two = _dataset(tmp_path / "two", "ab")
    with pytest.raises(DataError, match="at least 2"):
        load_splits(DataConfig(spec=f"folder:{two}", classes=["a"]))


def test_a_csv_with_one_label_is_refused(tmp_path: Path) -> None:
    _dataset(tmp_path / "images", "x")
    rows = "".join(f"x/{i}.png,cat\n" for i in range(4))
    (tmp_path / "labels.csv").write_text("filename,label\n" + rows)
    with pytest.raises(DataError, match=r"has 1 class \('cat'\)"):
        read_dataset(f"csv:{tmp_path / 'labels.csv'}")
