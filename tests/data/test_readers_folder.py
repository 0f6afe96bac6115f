"""Class-folder, CSV and ImageNet-val layouts."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from PIL import Image

from cnnvit.data.decode import materialize
from cnnvit.data.readers import read_dataset
from cnnvit.data.types import DataError


def _png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), (value, value, value)).save(path)
    return path


def _values(source) -> list[int]:
    """The grey value of each image of a FileSource, in order, after decoding."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no file may be skipped here
        arrays, _ = materialize(source, 4, progress=False)
    return arrays.images[:, 0, 0, 0].tolist()


def test_class_folders(tmp_path: Path) -> None:
    _png(tmp_path / "dog" / "a.png", 10)
    _png(tmp_path / "cat" / "b.jpg", 20)  # a JPEG: solid grey survives exactly
    _png(tmp_path / "cat" / "sub" / "c.png", 30)  # nested files belong to their class folder
    _png(tmp_path / "Zebra" / "d.png", 40)  # sorted like torchvision: upper case first
    _png(tmp_path / ".thumbnails" / "e.png", 50)
    splits = read_dataset(f"folder:{tmp_path}")
    assert splits.classes == ["Zebra", "cat", "dog"]
    assert [p.name for p in splits.train.paths] == ["d.png", "b.jpg", "c.png", "a.png"]
    assert splits.train.labels.tolist() == [0, 1, 1, 2]
    assert splits.val is None and splits.name == tmp_path.name
    assert _values(splits.train) == [40, 20, 30, 10]


def test_train_val_subfolders(tmp_path: Path) -> None:
    for split, value in (("train", 1), ("val", 2)):
        _png(tmp_path / split / "ant" / "x.png", value)
        _png(tmp_path / split / "bee" / "y.png", value + 10)
    _png(tmp_path / "test" / "ant" / "z.png", 99)  # val wins over test
    splits = read_dataset(f"folder:{tmp_path}")
    assert splits.classes == ["ant", "bee"]
    assert _values(splits.train) == [1, 11] and _values(splits.val) == [2, 12]
    assert splits.val.labels.tolist() == [0, 1]
    _png(tmp_path / "val" / "cow" / "w.png", 5)
    with pytest.raises(DataError, match="cow"):
        read_dataset(f"folder:{tmp_path}")


def test_val_with_fewer_classes_keeps_train_indices(tmp_path: Path) -> None:
    for name in ("ant", "bee", "cow"):
        _png(tmp_path / "train" / name / "x.png", 1)
    _png(tmp_path / "test" / "cow" / "y.png", 2)
    splits = read_dataset(f"folder:{tmp_path}")
    assert splits.val.labels.tolist() == [2]


def test_empty_folder_and_empty_class(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders") as info:
        read_dataset(f"folder:{tmp_path / 'empty'}")
    assert str(tmp_path / "empty") in str(info.value)
    _png(tmp_path / "data" / "cat" / "a.png", 1)
    (tmp_path / "data" / "dog" / ".thumbnails").mkdir(parents=True)
    _png(tmp_path / "data" / "dog" / ".thumbnails" / "t.png", 1)  # hidden: does not count
    (tmp_path / "data" / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="has no images") as info:
        read_dataset(f"folder:{tmp_path / 'data'}")
    assert str(tmp_path / "data" / "dog") in str(info.value)
    loose = tmp_path / "loose"
    _png(loose / "a.png", 1)
    with pytest.raises(DataError, match="1 images lie directly in it"):
        read_dataset(f"folder:{loose}")


def _har_layout(root: Path) -> None:
    """Kaggle Human Action Recognition: Training_set.csv + train/, Testing_set.csv + test/."""
    rows = [("Image_1.jpg", "sitting", 10), ("Image_2.jpg", "running", 20)]
    rows += [("Image_3.jpg", "sitting", 30), ("Image_4.jpg", "cycling", 40)]
    for name, _, value in rows[:3]:
        _png(root / "train" / name, value)
    # Image_4 is listed but missing; a row without a label is reported too.
    lines = ["filename,label"] + [f"{n},{label}" for n, label, _ in rows] + ["Image_5.jpg,"]
    (root / "Training_set.csv").write_text("\n".join(lines) + "\n")
    (root / "Testing_set.csv").write_text("filename\nImage_9.jpg\n")  # no labels: not used
    _png(root / "test" / "Image_9.jpg", 0)


def test_csv_kaggle_layout(tmp_path: Path) -> None:
    _har_layout(tmp_path)
    for spec in (f"csv:{tmp_path}", f"csv:{tmp_path / 'Training_set.csv'}"):
        splits = read_dataset(spec)
        assert splits.classes == ["running", "sitting"]  # cycling's only file is missing
        assert [p.name for p in splits.train.paths] == ["Image_1.jpg", "Image_2.jpg", "Image_3.jpg"]
        assert splits.train.labels.tolist() == [1, 0, 1]
        assert {(Path(s.path).name, s.reason) for s in splits.skipped} == {
            ("Image_4.jpg", "missing file"),
            ("Image_5.jpg", "no label"),
        }
        assert _values(splits.train) == [10, 20, 30]


def test_csv_numeric_labels_and_other_folders(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "a.png", 1)
    _png(tmp_path / "images" / "b.png", 2)
    _png(tmp_path / "images" / "c.png", 3)
    (tmp_path / "labels.csv").write_text("id,FileName,Label\n1,a.png,10\n2,b.png,2\n3,c.png,2\n")
    splits = read_dataset(f"csv:{tmp_path / 'labels.csv'}")
    assert splits.classes == ["2", "10"]  # numeric order, not text order
    assert splits.train.labels.tolist() == [1, 0, 0]


def test_csv_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(DataError, match="'filename' and 'label'"):
        read_dataset(f"csv:{tmp_path / 'bad.csv'}")
    with pytest.raises(DataError, match="no CSV with a 'filename,label' header"):
        read_dataset(f"csv:{tmp_path}")
    (tmp_path / "ok.csv").write_text("filename,label\nnowhere.png,x\n")
    with pytest.raises(DataError, match=r"nowhere\.png"):
        read_dataset(f"csv:{tmp_path / 'ok.csv'}")


def test_imagenet_val_standard_index(tmp_path: Path) -> None:
    _png(tmp_path / "n01443537" / "ILSVRC2012_val_00000001.JPEG", 7)  # goldfish, index 1
    _png(tmp_path / "n15075141" / "ILSVRC2012_val_00000002.JPEG", 8)  # toilet tissue, 999
    splits = read_dataset(f"imagenet-val:{tmp_path}")
    assert splits.num_classes == 1000
    assert splits.train.labels.tolist() == [1, 999]
    assert splits.classes[0] == "tench" and splits.classes[1] == "goldfish"
    assert len(set(splits.classes)) == 1000  # repeated lemmas are made unique
    assert _values(splits.train) == [7, 8]


def test_imagenet_val_root_with_val_folder_and_errors(tmp_path: Path) -> None:
    _png(tmp_path / "val" / "n01440764" / "a.JPEG", 1)
    assert read_dataset(f"imagenet-val:{tmp_path}").train.labels.tolist() == [0]
    _png(tmp_path / "val" / "cats" / "b.JPEG", 1)
    with pytest.raises(DataError, match="cats"):
        read_dataset(f"imagenet-val:{tmp_path}")
    flat = tmp_path / "flat"
    _png(flat / "ILSVRC2012_val_00000001.JPEG", 1)
    with pytest.raises(DataError, match="wnid sub-folders"):
        read_dataset(f"imagenet-val:{flat}")
