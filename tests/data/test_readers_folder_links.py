"""Symbolic links in a class-folder dataset: each image read once, under one label, and every
link left out is reported with its reason (issue 13, point 5)."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from cnnvit.config import DataConfig
from cnnvit.data.pipeline import load_splits
from cnnvit.data.readers import read_dataset
from cnnvit.data.types import DatasetSplits


def _dataset(root: Path, classes: str = "ab", per_class: int = 6) -> Path:
    """``root/<class>/<i>.png`` for each class letter; grey values tell the files apart."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (4, 4), 10 * c + i).save(root / name / f"{i}.png")
    return root


def _read(root: Path) -> tuple[DatasetSplits, list[str]]:
    """The dataset and the warnings its reading gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = read_dataset(f"folder:{root}")
    return splits, [str(w.message) for w in caught]


def _assert_once_each(splits: DatasetSplits) -> None:
    """No real file appears twice, and each carries the label of the class folder it is in."""
    paths = list(splits.train.paths) + (list(splits.val.paths) if splits.val else [])
    real = Counter(os.path.realpath(p) for p in paths)
    assert max(real.values()) == 1, [p for p, n in real.items() if n > 1]
    for path, label in zip(splits.train.paths, splits.train.labels, strict=True):
        real_class = Path(os.path.realpath(path)).parent.name
        if real_class in splits.classes:  # files linked in from outside keep their link's label
            assert splits.classes[label] == real_class, path


def test_a_link_to_its_own_folder_is_not_followed(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    os.symlink(".", root / "a" / "self")  # was 252 images: a/self/self/... until ELOOP
    splits, warned = _read(root)
    assert len(splits.train) == 12
    assert Counter(splits.train.labels.tolist()) == {0: 6, 1: 6}
    _assert_once_each(splits)
    assert [(s.path, s.reason) for s in splits.skipped] == [
        (str(root / "a" / "self"), f"a loop: it links to {os.path.realpath(root / 'a')}, "
         "a folder that holds it")
    ]  # fmt: skip
    assert len(warned) == 1 and "1 path" in warned[0] and str(root / "a" / "self") in warned[0]


def test_a_link_to_the_dataset_root_is_not_followed(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    os.symlink("..", root / "a" / "up")  # was 492 images, 240 copies of b labelled a
    splits, warned = _read(root)
    assert len(splits.train) == 12
    assert Counter(splits.train.labels.tolist()) == {0: 6, 1: 6}
    _assert_once_each(splits)
    assert [s.path for s in splits.skipped] == [str(root / "a" / "up")]
    assert "a loop" in splits.skipped[0].reason
    assert len(warned) == 1 and "a loop" in warned[0]


def test_links_into_another_class_folder_are_not_followed(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    os.symlink(root / "b", root / "a" / "b_dir")  # every b image would also be labelled a
    os.symlink("../b/0.png", root / "a" / "b_file.png")
    (root / "b" / "sub").mkdir()
    os.symlink("../../a/1.png", root / "b" / "sub" / "from_a.png")
    splits, warned = _read(root)
    assert len(splits.train) == 12
    _assert_once_each(splits)
    reasons = {Path(s.path).name: s.reason for s in splits.skipped}
    assert set(reasons) == {"b_dir", "b_file.png", "from_a.png"}
    b, a = os.path.realpath(root / "b"), os.path.realpath(root / "a")
    assert reasons["b_dir"] == f"it leads into {b}, the class folder of 'b'"
    assert reasons["b_file.png"] == f"it leads into {b}, the class folder of 'b'"
    assert reasons["from_a.png"] == f"it leads into {a}, the class folder of 'a'"
    assert len(warned) == 1 and "3 paths" in warned[0]


def test_a_link_from_train_into_val_is_not_followed(tmp_path: Path) -> None:
    _dataset(tmp_path / "train")
    _dataset(tmp_path / "val", per_class=2)
    os.symlink("../../val/a/0.png", tmp_path / "train" / "a" / "leak.png")
    splits, _ = _read(tmp_path)
    assert (len(splits.train), len(splits.val)) == (12, 4)  # the val image stays in val only
    _assert_once_each(splits)
    assert [Path(s.path).name for s in splits.skipped] == ["leak.png"]
    assert "the class folder of 'a'" in splits.skipped[0].reason


def test_the_same_file_reached_twice_counts_once(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    os.symlink("0.png", root / "a" / "00_alias.png")  # sorts before the real file
    (root / "a" / "sub").mkdir()
    os.symlink("..", root / "a" / "sub" / "back")  # a loop, one level down
    splits, _ = _read(root)
    assert len(splits.train) == 12
    _assert_once_each(splits)
    assert root / "a" / "0.png" in splits.train.paths  # the real file wins over its alias
    assert {(Path(s.path).name, s.reason.split(":")[0]) for s in splits.skipped} == {
        ("00_alias.png", f"the same file as {root / 'a' / '0.png'}"),
        ("back", "a loop"),
    }


def test_a_folder_linked_in_from_outside_is_followed_once(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    outside = _dataset(tmp_path / "elsewhere", classes="x", per_class=3) / "x"
    os.symlink(outside, root / "a" / "more")  # people link data in: followed
    os.symlink(outside, root / "a" / "more_again")  # the same folder a second time: not
    os.symlink(outside, root / "b" / "more")  # nor under another class
    os.symlink(".", outside / "self")  # a loop inside the linked folder
    splits, warned = _read(root)
    assert Counter(splits.train.labels.tolist()) == {0: 6 + 3, 1: 6}
    _assert_once_each(splits)
    linked = [p for p in splits.train.paths if "more" in str(p)]
    assert sorted(p.name for p in linked) == ["0.png", "1.png", "2.png"]
    assert all(p.parent == root / "a" / "more" for p in linked)  # named by the link that led in
    reasons = {str(Path(s.path).relative_to(root)): s.reason for s in splits.skipped}
    assert reasons == {
        "a/more/self": f"a loop: it links to {os.path.realpath(outside)}, a folder that holds it",
        "a/more_again": f"the same folder as {root / 'a' / 'more'}",
        "b/more": f"the same folder as {root / 'a' / 'more'}",
    }
    assert len(warned) == 1 and "3 paths" in warned[0]


def test_a_plain_dataset_gives_no_warning(tmp_path: Path) -> None:
    splits, warned = _read(_dataset(tmp_path / "data"))
    assert len(splits.train) == 12 and splits.skipped == [] and warned == []


def test_skipped_links_reach_the_run_folders_list(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "data")
    os.symlink(".", root / "a" / "self")
    with pytest.warns(UserWarning, match="a loop"):
        splits = load_splits(DataConfig(spec=f"folder:{root}", test_fraction=0.25))
    assert [s.path for s in splits.skipped] == [str(root / "a" / "self")]  # -> skipped.csv
    assert len(splits.train) + len(splits.selection) + len(splits.val) == 12
