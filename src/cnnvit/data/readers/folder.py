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

Symbolic links inside class folders (``folder:`` and ``imagenet-val:``) are followed, so data
can be linked in from elsewhere, but each image is read once and under one label: a link is left
out when it loops back to a folder that holds it, when it leads into another class folder of the
dataset (of either split), or when its folder or file was already read; the first path that
reaches a file or folder wins, files that are not links before links. What is left out goes into
``DatasetSplits.skipped`` (a run's ``skipped.csv``) with its reason, and one warning names it.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from cnnvit.data.readers._common import require_path
from cnnvit.data.types import DataError, DatasetSplits, FileSource, SkippedFile

IMAGE_EXTENSIONS = tuple(ext.lower() for ext in IMG_EXTENSIONS)
_CSV_SAMPLE = 50  # rows checked when choosing a CSV's image folder
_NAMED = 5  # left-out paths named in the warning; all of them go to skipped


def is_image_name(name: str) -> bool:
    """True for a visible file name with an image extension (case-insensitive)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(folder: Path) -> list[Path]:
    """All image files under ``folder``, recursively, skipping hidden files and folders; sorted.
    Symbolic links are followed as in a dataset of this one class folder (no loops, no repeats)."""
    return _Walker([folder]).images(folder)


def _inside(path: str, folder: str) -> bool:
    """True when the real path ``path`` is ``folder`` or lies below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class _Walker:
    """Finds the images of a dataset's class folders, following symbolic links without loops.

    One walker reads all class folders of a dataset (both splits), so it knows every real file
    and folder already read and every class folder a link must not lead into. What it leaves out
    is collected in ``skipped``."""

    def __init__(self, class_folders: Iterable[Path]) -> None:
        self.classes = {os.path.realpath(f): f.name for f in class_folders}  # real path -> name
        self.folders: dict[str, Path] = {}  # real folder -> the path it was first read as
        self.files: dict[str, Path] = {}  # real file -> the path it was first read as
        self.skipped: list[SkippedFile] = []

    def images(self, folder: Path) -> list[Path]:
        """The images under one class folder, sorted. The whole tree without links is read
        first, then the links found on the way (and those found behind them), so that a file
        reached both directly and through a link is kept under its own path."""
        own = os.path.realpath(folder)
        self.folders.setdefault(own, folder)
        found: list[Path] = []
        to_read: list[tuple[Path, str]] = [(folder, own)]  # (path, real path) of folders
        links: list[tuple[Path, str]] = []  # (link, real path of the folder holding it)
        while to_read or links:
            if to_read:
                self._read(*to_read.pop(), to_read, links, found)
            else:
                self._follow(*links.pop(0), own, to_read, found)
        return sorted(found)

    def _read(self, folder: Path, real: str, to_read: list, links: list, found: list) -> None:
        """One folder's entries: sub-folders queued, links put aside, images kept."""
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as err:
            self.skipped.append(SkippedFile(str(folder), f"unreadable folder: {err.strerror}"))
            return
        for entry in entries:
            path, entry_real = Path(entry.path), os.path.join(real, entry.name)
            if entry.name.startswith("."):
                continue  # hidden files and folders are never read
            if entry.is_symlink():
                links.append((path, real))
            elif entry.is_dir():
                if self._first_folder(path, entry_real):
                    to_read.append((path, entry_real))
            elif is_image_name(entry.name):
                self._add_file(path, entry_real, found)

    def _follow(self, link: Path, here: str, own: str, to_read: list, found: list) -> None:
        """A link found in the real folder ``here`` of class folder ``own``: followed once,
        unless it loops, leads into another class folder or reaches what was already read."""
        target = os.path.realpath(link)
        if os.path.isdir(target):
            if _inside(here, target):
                why = f"a loop: it links to {target}, a folder that holds it"
                self.skipped.append(SkippedFile(str(link), why))
            elif not self._into_other_class(link, target, own) and self._first_folder(link, target):
                to_read.append((link, target))
        elif is_image_name(link.name):
            if not os.path.exists(target):
                self.skipped.append(SkippedFile(str(link), f"a broken link (to {target})"))
            elif not self._into_other_class(link, target, own):
                self._add_file(link, target, found)

    def _into_other_class(self, link: Path, target: str, own: str) -> bool:
        """True (and the link skipped) when ``target`` lies in, or holds, a class folder other
        than ``own``: its images would get a second label, or cross between the splits."""
        if _inside(target, own):
            return False
        for real, name in self.classes.items():
            if real != own and (_inside(target, real) or _inside(real, target)):
                why = f"it leads into {real}, the class folder of {name!r}"
                self.skipped.append(SkippedFile(str(link), why))
                return True
        return False

    def _first_folder(self, path: Path, real: str) -> bool:
        """True the first time the real folder ``real`` is reached; later paths are skipped."""
        first = self.folders.setdefault(real, path)
        if first is not path:
            self.skipped.append(SkippedFile(str(path), f"the same folder as {first}"))
        return first is path

    def _add_file(self, path: Path, real: str, found: list[Path]) -> None:
        """Keep an image the first time its real file is reached; later paths are skipped."""
        first = self.files.setdefault(real, path)
        if first is path:
            found.append(path)
        else:
            self.skipped.append(SkippedFile(str(path), f"the same file as {first}"))


def _warn_skipped(root: Path, skipped: list[SkippedFile]) -> None:
    """One warning naming the first few paths left out while reading ``root``, and why."""
    if not skipped:
        return
    named = "; ".join(f"{s.path} ({s.reason})" for s in skipped[:_NAMED])
    more = f"; and {len(skipped) - _NAMED} more" if len(skipped) > _NAMED else ""
    count = f"{len(skipped)} path{'s' if len(skipped) > 1 else ''}"
    warnings.warn(
        f"{root}: left out {count} so that every image is read once, under one label "
        f"(a run lists them in skipped.csv): {named}{more}",
        stacklevel=3,
    )


def _subfolders(folder: Path) -> list[str]:
    """Visible sub-folder names of ``folder``, sorted (torchvision's class order)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _scan(folder: Path, labelled: Iterable[tuple[str, int]], walker: _Walker) -> FileSource:
    """Images of each (class folder name, label); a class folder without images is an error."""
    paths: list[Path] = []
    labels: list[int] = []
    for name, label in labelled:
        left_out = len(walker.skipped)
        files = walker.images(folder / name)
        if not files:
            left_out = len(walker.skipped) - left_out
            why = f"; {left_out} linked path(s) in it were left out" if left_out else ""
            raise DataError(
                f"class folder {folder / name} has no images "
                f"(looked for {', '.join(IMAGE_EXTENSIONS)}, hidden files ignored{why})"
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
    val_classes = _subfolders(val_dir) if val_dir is not None else []
    # One walker for both splits: a link may not carry an image across classes or splits.
    walker = _Walker([train_dir / c for c in classes] + [val_dir / c for c in val_classes])
    train = _scan(train_dir, ((c, i) for i, c in enumerate(classes)), walker)
    val = None
    if val_dir is not None:
        index = {c: i for i, c in enumerate(classes)}
        extra = [c for c in val_classes if c not in index]
        if extra:
            raise DataError(f"{val_dir} has classes that {train_dir} lacks: {', '.join(extra)}")
        val = _scan(val_dir, ((c, index[c]) for c in val_classes), walker)
    _warn_skipped(root, walker.skipped)
    name = root.resolve().name or "folder"
    return DatasetSplits(name, classes, train, val, skipped=walker.skipped)


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
    walker = _Walker([folder / w for w in present])
    source = _scan(folder, ((w, index[w]) for w in present), walker)
    _warn_skipped(folder, walker.skipped)
    descriptions = [info.index_to_description(i) for i in range(len(wnids))]
    names = _imagenet_names(descriptions, wnids)
    return DatasetSplits("imagenet-val", names, source, None, skipped=walker.skipped)


def _imagenet_names(descriptions: list[str], wnids: list[str]) -> list[str]:
    """First WordNet lemma per class; repeated lemmas ("crane", "maillot") get the wnid added."""
    first = [d.split(",")[0].strip() for d in descriptions]
    counts = Counter(first)
    return [f"{n} ({w})" if counts[n] > 1 else n for n, w in zip(first, wnids, strict=True)]
