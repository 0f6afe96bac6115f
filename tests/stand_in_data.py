"""Writers of small datasets in the real on-disk formats (CIFAR-10/100 binary and python, SVHN
.mat, the Kaggle HAR CSV layout), for reader tests and for the ready studies' end-to-end tests;
and a Hugging Face cache entry as a hub download of published weights leaves it.

Images are random; labels are as given or random. Sizes are the caller's.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import scipy.io
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

# The real CIFAR-10 class names, in the order of batches.meta.
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # (N, 32, 32, 3)


def _planar(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072) in the files' order: all R, then all G, then all B."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar10_binary(
    folder: Path, seed: int = 0, per_batch: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """``cifar-10-batches-bin``: 5 train batches + test, ``per_batch`` images each; class names
    ``name0``..``name9``. Returns all images (train batches first) and labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    n = per_batch
    images, labels = _images(rng, 6 * n), rng.integers(0, 10, 6 * n, dtype=np.uint8)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for k, name in enumerate(names):
        part = slice(k * n, (k + 1) * n)
        records = np.concatenate([labels[part, None], _planar(images[part])], axis=1)
        records.astype(np.uint8).tofile(folder / name)
    (folder / "batches.meta.txt").write_text("\n".join(f"name{i}" for i in range(10)) + "\n\n")
    return images, labels


def write_cifar10_python(
    folder: Path,
    seed: int = 0,
    protocol: int = 2,
    per_batch: int = 3,
    label_names: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``cifar-10-batches-py`` (pickled dicts, as the official files); class names ``name0``..
    unless ``label_names`` is given (:data:`CIFAR10_CLASSES` for the real ones)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    n = per_batch
    images, labels = _images(rng, 6 * n), rng.integers(0, 10, 6 * n)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        part = slice(k * n, (k + 1) * n)
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in labels[part]],
            b"data": _planar(images[part]),
            b"filenames": [f"{i}.png".encode() for i in range(n)],
        }
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    classes = label_names or tuple(f"name{i}" for i in range(10))
    meta = {b"label_names": [c.encode() for c in classes], b"num_vis": 3072}
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump(meta, f, protocol=protocol)
    return images, labels


def write_cifar100(
    folder: Path, binary: bool, seed: int = 0, per_split: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """``cifar-100-binary`` or ``cifar-100-python``: ``per_split`` train and test images; fine
    class names ``fine0``..``fine99``. Returns images (train first) and fine labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    n = per_split
    images, fine = _images(rng, 2 * n), rng.integers(0, 100, 2 * n, dtype=np.uint8)
    coarse = fine // 5
    for name, part in (("train", slice(0, n)), ("test", slice(n, 2 * n))):
        if binary:
            records = np.concatenate(
                [coarse[part, None], fine[part, None], _planar(images[part])], 1
            )
            records.astype(np.uint8).tofile(folder / f"{name}.bin")
        else:
            batch = {
                b"fine_labels": [int(v) for v in fine[part]],
                b"coarse_labels": [int(v) for v in coarse[part]],
                b"data": _planar(images[part]),
            }
            (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = [f"fine{i}" for i in range(100)]
    if binary:
        (folder / "fine_label_names.txt").write_text("\n".join(names))
        (folder / "coarse_label_names.txt").write_text("\n".join(f"c{i}" for i in range(20)))
    else:
        meta = {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": []}
        (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return images, fine


def write_svhn(path: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Write a .mat like the official one; return images (N, 32, 32, 3) and digits 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    digits = np.arange(n) % 10
    stored = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]  # (N, 1), 0 stored as 10
    scipy.io.savemat(path, {"X": images.transpose(1, 2, 3, 0), "y": stored})
    return images, digits


def write_har(root: Path, classes: list[str], per_class: int, size: int = 48) -> None:
    """The Kaggle Human Action Recognition layout: ``Training_set.csv`` (filename,label) naming
    JPEGs in ``train/``, and an unlabelled ``Testing_set.csv`` + ``test/``."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    lines = ["filename,label"]
    for i in range(per_class * len(classes)):
        name = f"Image_{i + 1}.jpg"
        pixels = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)  # not square, as HAR
        Image.fromarray(pixels).save(root / "train" / name, quality=90)
        lines.append(f"{name},{classes[i % len(classes)]}")
    (root / "Training_set.csv").write_text("\n".join(lines) + "\n")
    (root / "Testing_set.csv").write_text("filename\nImage_9999.jpg\n")
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(root / "test" / "Image_9999.jpg")


def hub_cache_entry(
    monkeypatch: pytest.MonkeyPatch, cache: Path, arch: str, state_dict: dict[str, torch.Tensor]
) -> None:
    """Lay out a Hugging Face cache entry under ``cache`` for ``arch``'s published weights, as a
    download would leave it, and make it the hub cache for this test."""
    repo_id = timm.models.get_pretrained_cfg(arch).hf_hub_id
    snapshot = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    save_file(state_dict, snapshot / "model.safetensors")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
