"""MNIST / Fashion-MNIST idx reading, where the files are looked for, and the download."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cnnvit.data.readers import _common, idx, read_dataset
from cnnvit.data.types import DataError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, seed: int = 0, n: int = 12, gz: bool = True) -> dict[str, np.ndarray]:
    """Write the four idx files (gzipped or raw) with random content; return what was written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {
        "train_images": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n, dtype=np.uint8),
        "val_images": rng.integers(0, 256, (n // 2, 28, 28), dtype=np.uint8),
        "val_labels": rng.integers(0, 10, n // 2, dtype=np.uint8),
    }
    for key, array in written.items():
        data = _idx_bytes(array)
        name = idx.FILES[key] + (".gz" if gz else "")
        (folder / name).write_bytes(gzip.compress(data) if gz else data)
    return written


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No Debian copy, no cache, no data root, no network: only what a test puts in place."""
    monkeypatch.setattr(idx, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr(_common, "DEFAULT_CACHE", tmp_path / "cache")
    monkeypatch.setitem(idx.MIRRORS, "fashion-mnist", ["http://127.0.0.1:9/"])
    monkeypatch.setitem(idx.MIRRORS, "mnist", ["http://127.0.0.1:9/"])
    monkeypatch.delenv("CNNVIT_DATA", raising=False)
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(isolated: Path, gz: bool) -> None:
    written = write_mnist(isolated / "data", gz=gz)
    splits = idx.fashion_mnist(isolated / "data")
    same = idx.fashion_mnist(next((isolated / "data").iterdir()))  # a file names its folder
    np.testing.assert_array_equal(same.train.images, splits.train.images)
    assert splits.train.images.shape == (12, 28, 28, 1) and splits.train.images.dtype == np.uint8
    np.testing.assert_array_equal(splits.train.images[..., 0], written["train_images"])
    np.testing.assert_array_equal(splits.train.labels, written["train_labels"])
    np.testing.assert_array_equal(splits.val.images[..., 0], written["val_images"])
    np.testing.assert_array_equal(splits.val.labels, written["val_labels"])
    assert splits.train.labels.dtype == np.int64
    assert splits.classes[0] == "T-shirt/top" and splits.classes[9] == "Ankle boot"
    assert splits.mean == (0.2860,) and splits.std == (0.3530,)


def test_gzip_detected_by_magic_not_name(isolated: Path) -> None:
    written = write_mnist(isolated / "d", gz=False)
    path = isolated / "d" / idx.FILES["train_images"]
    path.write_bytes(gzip.compress(path.read_bytes()))  # gzip content under the plain name
    np.testing.assert_array_equal(idx.read_idx(path), written["train_images"])


def test_mnist_names_and_stats(isolated: Path) -> None:
    write_mnist(isolated / "MNIST" / "raw")
    splits = read_dataset(f"mnist:{isolated}")  # torchvision's layout under the given folder
    assert splits.classes == [str(d) for d in range(10)]
    assert splits.mean == (0.1307,) and splits.std == (0.3081,)


def test_bad_idx_files(isolated: Path) -> None:
    bad_magic = isolated / "bad_magic"
    bad_magic.write_bytes(b"\x08\x03\x00\x00" + bytes(100))
    with pytest.raises(DataError, match="not an idx file"):
        idx.read_idx(bad_magic)
    short = isolated / "short"
    short.write_bytes(_idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-5])
    with pytest.raises(DataError, match=r"header says shape \(3, 28, 28\)"):
        idx.read_idx(short)
    written = write_mnist(isolated / "swap", gz=False)
    # Labels where images belong: a 1-d file is not an image file.
    (isolated / "swap" / idx.FILES["train_images"]).write_bytes(_idx_bytes(written["train_labels"]))
    with pytest.raises(DataError, match="expected idx3 uint8 images"):
        idx.fashion_mnist(isolated / "swap")


def test_given_path_without_files_is_an_error(isolated: Path) -> None:
    write_mnist(isolated / "debian" / "fashion-mnist")  # a fallback exists ...
    (isolated / "empty").mkdir()
    with pytest.raises(DataError, match="no idx files in"):  # ... but is not used
        idx.fashion_mnist(isolated / "empty")


def test_resolution_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each place holds files with a different first training label, so we can tell them apart.
    places = {
        "given": isolated / "given",
        "root": isolated / "root" / "fashion-mnist",
        "env": isolated / "env" / "FashionMNIST" / "raw",
        "debian": isolated / "debian" / "fashion-mnist",
    }
    first = {
        key: int(write_mnist(p, seed=i)["train_labels"][0])
        for i, (key, p) in enumerate(places.items())
    }
    assert len(set(first.values())) == 4, "seeds must give distinct first labels"
    monkeypatch.setenv("CNNVIT_DATA", str(isolated / "env"))

    def first_label(**kwargs: object) -> int:
        return int(idx.fashion_mnist(**kwargs).train.labels[0])

    assert first_label(path=places["given"], root=isolated / "root") == first["given"]
    assert first_label(root=isolated / "root") == first["root"]
    assert first_label() == first["env"]
    monkeypatch.delenv("CNNVIT_DATA")
    assert first_label() == first["debian"]


def test_missing_everything_fails_fast_with_instructions(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Let it really try the (closed) local port, not just skip the download.
    monkeypatch.delenv("CNNVIT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        read_dataset("fashion-mnist")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data fashion-mnist:/that/folder" in message and "CNNVIT_DATA" in message
    for stem in idx.FILES.values():
        assert stem in message
    assert "127.0.0.1:9" in message  # says the download was tried and failed
    assert not any((isolated / "cache" / "fashion-mnist").glob("*.part"))


def test_offline_skips_download(isolated: Path) -> None:
    start = time.monotonic()
    with pytest.raises(DataError, match="skipped") as info:
        read_dataset("mnist")  # conftest sets CNNVIT_OFFLINE=1
    assert time.monotonic() - start < 1
    assert "apt-get" not in str(info.value)  # Debian has no MNIST package: no false hint
    with pytest.raises(DataError, match=r"download=False"):
        read_dataset("mnist", download=False)


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTP server on a free loopback port serving a folder."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served
    finally:
        server.shutdown()
        server.server_close()


def test_download_with_checksum(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, file_server: tuple[str, Path]
) -> None:
    url, served = file_server
    written = write_mnist(served)
    resources = [
        (name, hashlib.md5((served / name).read_bytes()).hexdigest())
        for name in (f"{stem}.gz" for stem in idx.FILES.values())
    ]
    monkeypatch.setitem(idx.RESOURCES, "fashion-mnist", resources)
    monkeypatch.setitem(idx.MIRRORS, "fashion-mnist", ["http://127.0.0.1:9/", url])
    monkeypatch.delenv("CNNVIT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    splits = idx.fashion_mnist(root=isolated / "root")  # first mirror is closed, second works
    np.testing.assert_array_equal(splits.train.labels, written["train_labels"])
    assert sorted(p.name for p in (isolated / "root" / "fashion-mnist").iterdir()) == sorted(
        name for name, _ in resources
    )  # in ROOT/<name>, and no temporary files left

    # A corrupted copy on the server is refused and nothing is kept.
    monkeypatch.setitem(idx.RESOURCES, "fashion-mnist", [(resources[0][0], "0" * 32)])
    with pytest.raises(DataError, match="checksum mismatch"):
        idx.fashion_mnist(root=isolated / "other")
    assert not any((isolated / "other").rglob("*idx*"))


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNNVIT_DATA", raising=False)
    splits = read_dataset("fashion-mnist")
    assert splits.train.images.shape == (60000, 28, 28, 1)
    assert splits.val.images.shape == (10000, 28, 28, 1)
    assert np.bincount(splits.train.labels).tolist() == [6000] * 10
    assert np.bincount(splits.val.labels).tolist() == [1000] * 10
    assert splits.train.labels[0] == 9  # the first training image is an ankle boot
    assert splits.classes[splits.train.labels[0]] == "Ankle boot"
    mean = splits.train.images.mean() / 255
    assert abs(mean - splits.mean[0]) < 1e-3  # the stated mean is the real one
