"""Image files on disk, in three layouts, as :class:`FileSource` splits (decoded later).

``folder:PATH`` — one sub-folder per class, like torchvision's ``ImageFolder``: class names are
the sub-folder names, sorted; images are found recursively inside each class folder. When PATH
has ``train/`` and ``val/`` (or, without ``val/``, ``test/``) that each hold class sub-folders,
those are the train and validation splits (class indices come from ``train/``; a ``val/`` class
that ``train/`` lacks is an error). Without ``val/``/``test/``, ``train/`` alone is used.

``csv:PATH`` — a CSV whose header has ``filename`` and ``label`` columns (other columns ignored,
header case-insensitive), naming images in a folder beside it: the Kaggle Human Action
Recognition layout, ``Training_set.csv`` + ``train/``. PATH is the CSV file or the folder holding
it; in a folder, the one CSV with those columns is used (if several, the one whose name contains
"train"). The image folder is whichever of these siblings of the CSV holds most of the named
files: the CSV's stem (``Training_set/``), the stem without ``_set`` (``Training/``), ``train/``,
``test/`` or ``val/`` when the stem contains that word, ``images/``, and finally the CSV's own
folder (for file names with sub-paths). Class names are the sorted unique labels (numerically
sorted when all are integers). Rows whose file is missing are skipped and reported
(``SkippedFile(reason="missing file")``), as are rows without a label.

``imagenet-val:PATH`` — ImageNet-1k images in WordNet-id sub-folders (``n01440764/...``), as
made by the usual ``valprep.sh``; PATH may also be an ImageNet root with a ``val/`` folder. Labels
are the standard ImageNet-1k indices (the sorted order of the 1000 wnids, from timm's
``ImageNetInfo``), also when only some classes are present, and there are always 1000 classes,
named by their first WordNet lemma ("tench"; the two repeated lemmas get the wnid appended).
The images go in ``train`` with ``val=None``: the format has a single split, and callers that
only evaluate use that split.

In all layouts, names starting with "." (``.thumbnails``, ``.DS_Store``) are ignored and never
classes, and images are recognised by torchvision's ``IMG_EXTENSIONS``, case-insensitively. A
layout with no images, or a class folder with none, is a :class:`DataError` naming the folder.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from cnnvit.data.readers._common import require_path
from cnnvit.data.types import DataError, DatasetSplits, FileSource, SkippedFile

IMAGE_EXTENSIONS = tuple(ext.lower() for ext in IMG_EXTENSIONS)
_CSV_SAMPLE = 50  # rows checked when choosing a CSV's image folder


def is_image_name(name: str) -> bool:
    """True for a visible file name with an image extension (case-insensitive)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: Path) -> list[Path]:
    """All image files under ``folder``, recursively, skipping hidden files and folders; sorted."""
    found = []
    for here, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # never descend into hidden folders
        found += [Path(here, f) for f in files if is_image_name(f)]
    return sorted(found)


def _subfolders(folder: Path) -> list[str]:
    """Visible sub-folder names of ``folder``, sorted (torchvision's class order)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _scan(folder: Path, labelled: Iterable[tuple[str, int]]) -> FileSource:
    """Images of each (class folder name, label); a class folder without images is an error."""
    paths: list[Path] = []
    labels: list[int] = []
    for name, label in labelled:
        files = list_images(folder / name)
        if not files:
            raise DataError(
                f"class folder {folder / name} has no images "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)}, hidden files ignored)"
            )
        paths += files
        labels += [label] * len(files)
    return FileSource(paths, np.asarray(labels, np.int64))


def _classes_of(folder: Path) -> list[str]:
    classes = _subfolders(folder)
    if not classes:
        loose = len(list_images(folder))
        detail = f" ({loose} images lie directly in it)" if loose else ""
        raise DataError(
            f"{folder} has no class sub-folders{detail}: expected one sub-folder per class, "
            f"e.g. {folder / 'cat' / '0001.jpg'}"
        )
    return classes


def _split_folders(root: Path) -> tuple[Path, Path | None] | None:
    """(train, val) folders when ``root`` is split into train/ and val/ or test/, else None."""
    train = root / "train"
    if not train.is_dir() or not _subfolders(train):
        return None
    for name in ("val", "test"):
        if (root / name).is_dir() and _subfolders(root / name):
            return train, root / name
    return train, None


def image_folder(path: Path | None) -> DatasetSplits:
    """One sub-folder per class (optionally split into train/ and val/ or test/)."""
    root = require_path(path, "folder", "/path/to/images")
    if not root.is_dir():
        raise DataError(f"folder: {root} is not a folder")
    split = _split_folders(root)
    train_dir, val_dir = split if split else (root, None)
    classes = _classes_of(train_dir)
    train = _scan(train_dir, ((c, i) for i, c in enumerate(classes)))
    val = None
    if val_dir is not None:
        index = {c: i for i, c in enumerate(classes)}
        extra = [c for c in _subfolders(val_dir) if c not in index]
        if extra:
            raise DataError(f"{val_dir} has classes that {train_dir} lacks: {', '.join(extra)}")
        val = _scan(val_dir, ((c, index[c]) for c in _subfolders(val_dir)))
    return DatasetSplits(root.resolve().name or "folder", classes, train, val)


# ---------------------------------------------------------------------------- csv layout


def csv_folder(path: Path | None) -> DatasetSplits:
    """Images named in a ``filename,label`` CSV (Kaggle Human Action Recognition layout)."""
    path = require_path(path, "csv", "/path/to/Training_set.csv")
    csv_path = path if path.is_file() else _find_csv(path)
    rows, skipped = _read_rows(csv_path)
    image_dir = _image_dir(csv_path, [name for name, _ in rows])
    kept = []
    for name, label in rows:
        if (image_dir / name).is_file():
            kept.append((image_dir / name, label))
        else:
            skipped.append(SkippedFile(str(image_dir / name), "missing file"))
    if not kept:
        raise DataError(f"none of the files named in {csv_path} exist in {image_dir}")
    classes = _sorted_labels({label for _, label in kept})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([index[label] for _, label in kept], np.int64)
    source = FileSource([p for p, _ in kept], labels)
    return DatasetSplits(csv_path.parent.resolve().name, classes, source, None, skipped=skipped)


def _csv_columns(path: Path) -> set[str]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    return {h.strip().lower() for h in header}


def _find_csv(folder: Path) -> Path:
    candidates = sorted(
        p
        for p in folder.glob("*.csv")
        if not p.name.startswith(".") and {"filename", "label"} <= _csv_columns(p)
    )
    if not candidates:
        raise DataError(f"csv: no CSV with a 'filename,label' header in {folder}")
    train = [p for p in candidates if "train" in p.stem.lower()]
    if len(candidates) == 1:
        return candidates[0]
    if len(train) == 1:
        return train[0]
    names = ", ".join(p.name for p in candidates)
    raise DataError(f"csv: several labelled CSVs in {folder} ({names}); pass csv:{folder}/NAME.csv")


def _read_rows(path: Path) -> tuple[list[tuple[str, str]], list[SkippedFile]]:
    """(filename, label) rows of the CSV, and the rows without a label."""
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel writes a BOM
        reader = csv.DictReader(f)
        fields = {(h or "").strip().lower(): h for h in reader.fieldnames or []}
        if "filename" not in fields or "label" not in fields:
            raise DataError(
                f"{path}: the header needs 'filename' and 'label', found {list(fields)}"
            )
        rows, skipped = [], []
        for row in reader:
            name = (row[fields["filename"]] or "").strip()
            label = (row[fields["label"]] or "").strip()
            if name and label:
                rows.append((name, label))
            elif name:
                skipped.append(SkippedFile(name, "no label"))
    if not rows:
        raise DataError(f"{path} has no labelled rows")
    return rows, skipped


def _image_dir(csv_path: Path, names: list[str]) -> Path:
    """The sibling folder of the CSV that holds the most of the files it names."""
    parent, stem = csv_path.parent, csv_path.stem.lower()
    wanted = [stem, stem.removesuffix("_set")]
    wanted += [w for w in ("train", "test", "val") if w in stem] + ["images"]
    siblings = {e.name.lower(): Path(e.path) for e in os.scandir(parent) if e.is_dir()}
    candidates = [siblings[w] for w in dict.fromkeys(wanted) if w in siblings] + [parent]
    sample = names[:: max(1, len(names) // _CSV_SAMPLE)]
    hits = [sum((d / n).is_file() for n in sample) for d in candidates]
    best = int(np.argmax(hits))  # first candidate wins ties
    if hits[best] == 0:
        tried = ", ".join(str(d) for d in candidates)
        raise DataError(f"{csv_path}: none of its files (e.g. {names[0]}) are in {tried}")
    return candidates[best]


def _sorted_labels(labels: set[str]) -> list[str]:
    """Labels sorted as numbers when all are integers ("2" before "10"), else as text."""
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


# ---------------------------------------------------------------------------- imagenet-val


def imagenet_val(path: Path | None) -> DatasetSplits:
    """ImageNet-1k images in wnid sub-folders, labelled with the standard 1k class indices."""
    from timm.data import ImageNetInfo  # timm ships the wnid list and names; imported lazily

    root = require_path(path, "imagenet-val", "/path/to/imagenet/val")
    info = ImageNetInfo("imagenet-1k")
    wnids = list(info.label_names())  # the standard order: index i is the i-th sorted wnid
    index = {w: i for i, w in enumerate(wnids)}
    folder = root
    if not any(d in index for d in _subfolders(root)) and (root / "val").is_dir():
        folder = root / "val"  # an ImageNet root with train/ and val/
    present = _subfolders(folder)
    unknown = [d for d in present if d not in index]
    if not present or unknown:
        found = f"found {', '.join(unknown[:5])}" if unknown else "found none"
        raise DataError(
            f"imagenet-val: {folder} must hold only ImageNet-1k wnid sub-folders such as "
            f"n01440764 ({found}); sort a flat validation folder into them first (valprep.sh)"
        )
    source = _scan(folder, ((w, index[w]) for w in present))
    descriptions = [info.index_to_description(i) for i in range(len(wnids))]
    return DatasetSplits("imagenet-val", _imagenet_names(descriptions, wnids), source, None)


def _imagenet_names(descriptions: list[str], wnids: list[str]) -> list[str]:
    """First WordNet lemma per class; repeated lemmas ("crane", "maillot") get the wnid added."""
    first = [d.split(",")[0].strip() for d in descriptions]
    counts = Counter(first)
    return [f"{n} ({w})" if counts[n] > 1 else n for n, w in zip(first, wnids, strict=True)]
