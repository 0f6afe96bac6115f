"""Two `cnnvit compare` on one folder: the second is refused at once and every cell of the first
finishes intact (issue 13, item 1)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from cnnvit.cli import main
from cnnvit.folders import RunFolder, StudyFolder


def test_a_second_compare_on_a_busy_folder_is_refused_and_loses_nothing(tmp_path: Path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: busy\ndata: {spec: 'synthetic:train_size=384,val_size=96,image_size=16'}\n"
        "models: [resnet_mini]\nfractions: [1.0]\nseeds: [0, 1]\nprofile: {enabled: false}\n"
        "recipe:\n  optim: {lr: 3.0e-3, warmup_epochs: 0}\n"
        "  train: {epochs: 3, batch_size: 64, threads: 1}\n"
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cnnvit.cli", "compare", str(study), "--out", str(out)]
    log = tmp_path / "first.log"
    with log.open("w") as sink:
        first = subprocess.Popen(
            [*cmd, "--no-progress"], env=dict(os.environ, PYTHONUNBUFFERED="1"), stderr=sink
        )
    try:
        _refused_while_the_first_runs(first, out, cmd, capsys)
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=600) == 0, log.read_text()
    results = pd.read_csv(out / "results.csv")
    assert list(results.cell) == ["resnet_mini-f1-s0", "resnet_mini-f1-s1"]
    assert list(results.status) == ["completed", "completed"]
    for run in StudyFolder(out).run_folders():
        assert run.latest_checkpoint() is not None and run.latest_checkpoint().epoch == 3
        assert json.loads(run.results.read_text())["status"] == "completed"
    assert not StudyFolder(out).lock.exists()


def _refused_while_the_first_runs(first: subprocess.Popen, out: Path, cmd: list[str], capsys):
    # The first compare is inside its first cell: that cell has a checkpoint, the study a lock.
    cell = RunFolder(out / "runs" / "resnet_mini-f1-s0")
    deadline = time.monotonic() + 180
    while cell.latest_checkpoint() is None and first.poll() is None:
        assert time.monotonic() < deadline, "the first compare never checkpointed"
        time.sleep(0.05)
    # Paused there (a cell trains in a second here), so that the second compare surely meets
    # it mid-study; it goes on once the second has been refused.
    first.send_signal(signal.SIGSTOP)
    assert StudyFolder(out).lock.is_file()
    info = StudyFolder(out).info
    written = info.stat().st_mtime_ns  # the first writes it at its start and its end only

    assert main([*cmd[3:], "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"is being written by process {first.pid} on host" in err
    assert info.stat().st_mtime_ns == written  # refused before it wrote anything
