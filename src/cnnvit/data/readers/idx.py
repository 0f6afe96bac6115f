"""MNIST and Fashion-MNIST from their idx files, found locally or downloaded with a checksum.

The four files are ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each gzipped (``.gz``) or not; gzip is
recognised by its magic bytes, not the name. The idx header (magic number, then one big-endian
uint32 per dimension) is parsed and checked against the file size before numpy reads the data.

Where the files are looked for, first hit wins:

1. the path given (``--data fashion-mnist:/folder``), or its ``fashion-mnist`` or
   ``FashionMNIST/raw`` sub-folder (torchvision's layout); a given path that lacks the files is an
   error, never silently replaced by another copy;
2. the data root (``root`` argument, else ``$CNNVIT_DATA``): ``ROOT/fashion-mnist``,
   ``ROOT/FashionMNIST/raw`` (``ROOT/mnist``, ``ROOT/MNIST/raw`` for MNIST);
3. Debian's package folder ``/usr/share/datasets/<name>`` (``apt-get install
   dataset-fashion-mnist``; Debian ships no MNIST, the folder is checked anyway);
4. the download cache ``~/.cache/cnnvit/<name>`` (when no data root is set);
5. a download from torchvision's mirrors with torchvision's MD5 checksums into ``ROOT/<name>``
   (``~/.cache/cnnvit/<name>`` without a root), unless ``download=False``, ``CNNVIT_OFFLINE=1``
   or ``HF_HUB_OFFLINE=1``. Connecting is bounded to a few seconds in all, so with no network
   the error below arrives quickly instead of hanging.

If all fail, a :class:`DataError` says how to get the files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
from torchvision.datasets import MNIST, FashionMNIST

from cnnvit.data.readers._common import cache_dir, data_root
from cnnvit.data.types import ArraySource, DataError, DatasetSplits
from cnnvit.net import offline_reason, unreachable

# Module-level so tests (and unusual installs) can point them elsewhere.
DEBIAN_DIR = Path("/usr/share/datasets")
MIRRORS: dict[str, list[str]] = {
    "fashion-mnist": list(FashionMNIST.mirrors),
    "mnist": list(MNIST.mirrors),
}
RESOURCES: dict[str, list[tuple[str, str]]] = {  # (file name, md5), from torchvision
    "fashion-mnist": list(FashionMNIST.resources),
    "mnist": list(MNIST.resources),
}
CONNECT_TIMEOUT = 3.0  # seconds for one connection attempt
CONNECT_BUDGET = 4.0  # seconds for all connection attempts together

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",
    "val_labels": "t10k-labels-idx1-ubyte",
}
_SUBDIRS = {"fashion-mnist": ["fashion-mnist", "FashionMNIST/raw"], "mnist": ["mnist", "MNIST/raw"]}
_TITLES = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST"}
CLASSES = {
    "fashion-mnist": list(FashionMNIST.classes),  # T-shirt/top, Trouser, ..., Ankle boot
    "mnist": [str(d) for d in range(10)],
}
MEAN_STD = {"fashion-mnist": ((0.2860,), (0.3530,)), "mnist": ((0.1307,), (0.3081,))}

# idx type byte -> numpy dtype (idx stores multi-byte values big-endian).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def fashion_mnist(
    path: Path | None = None, *, root: Path | None = None, download: bool = True
) -> DatasetSplits:
    """Fashion-MNIST: 60,000 train and 10,000 test images, (N, 28, 28, 1) uint8, 10 classes."""
    return read_mnist_like("fashion-mnist", path, root=root, download=download)


def mnist(
    path: Path | None = None, *, root: Path | None = None, download: bool = True
) -> DatasetSplits:
    """MNIST digits: 60,000 train and 10,000 test images, (N, 28, 28, 1) uint8, classes '0'..'9'."""
    return read_mnist_like("mnist", path, root=root, download=download)


def read_mnist_like(
    name: str, path: Path | None, *, root: Path | None = None, download: bool = True
) -> DatasetSplits:
    """Find the idx files of ``name`` ("fashion-mnist" or "mnist") and read them."""
    if path is not None:
        path = Path(path).expanduser()
        if path.is_file():  # one of the four files was named: use its folder
            path = path.parent
        folder = _first_complete([path, *(path / sub for sub in _SUBDIRS[name])])
        if folder is None:
            raise DataError(f"{_TITLES[name]}: no idx files in {path}. {_files_hint()}")
        return read_idx_folder(folder, name)
    looked = _local_candidates(name, root)
    folder = _first_complete(looked)
    if folder is None:
        dest = cache_dir(name, root)
        outcome = _download(name, dest) if download else "skipped (download=False)"
        if outcome is None:
            folder = dest
        else:
            raise DataError(_not_found_message(name, looked, outcome, dest))
    return read_idx_folder(folder, name)


def _local_candidates(name: str, root: Path | None) -> list[Path]:
    base = data_root(root)
    found = [base / sub for sub in _SUBDIRS[name]] if base is not None else []
    found.append(DEBIAN_DIR / name)
    if base is None:
        found.append(cache_dir(name, None))  # where an earlier download went
    return found


def _find_files(folder: Path) -> dict[str, Path] | None:
    """The four idx files in ``folder`` (plain or .gz), or None when any is missing."""
    found = {}
    for key, stem in FILES.items():
        hits = [p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()]
        if not hits:
            return None
        found[key] = hits[0]
    return found


def _first_complete(folders: list[Path]) -> Path | None:
    return next((f for f in folders if _find_files(f) is not None), None)


def read_idx_folder(folder: Path, name: str) -> DatasetSplits:
    """Read the four idx files of a folder into train and val splits."""
    files = _find_files(folder)
    if files is None:
        raise DataError(f"{folder} lacks some idx files. {_files_hint()}")
    train = _read_pair(files["train_images"], files["train_labels"])
    val = _read_pair(files["val_images"], files["val_labels"])
    mean, std = MEAN_STD.get(name, (None, None))
    classes = CLASSES.get(name, [str(d) for d in range(10)])
    return DatasetSplits(name, list(classes), train, val, mean=mean, std=std)


def _read_pair(images_path: Path, labels_path: Path) -> ArraySource:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{images_path}: expected idx3 uint8 images, got {images.ndim}-d {images.dtype}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(
            f"{labels_path}: expected idx1 uint8 labels, got {labels.ndim}-d {labels.dtype}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} {len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: label {labels.max()} is out of range 0..9")
    return ArraySource(images[..., None], labels.astype(np.int64))  # (N, H, W, 1)


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (gzipped or not) into an array shaped as its header says."""
    raw = Path(path).read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: corrupt gzip data ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an idx file (magic bytes {raw[:4].hex() or 'none'})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataError(f"{path}: idx header cut short")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = offset + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path}: header says shape {dims} ({expected} bytes) but the file has {len(raw)} bytes"
        )
    # astype copies into native byte order; frombuffer over bytes is read-only and torch warns
    # on read-only arrays.
    return np.frombuffer(raw, dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def _download(name: str, dest: Path) -> str | None:
    """Download the idx files into ``dest``; None on success, else why it did not happen."""
    var = offline_reason()
    if var:
        return f"skipped ({var} is set)"
    # Until one mirror answers, all attempts share CONNECT_BUDGET, so a machine without network
    # gets its error in seconds; once connected, each request gets the full timeout.
    deadline = time.monotonic() + CONNECT_BUDGET
    errors = []
    for base in MIRRORS[name]:
        try:
            for file_name, md5 in RESOURCES[name]:
                timeout = min(CONNECT_TIMEOUT, deadline - time.monotonic())
                if timeout <= 0.1:
                    raise TimeoutError("no time left to connect")
                _fetch(base.rstrip("/") + "/" + file_name, dest / file_name, md5, timeout)
                deadline = float("inf")
            return None
        except (OSError, DataError) as err:
            errors.append(f"{base}: {err}")
    return "failed: " + "; ".join(errors)


def _fetch(url: str, target: Path, md5: str, timeout: float) -> None:
    """Download ``url`` to ``target`` atomically, checking its MD5; a valid file is kept."""
    if target.is_file() and _md5(target) == md5:
        return
    if (err := unreachable(url, timeout)) is not None:
        raise err
    with urllib.request.urlopen(url, timeout=timeout) as response:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, "wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != md5:
                raise DataError(f"checksum mismatch for {url} (got {digest.hexdigest()})")
            os.replace(tmp, target)  # atomic: a reader never sees a half-written file
        finally:
            Path(tmp).unlink(missing_ok=True)


def _md5(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _files_hint() -> str:
    names = ", ".join(f"{stem}.gz" for stem in FILES.values())
    return f"Expected the four files {names} (gzipped or not)."


def _not_found_message(name: str, looked: list[Path], outcome: str, dest: Path) -> str:
    files = ", ".join(f"{stem}.gz" for stem in FILES.values())
    ways = [
        f"put the four files {files} (gzipped or not) in a folder and pass "
        f"--data {name}:/that/folder, or set CNNVIT_DATA=/some/dir with the files in "
        f"/some/dir/{name}",
        f"allow the download (network access, download enabled, neither CNNVIT_OFFLINE=1 nor "
        f"HF_HUB_OFFLINE=1); it goes to {dest}",
    ]
    if name == "fashion-mnist":
        ways.insert(
            0,
            "on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
            f"(installs the files into {DEBIAN_DIR / name})",
        )
    return "\n".join(
        [
            f"{_TITLES[name]} was not found. Looked in: {', '.join(str(p) for p in looked)}.",
            f"Download: {outcome}.",
            "To get it:",
            *(f"  - {'or ' if i else ''}{way}" for i, way in enumerate(ways)),
        ]
    )
