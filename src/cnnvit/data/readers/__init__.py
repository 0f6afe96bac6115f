"""Dataset readers: ``read_dataset("NAME[:PATH]")`` turns a data spec into :class:`DatasetSplits`.

Names (see each module for the layouts it accepts):

- ``fashion-mnist``, ``mnist`` (idx files; found locally, in Debian's package, or downloaded),
- ``cifar10``, ``cifar100`` (binary or python version, folder or ``.tar.gz``),
- ``svhn`` (``train_32x32.mat``/``test_32x32.mat``),
- ``folder`` (one sub-folder per class), ``csv`` (``filename,label`` CSV + image folder),
  ``imagenet-val`` (wnid sub-folders, standard ImageNet-1k indices),
- ``synthetic`` (generated; ``synthetic:num_classes=5,image_size=64`` sets its arguments).

A dataset with fewer than two classes is refused (a :class:`DataError`).

Names are case-insensitive and ``_`` equals ``-``; ``fashionmnist``, ``cifar-10`` and
``cifar-100`` are accepted too.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from pathlib import Path

from cnnvit.data.readers import cifar, folder, idx, svhn, synthetic
from cnnvit.data.types import DataError, DatasetSplits

# Every reader takes (path, root, download); the lambdas drop what a format does not use.
Reader = Callable[[Path | None, Path | None, bool], DatasetSplits]

READERS: dict[str, Reader] = {
    "fashion-mnist": lambda p, r, d: idx.fashion_mnist(p, root=r, download=d),
    "mnist": lambda p, r, d: idx.mnist(p, root=r, download=d),
    "cifar10": lambda p, r, d: cifar.cifar10(p, root=r),
    "cifar100": lambda p, r, d: cifar.cifar100(p, root=r),
    "svhn": lambda p, r, d: svhn.svhn(p, root=r),
    "folder": lambda p, r, d: folder.image_folder(p),
    "csv": lambda p, r, d: folder.csv_folder(p),
    "imagenet-val": lambda p, r, d: folder.imagenet_val(p),
}
KNOWN_DATASETS: list[str] = [*READERS, "synthetic"]
_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}


def read_dataset(spec: str, *, root: Path | None = None, download: bool = True) -> DatasetSplits:
    """Read the dataset named by ``spec`` ("NAME" or "NAME:PATH")."""
    name, path = check_spec(spec)
    if name == "synthetic":
        return synthetic.synthetic(**_synthetic_options(spec.partition(":")[2]))
    splits = READERS[name](path, root, download)
    _require_two_classes(splits, spec)
    return splits


def _require_two_classes(splits: DatasetSplits, spec: str) -> None:
    """A classifier needs two classes: with one, training scores 100 % and means nothing."""
    if splits.num_classes >= 2:
        return
    found = f"1 class ({splits.classes[0]!r})" if splits.classes else "no classes"
    raise DataError(
        f"dataset {splits.name} (--data {spec}) has {found}; a classifier needs at least 2: "
        "add images of another class (for folder:, one sub-folder per class)"
    )


def check_spec(spec: str) -> tuple[str, Path | None]:
    """The canonical name and path of ``spec``, without reading anything: a DataError when the
    name is unknown, synthetic options are malformed or the path does not exist. Cheap enough
    to check every study of a file before the first one starts."""
    raw_name, _, rest = spec.partition(":")
    name = _canonical(raw_name)
    if name == "synthetic":
        _synthetic_options(rest)
        return name, None
    path = Path(rest).expanduser() if rest else None
    if path is not None and not path.exists():
        raise DataError(f"{name}: the path {path} does not exist (from --data {spec!r})")
    return name, path


def _canonical(raw: str) -> str:
    name = raw.strip().lower().replace("_", "-")
    name = _ALIASES.get(name, name)
    if name not in KNOWN_DATASETS:
        close = difflib.get_close_matches(name, KNOWN_DATASETS, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DataError(
            f"unknown dataset {raw!r}.{hint} Known: {', '.join(KNOWN_DATASETS)} "
            "(write NAME or NAME:PATH)"
        )
    return name


def _synthetic_options(text: str) -> dict[str, int]:
    """Parse "key=value,..." integer options of the synthetic generator."""
    allowed = set(inspect.signature(synthetic.synthetic).parameters)
    options = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in allowed or not value.strip().lstrip("-").isdigit():
            raise DataError(
                f"synthetic options are key=integer pairs with keys {', '.join(sorted(allowed))}; "
                f"got {item!r}"
            )
        options[key] = int(value)
    return options


__all__ = ["KNOWN_DATASETS", "READERS", "check_spec", "read_dataset"]
