"""A study with ``profile: {runtimes: [torch, onnxruntime]}``: each model's ``profile.json``
holds the ONNX Runtime and int8 figures with its cell's test top-1 under both, and the report's
cost section shows the columns (the numbers from those files)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from cnnvit.cli import main

pytest.importorskip("onnxruntime")

SYNTH = "synthetic:train_size=256,val_size=100,image_size=16"


def _cost_section(out: Path) -> str:
    html = (out / "report.html").read_text()
    section = html[html.index('id="cost-profile"') :]
    return section[: section.index("</section>")]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Trained and profiled eager-only first (no ONNX columns), then the same study again with
    ``runtimes: [torch, onnxruntime]``: the cells are kept, the profiles measured again."""
    root = tmp_path_factory.mktemp("ort-study")
    spec, out = root / "study.yaml", root / "out"
    profile = "{batch_size: 4, sizes: [], train: false, repeats: 3, warmup: 1%s}"
    for extra in ("", ", runtimes: [torch, onnxruntime]"):
        spec.write_text(
            f"name: ort\ndata: {{spec: '{SYNTH}'}}\nmodels: [resnet_mini, vit_mini]\n"
            "recipe:\n  train: {epochs: 1, batch_size: 64, threads: 1}\n"
            f"profile: {profile % extra}\nanalysis: []\n"
        )
        assert main(["compare", str(spec), "--out", str(out), "--no-progress"]) == 0
        if not extra:
            section = _cost_section(out)
            assert "resnet_mini" in section and "ONNX" not in section and "int8" not in section
            assert "onnx_int8_mb" not in pd.read_csv(out / "tables" / "cost_profile.csv")
            trained = {r: (r / "results.json").read_text() for r in (out / "runs").iterdir()}
    assert {r: (r / "results.json").read_text() for r in trained} == trained  # not retrained
    return out


def test_profile_json_and_report_have_the_deployment_columns(study: Path) -> None:
    section = _cost_section(study)
    assert "ONNX Runtime, batch 1" in section and "test top-1 change under int8" in section
    table = pd.read_csv(study / "tables" / "cost_profile.csv")
    for model in ("resnet_mini", "vit_mini"):
        (run,) = (study / "runs").glob(f"{model}-*")
        deployment = json.loads((run / "profile.json").read_text())["deployment"]
        results = json.loads((run / "results.json").read_text())
        assert deployment["test_images"] == 100
        # the fp32 ONNX model is the cell's model: the cell's own test top-1, to one image
        assert deployment["test_top1_fp32"] == pytest.approx(results["test_top1"], abs=0.01)
        change = deployment["test_top1_int8"] - deployment["test_top1_fp32"]
        assert f"{100 * change:+.2f} pt" in section
        assert f"{deployment['int8']['latency_ms']['median']:.2f} ms" in section
        row = table[table.model == model].iloc[0]
        assert row.test_top1_change_int8 == pytest.approx(change)
        assert row.onnx_int8_mb == pytest.approx(deployment["int8"]["file_mb"])


def test_a_missing_onnxruntime_refuses_the_study_before_any_cell(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    spec = tmp_path / "study.yaml"
    spec.write_text(
        f"name: ort\ndata: {{spec: '{SYNTH}'}}\nmodels: [resnet_mini, vit_mini]\n"
        "profile: {runtimes: [torch, onnxruntime]}\n"
    )
    assert main(["compare", str(spec), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'cnnvit[onnx]'" in err
    assert not (tmp_path / "out" / "runs").exists()
