"""`cnnvit compare` end to end on tiny synthetic studies: files, resume after a kill, failures."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cnnvit.cli import main
from cnnvit.data.readers import read_dataset

SYNTH = "synthetic:train_size=768,val_size=192,image_size=16"


def _write_study(
    path: Path,
    *,
    epochs: int = 1,
    models: str = "[resnet_mini, vit_mini]",
    seeds: str = "[0, 1]",
    fractions: str = "[0.25, 1.0]",
) -> Path:
    path.write_text(
        f"name: tiny\ndata: {{spec: '{SYNTH}'}}\nmodels: {models}\n"
        f"fractions: {fractions}\nseeds: {seeds}\n"
        "recipe:\n  optim: {lr: 3.0e-3, warmup_epochs: 0}\n"
        f"  train: {{epochs: {epochs}, batch_size: 64, threads: 2}}\n"
        "profile: {batch_size: 16, sizes: [16, 32, 64]}\n"
    )
    return path


def _compare(study: Path, out: Path) -> int:
    return main(["compare", str(study), "--out", str(out), "--no-progress"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("study")
    out = root / "out"
    assert _compare(_write_study(root / "study.yaml"), out) == 0
    return out


def test_every_file_and_consistent_numbers(tiny: Path):
    for name in (
        "study.yaml",
        "study.json",
        "results.csv",
        "results.parquet",
        "summary.csv",
        "report.html",
    ):
        assert (tiny / name).is_file(), name
    assert len(list((tiny / "runs").iterdir())) == 8
    assert list((tiny / "figures").glob("*.png"))
    results = pd.read_parquet(tiny / "results.parquet")
    assert len(results) == 8 and set(results.status) == {"completed"}
    assert pd.read_csv(tiny / "results.csv").shape == results.shape
    summary = pd.read_csv(tiny / "summary.csv")
    for row in summary.itertuples():
        cells = results[(results.model == row.model) & (results.fraction == row.fraction)]
        values = cells.test_top1.to_numpy()
        assert row.test_top1_mean == pytest.approx(values.mean())
        assert row.test_top1_std == pytest.approx(values.std(ddof=1))
    # the smaller fraction is a stratified quarter of each class of the training pool (what
    # the 10 % selection split leaves), every seed
    labels = read_dataset(SYNTH).train.labels
    pool = [n - round(0.1 * n) for n in np.bincount(labels)]
    expected = sum(math.ceil(0.25 * n) for n in pool)
    assert set(results[results.fraction == 0.25].num_train_images) == {expected}


def test_report_rebuilds_identically_from_run_folders(tiny: Path):
    page = (tiny / "report.html").read_bytes()
    (tiny / "report.html").unlink()
    assert main(["report", str(tiny)]) == 0
    assert (tiny / "report.html").read_bytes() == page


def test_rerun_skips_finished_cells(tiny: Path, capsys):
    before = {p: p.stat().st_mtime_ns for p in (tiny / "runs").glob("*/results.json")}
    assert _compare(tiny.parent / "study.yaml", tiny) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert capsys.readouterr().err.count("earlier, skipped") == 8


def test_a_different_study_in_the_same_folder_is_refused(tiny: Path, tmp_path: Path, capsys):
    other = _write_study(tmp_path / "other.yaml", epochs=2)
    assert _compare(other, tiny) == 2
    assert "different study" in capsys.readouterr().err


def test_killed_study_resumes_to_the_same_results(tiny: Path, tmp_path: Path):
    study = _write_study(tmp_path / "study.yaml", epochs=3, seeds="[0]")
    reference = tmp_path / "reference"
    assert _compare(study, reference) == 0

    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "cnnvit.cli",
        "compare",
        str(study),
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = out / "runs" / "vit_mini-f0.25-s0" / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 120
    while not second.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert second.exists(), "the study ended before its second cell checkpointed"
    first = out / "runs" / "resnet_mini-f0.25-s0" / "results.json"
    first_mtime = first.stat().st_mtime_ns
    assert json.loads((second.parent.parent / "results.json").read_text())["status"] == "running"

    assert _compare(study, out) == 0
    assert first.stat().st_mtime_ns == first_mtime  # the finished cell was not redone
    got, want = pd.read_csv(out / "results.csv"), pd.read_csv(reference / "results.csv")
    accuracy = ["cell", "status", "test_top1", "best_selection_top1", "test_top5", "test_macro_f1"]
    pd.testing.assert_frame_equal(got[accuracy], want[accuracy])


def test_failed_and_diverged_cells_are_recorded_and_the_rest_finish(tmp_path: Path):
    models = (
        "[resnet_mini, {name: resnet_mini, label: broken, kwargs: {no_such_argument: 1}},"
        " {name: resnet_mini, label: exploding, optim: {name: sgd, lr: 1.0e+12}}]"
    )
    study = _write_study(tmp_path / "study.yaml", models=models, seeds="[0]", fractions="[1.0]")
    out = tmp_path / "out"
    assert _compare(study, out) == 1  # failed cells make the exit status non-zero
    results = pd.read_csv(out / "results.csv")
    by_model = results.groupby("model").status.agg(set).to_dict()
    assert by_model == {
        "resnet_mini": {"completed"},
        "broken": {"failed"},
        "exploding": {"diverged"},
    }
    assert results[results.model == "broken"].error.str.contains("no_such_argument").all()
    page = (out / "report.html").read_text()
    assert "diverged" in page and "failed" in page and "no_such_argument" in page
    assert np.isfinite(results[results.model == "resnet_mini"].test_top1).all()


def test_missing_data_of_any_study_stops_before_the_first_cell(tmp_path: Path, capsys):
    study = tmp_path / "two.yaml"
    study.write_text(
        _write_study(tmp_path / "first.yaml").read_text()
        + "---\nname: second\ndata: {spec: 'cifar10:no/such/folder'}\n"
    )
    assert _compare(study, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "cifar10: the path no/such/folder does not exist" in err
    assert not (tmp_path / "out").exists()  # nothing started, not even the first study


def test_later_documents_change_the_first_and_need_their_own_name(tmp_path: Path, capsys):
    from cnnvit.study.config import load_studies

    study = tmp_path / "two.yaml"
    first = _write_study(tmp_path / "first.yaml").read_text()
    study.write_text(first + "---\nname: bigger\nfractions: [1.0]\nrecipe: {train: {epochs: 2}}\n")
    tiny, bigger = load_studies(study, ["seeds=[3]"])
    assert (tiny.name, tiny.fractions, tiny.recipe.train.epochs) == ("tiny", [0.25, 1.0], 1)
    assert (bigger.fractions, bigger.recipe.train.epochs) == ([1.0], 2)
    assert bigger.recipe.optim.lr == 3e-3 and bigger.data.spec == SYNTH  # from the first
    assert tiny.seeds == bigger.seeds == [3]  # --set applies to every study
    study.write_text(first + "---\nfractions: [1.0]\n")
    assert _compare(study, tmp_path / "out") == 2
    assert "each study document needs its own name" in capsys.readouterr().err


def test_each_completed_cell_records_its_models_profile(tiny: Path):
    for run in sorted((tiny / "runs").iterdir()):
        results = json.loads((run / "results.json").read_text())
        profile = json.loads((run / "profile.json").read_text())
        assert profile["cost"]["params_total"] == results["params_total"]
        assert profile["image_size"] == results["image_size"] == 16
        macs = {point["image_size"]: point["macs"] for point in profile["sweep"]}
        assert sorted(macs) == [16, 32, 64]
        growth = macs[64] / macs[32]
        if run.name.startswith("resnet"):
            assert growth == pytest.approx(4, rel=0.02)  # convolutions: linear in pixels
        else:
            assert growth > 4.1  # attention: quadratic in tokens
    first, second = (json.loads((tiny / "runs" / c / "profile.json").read_text()) for c in (
        "vit_mini-f0.25-s0", "vit_mini-f1-s1"))  # fmt: skip
    assert first == second  # measured once per model, copied to its other cells


def test_report_has_the_cost_profile_of_each_model(tiny: Path):
    html = (tiny / "report.html").read_text()
    section = html[html.index('id="cost-profile"') :]
    section = section[: section.index("</section>")]
    table = pd.read_csv(tiny / "tables" / "cost_profile.csv")
    assert list(table["model"]) == ["resnet_mini", "vit_mini"]
    for model, params in zip(table["model"], table["params"], strict=True):
        profile = json.loads((tiny / "runs" / f"{model}-f1-s0" / "profile.json").read_text())
        assert params == profile["cost"]["params_total"]
        assert model in section and f"{params / 1e6:.2f} M" in section
    assert (tiny / "figures" / "cost_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cost against image size" in section
