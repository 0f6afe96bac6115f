"""A run folder has one writer, resume replays its recipe, and a full disk loses nothing
(issue 13, items 1, 4 and 6)."""

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cnnvit.cli import main
from cnnvit.folders import RunFolder
from cnnvit.locks import writing
from cnnvit.train import checkpoint as checkpoint_module

DATA = "synthetic:train_size=600,val_size=200,image_size=16"


def _train(out: Path, *more: str) -> int:
    return main(
        ["train", "--data", DATA, "--out", str(out), "--batch-size", "64", "--no-progress", *more]
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert _train(out, "--epochs", "1") == 0
    return out


def _snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_resume_refuses_a_longer_schedule_and_says_how_to_train_it(finished, capsys):
    before = _snapshot(finished)
    assert main(["train", "--resume", str(finished), "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "train.epochs (1 -> 2)" in err
    assert f"--config {finished / 'config.yaml'} --set train.epochs=2 --out NEW_DIR" in err
    assert _snapshot(finished) == before  # nothing touched


def test_resume_may_change_only_how_the_run_is_shown(finished, capsys):
    assert main(["train", "--resume", str(finished), "--lr", "0.5"]) == 2
    assert "optim.lr (0.002 -> 0.5)" in capsys.readouterr().err
    # --no-progress changes nothing trained: the finished run reads back the same numbers
    results = json.loads((finished / "results.json").read_text())
    assert main(["train", "--resume", str(finished), "--no-progress"]) == 0
    again = json.loads((finished / "results.json").read_text())
    assert again["test_top1"] == results["test_top1"] and again["epochs_completed"] == 1


def test_a_run_folder_being_written_refuses_a_second_train(finished, capsys):
    folder = RunFolder(finished)
    before = _snapshot(finished)
    with writing(folder.path, folder.lock):  # this process is the writer
        assert main(["train", "--resume", str(finished), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert _train(finished) == 2
    assert len(err.splitlines()) == 1
    assert f"process {os.getpid()} on host {socket.gethostname()}" in err
    assert str(folder.lock) in err  # how to clear it if that process is gone
    assert not folder.lock.exists()  # released when the writer is done
    assert _snapshot(finished) == before


def test_a_lock_left_by_a_dead_process_is_taken_over(finished, tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    out = tmp_path / "run"
    out.mkdir()
    lock = RunFolder(out).lock
    lock.write_text(f"{dead.stdout.strip()}\n{socket.gethostname()}\n")
    assert _train(out, "--epochs", "1") == 0
    assert json.loads((out / "results.json").read_text())["status"] == "completed"
    assert not lock.exists()


def test_a_full_disk_ends_in_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    real = checkpoint_module.torch.save
    calls = {"n": 0}

    def full_on_second_checkpoint(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_on_second_checkpoint)
    out = tmp_path / "run"
    assert _train(out, "--epochs", "2") == 2
    err = capsys.readouterr().err.strip()  # the log (rich writes to stderr), then the error
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("cnnvit train: error: No space left on device: ")
    assert "free some space" in err.splitlines()[-1]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "failed" and "No space left" in results["error"]
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch-0001", "latest.json"]
    assert not list(out.rglob(".*tmp*")) and not (out / ".cnnvit.lock").exists()

    monkeypatch.setattr(checkpoint_module.torch, "save", real)  # space freed: resume finishes
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text())["epochs_completed"] == 2


def test_a_run_that_cannot_start_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--data", DATA, "--model", "no_such_model", "--out", str(out)]) == 2
    assert not out.exists()
