"""CIFAR-10/100 in the binary and python versions, archives, and the refusal of hostile pickles."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cnnvit.data.readers import _common, cifar, read_dataset
from cnnvit.data.types import DataError
from stand_in_data import write_cifar10_binary, write_cifar10_python, write_cifar100

N = 3  # images per batch file


@pytest.fixture(autouse=True)
def _no_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing a test extracts may land in the real ~/.cache."""
    monkeypatch.setattr(_common, "DEFAULT_CACHE", tmp_path / "user-cache")
    monkeypatch.delenv("CNNVIT_DATA", raising=False)


def _check(splits, images: np.ndarray, labels: np.ndarray, n_train: int) -> None:
    np.testing.assert_array_equal(splits.train.images, images[:n_train])
    np.testing.assert_array_equal(splits.val.images, images[n_train:])
    np.testing.assert_array_equal(splits.train.labels, labels[:n_train])
    np.testing.assert_array_equal(splits.val.labels, labels[n_train:])
    assert splits.train.labels.dtype == np.int64


def test_cifar10_binary(tmp_path: Path) -> None:
    images, labels = write_cifar10_binary(tmp_path / "cifar-10-batches-bin")
    for path in (tmp_path / "cifar-10-batches-bin", tmp_path):  # the folder or its parent
        splits = read_dataset(f"cifar10:{path}")
        _check(splits, images, labels, 5 * N)
        assert splits.classes == [f"name{i}" for i in range(10)]
        assert splits.mean == (0.4914, 0.4822, 0.4465)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_python(tmp_path: Path, protocol: int) -> None:
    images, labels = write_cifar10_python(tmp_path / "cifar-10-batches-py", protocol=protocol)
    splits = read_dataset(f"cifar10:{tmp_path}")
    _check(splits, images, labels, 5 * N)
    assert splits.classes == [f"name{i}" for i in range(10)]


def test_cifar10_python_numpy1_pickles(tmp_path: Path) -> None:
    # The official files were written by numpy 1.x: their arrays name numpy.core.multiarray.
    folder = tmp_path / "cifar-10-batches-py"
    images, labels = write_cifar10_python(folder, protocol=2)
    for path in folder.iterdir():
        data = path.read_bytes()
        assert b"numpy._core.multiarray" in data or path.name == "batches.meta"
        path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    _check(read_dataset(f"cifar10:{folder}"), images, labels, 5 * N)


@pytest.mark.parametrize("binary", [True, False])
def test_cifar100_fine_labels(tmp_path: Path, binary: bool) -> None:
    folder = tmp_path / ("cifar-100-binary" if binary else "cifar-100-python")
    images, fine = write_cifar100(folder, binary)
    splits = read_dataset(f"cifar100:{folder}")
    _check(splits, images, fine, N)
    assert splits.num_classes == 100 and splits.classes[7] == "fine7"
    assert splits.std == (0.2673, 0.2564, 0.2762)


def test_archive_extracted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNNVIT_DATA", raising=False)
    images, labels = write_cifar10_python(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "dl" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    _check(read_dataset(f"cifar10:{archive}"), images, labels, 5 * N)
    assert (tmp_path / "dl" / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert [p.name for p in (tmp_path / "dl").iterdir() if p.name.startswith(".")] == []
    archive.unlink()  # now the extracted copy, found through the parent folder, is enough
    _check(read_dataset(f"cifar10:{tmp_path / 'dl'}"), images, labels, 5 * N)
    # With a data root, an archive is extracted there instead.
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    _check(cifar.cifar10(archive, root=tmp_path / "root"), images, labels, 5 * N)
    assert (tmp_path / "root" / "cifar-10-batches-py" / "test_batch").is_file()
    assert not (tmp_path / "user-cache").exists()


def test_missing_or_damaged_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNNVIT_DATA", raising=False)
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz"):
        read_dataset("cifar10")  # no path, no data root: says where to download it
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar10_binary(folder)
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match=r"data_batch_3\.bin"):
        read_dataset(f"cifar10:{folder}")
    (folder / "data_batch_3.bin").write_bytes(bytes(3073 * 2 + 5))
    with pytest.raises(DataError, match="not a whole number"):
        read_dataset(f"cifar10:{folder}")
    py = tmp_path / "cifar-10-batches-py"
    write_cifar10_python(py)
    (py / "data_batch_2").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable CIFAR pickle"):
        read_dataset(f"cifar10:{py}")


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _CallsEval:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


@pytest.mark.parametrize("kind", ["os.system", "eval"])
def test_malicious_pickle_refused_and_not_run(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_python(folder)
    marker = tmp_path / "MARKER"
    payload = (
        _RunsCommand(f"touch {marker}")
        if kind == "os.system"
        else _CallsEval(f"open({str(marker)!r}, 'w').close()")
    )
    # Check the payload really works when unpickled normally, so the test can fail.
    pickle.loads(pickle.dumps(payload))
    assert marker.exists()
    marker.unlink()

    evil = {b"data": payload, b"labels": [0]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError, match="refused to unpickle") as info:
        read_dataset(f"cifar10:{folder}")
    assert ("system" if kind == "os.system" else "eval") in str(info.value)
    assert "(global " in str(info.value)
    assert not marker.exists()
