"""CIFAR-10 and CIFAR-100, in both official versions (binary and python pickles).

Accepted paths (``--data cifar10:PATH``): the extracted folder (``cifar-10-batches-bin``,
``cifar-10-batches-py``, ``cifar-100-binary``, ``cifar-100-python``), a folder holding one of
those or their ``.tar.gz``, or the ``.tar.gz`` itself. An archive is extracted once (tarfile's
``filter="data"``, which refuses absolute paths, ``..`` and links out of the folder) next to it,
or into the data root when one is set; the extracted folder is found on later calls. Without a
path the data root (``root`` argument or ``$CNNVIT_DATA``) and ``ROOT/cifar10`` are searched.

Binary version: records of label byte(s) + 3072 pixel bytes (1024 R, 1024 G, 1024 B, row-major);
CIFAR-100 has two label bytes, coarse then fine, and the fine label is used. Class names come from
``batches.meta.txt`` / ``fine_label_names.txt``.

Python version: pickles of dicts with bytes keys (``b"data"`` (N, 3072) uint8, ``b"labels"`` or
``b"fine_labels"``; meta ``b"label_names"`` / ``b"fine_label_names"``). A pickle can run code, so
they are read by :class:`RestrictedUnpickler`, which resolves only the few numpy globals an array
needs and refuses everything else with a :class:`DataError`, before anything runs.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100

from cnnvit.data.readers._common import cache_dir, data_root
from cnnvit.data.types import ArraySource, DataError, DatasetSplits

CIFAR10_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_MEAN_STD = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

_PIXELS = 3 * 32 * 32
_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_FOLDERS = {  # version -> extracted folder name
    "cifar10": {"bin": "cifar-10-batches-bin", "py": "cifar-10-batches-py"},
    "cifar100": {"bin": "cifar-100-binary", "py": "cifar-100-python"},
}
_ARCHIVES = {
    "cifar10": ["cifar-10-binary.tar.gz", "cifar-10-python.tar.gz"],
    "cifar100": ["cifar-100-binary.tar.gz", "cifar-100-python.tar.gz"],
}
_URLS = {"cifar10": CIFAR10.url, "cifar100": CIFAR100.url}


def cifar10(path: Path | None = None, *, root: Path | None = None) -> DatasetSplits:
    """CIFAR-10: 50,000 train and 10,000 test images, (N, 32, 32, 3) uint8, 10 classes."""
    return read_cifar("cifar10", path, root=root)


def cifar100(path: Path | None = None, *, root: Path | None = None) -> DatasetSplits:
    """CIFAR-100 (fine labels): 50,000 train and 10,000 test images, (N, 32, 32, 3), 100 classes."""
    return read_cifar("cifar100", path, root=root)


def read_cifar(name: str, path: Path | None, *, root: Path | None = None) -> DatasetSplits:
    """Locate (extracting if needed) and read CIFAR ``name`` ("cifar10" or "cifar100")."""
    folder, version = _locate(name, path, root)
    readers = {
        ("cifar10", "bin"): _cifar10_binary,
        ("cifar10", "py"): _cifar10_python,
        ("cifar100", "bin"): _cifar100_binary,
        ("cifar100", "py"): _cifar100_python,
    }
    classes, train, val = readers[name, version](folder)
    for split in (train, val):
        if split.labels.size and split.labels.max() >= _NUM_CLASSES[name]:
            raise DataError(f"{folder}: label {split.labels.max()} out of range for {name}")
    mean, std = CIFAR10_MEAN_STD if name == "cifar10" else CIFAR100_MEAN_STD
    return DatasetSplits(name, classes, train, val, mean=mean, std=std)


# ---------------------------------------------------------------------------- finding the files


def _version_of(name: str, folder: Path) -> str | None:
    """The version ("bin" or "py") when ``folder`` is an extracted CIFAR folder, else None."""
    first = {"cifar10": ("data_batch_1.bin", "data_batch_1"), "cifar100": ("train.bin", "train")}
    binary, python = first[name]
    if (folder / binary).is_file():
        return "bin"
    if (folder / python).is_file():
        return "py"
    return None


def _search(name: str, folder: Path, root: Path | None) -> tuple[Path, str] | None:
    """Look for the extracted data in ``folder`` or its standard sub-folders, then archives."""
    for candidate in (folder, *(folder / sub for sub in _FOLDERS[name].values())):
        version = _version_of(name, candidate)
        if version:
            return candidate, version
    for archive in _ARCHIVES[name]:
        if (folder / archive).is_file():
            return _search(name, _extract(folder / archive, name, root), None)
    return None


def _locate(name: str, path: Path | None, root: Path | None) -> tuple[Path, str]:
    if path is None:
        base = data_root(root)
        for folder in [base, base / name] if base is not None else []:
            found = _search(name, folder, root)
            if found:
                return found
        raise DataError(_how_to_get(name, "no path was given and the data root has no copy"))
    path = Path(path).expanduser()
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise DataError(f"{path} is neither a CIFAR folder nor a .tar.gz archive")
        found = _search(name, _extract(path, name, root), None)
    else:
        found = _search(name, path, root)
    if found is None:
        raise DataError(_how_to_get(name, f"{path} holds no {_TITLES[name]} files"))
    return found


def _how_to_get(name: str, problem: str) -> str:
    versions = " or ".join(_FOLDERS[name].values())
    return (
        f"{_TITLES[name]}: {problem}. Download {_URLS[name]} (python version) or the binary "
        f"version from https://www.cs.toronto.edu/~kriz/cifar.html and pass --data {name}:PATH, "
        f"PATH being the .tar.gz, the extracted folder ({versions}) or its parent."
    )


def _extract(archive: Path, name: str, root: Path | None) -> Path:
    """Extract ``archive`` once into the data root or next to it; return that folder."""
    base = data_root(root) or archive.parent
    try:
        base.mkdir(parents=True, exist_ok=True)
        writable = os.access(base, os.W_OK)
    except OSError:
        writable = False
    if not writable:  # e.g. an archive on a read-only share: use the user's cache instead
        base = cache_dir(name, None)
        base.mkdir(parents=True, exist_ok=True)
    if any(_version_of(name, base / sub) for sub in _FOLDERS[name].values()):
        return base  # extracted by an earlier call
    # Extract into a temporary folder and move the result in, so an interrupted extraction
    # never leaves a half-filled folder that a later call would take for complete.
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=".extract-"))
    try:
        with tarfile.open(archive) as tar:
            _safe_extract(tar, tmp)
        for entry in tmp.iterdir():
            if not (base / entry.name).exists():
                os.replace(entry, base / entry.name)
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"cannot extract {archive}: {err}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return base


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract regular files and folders only, never outside ``dest``.

    Python >= 3.11.4 has tarfile's "data" filter for this; Debian 12 ships 3.11.2, which has
    not, so older interpreters get the same rule checked here before extracting.
    """
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()
    for member in tar.getmembers():
        target = (dest / member.name).resolve()
        if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
            raise DataError(
                f"refusing to extract {member.name!r}: not a plain file inside the archive"
            )
    tar.extractall(dest)


# ---------------------------------------------------------------------------- binary version


def _read_records(path: Path, label_bytes: int, label_at: int) -> ArraySource:
    """Read fixed-size records (labels then 3072 pixel bytes) from one binary batch file."""
    if not path.is_file():
        raise DataError(f"missing CIFAR file {path}")
    raw = np.fromfile(path, np.uint8)
    size = label_bytes + _PIXELS
    if raw.size == 0 or raw.size % size:
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of {size}-byte records")
    records = raw.reshape(-1, size)  # (N, label_bytes + 3072)
    images = records[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
    return ArraySource(np.ascontiguousarray(images), records[:, label_at].astype(np.int64))


def _concat(parts: list[ArraySource]) -> ArraySource:
    return ArraySource(
        np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts])
    )


def _read_names(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"missing CIFAR class-name file {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _cifar10_binary(folder: Path) -> tuple[list[str], ArraySource, ArraySource]:
    train = _concat([_read_records(folder / f"data_batch_{i}.bin", 1, 0) for i in range(1, 6)])
    val = _read_records(folder / "test_batch.bin", 1, 0)
    return _read_names(folder / "batches.meta.txt"), train, val


def _cifar100_binary(folder: Path) -> tuple[list[str], ArraySource, ArraySource]:
    # Two label bytes per record: coarse (20 superclasses), then fine (100 classes); use fine.
    train = _read_records(folder / "train.bin", 2, 1)
    val = _read_records(folder / "test.bin", 2, 1)
    return _read_names(folder / "fine_label_names.txt"), train, val


# ---------------------------------------------------------------------------- python version


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and plain containers, and nothing else.

    ``find_class`` is the only way a pickle reaches code (functions to call, classes to build);
    the official CIFAR pickles need numpy's array reconstruction and nothing more, so any other
    global (``os.system``, ``builtins.eval``, ``subprocess.Popen`` ...) is refused before it runs.
    """

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),  # numpy 1.x array pickles
            ("numpy._core.multiarray", "_reconstruct"),  # numpy 2.x
            ("numpy.core.numeric", "_frombuffer"),  # protocol-5 array pickles
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # bytes written by Python 3 with protocol < 3
        }
    )

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # the official files are Python 2 pickles
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise DataError(
                f"refused to unpickle {self.path}: it references code that a CIFAR file never "
                f"needs (global {module}.{name}); the file is not a genuine CIFAR batch"
            )
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            # numpy 2 keeps numpy.core only as a deprecated alias of numpy._core.
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def load_pickle(path: Path) -> dict:
    """Load a CIFAR python-version pickle safely (see :class:`RestrictedUnpickler`)."""
    if not path.is_file():
        raise DataError(f"missing CIFAR file {path}")
    try:
        with path.open("rb") as f:
            obj = RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as err:  # a damaged pickle can fail in many ways; all mean "corrupt"
        raise DataError(
            f"{path} is not a readable CIFAR pickle ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def _field(batch: dict, key: str, path: Path) -> Any:
    # The official files have bytes keys; a re-saved Python 3 copy may have str keys.
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataError(f"{path}: no {key!r} entry (found {sorted(map(str, batch))})")


def _read_batch(path: Path, label_key: str) -> ArraySource:
    batch = load_pickle(path)
    data = np.asarray(_field(batch, "data", path))
    labels = np.asarray(_field(batch, label_key, path), np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DataError(f"{path}: data is {data.shape} {data.dtype}, expected (N, 3072) uint8")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
    return ArraySource(np.ascontiguousarray(images), labels)


def _pickled_names(path: Path, key: str) -> list[str]:
    names = _field(load_pickle(path), key, path)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _cifar10_python(folder: Path) -> tuple[list[str], ArraySource, ArraySource]:
    train = _concat([_read_batch(folder / f"data_batch_{i}", "labels") for i in range(1, 6)])
    val = _read_batch(folder / "test_batch", "labels")
    return _pickled_names(folder / "batches.meta", "label_names"), train, val


def _cifar100_python(folder: Path) -> tuple[list[str], ArraySource, ArraySource]:
    train = _read_batch(folder / "train", "fine_labels")
    val = _read_batch(folder / "test", "fine_labels")
    return _pickled_names(folder / "meta", "fine_label_names"), train, val
