"""`cnnvit profile RUN --runtime onnxruntime`: ONNX Runtime and dynamic int8 figures in the
profile JSON, and the test-split top-1 of both models MEASURED: checked against top-1 computed
here from onnxruntime's own outputs on the test images, prepared by hand from the raw pixels."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cnnvit.cli import main
from cnnvit.config import load_run_config
from cnnvit.data.readers import read_dataset
from cnnvit.profile.export import export_model, exportable_from_run
from cnnvit.profile.onnx_runtime import integer_ops, ort_session, quantize_int8
from cnnvit.profile.record import ModelProfile, read_profiles_json
from cnnvit.report.profile_section import render_profile
from cnnvit.train.run import train

pytest.importorskip("onnxruntime")

SPEC = "synthetic:train_size=300,val_size=200,image_size=16"
FAST = ["--repeats", "3", "--warmup", "1", "--batch-size", "4", "--no-train", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 16 px resnet_mini run, two epochs on CPU: better than chance, far from perfect."""
    run = tmp_path_factory.mktemp("ort") / "run"
    cfg = load_run_config(
        None,
        [
            f"data.spec={SPEC}",
            f"output.dir={run}",
            "model.name=resnet_mini",
            "train.epochs=2",
            "train.batch_size=64",
            "train.progress=false",
            "train.device=cpu",
            "data.num_workers=0",
        ],
    )
    assert train(cfg)["status"] == "completed"
    return run


@pytest.fixture(scope="module")
def profiled(trained: Path) -> ModelProfile:
    out = trained / "profile-ort.json"
    argv = ["profile", str(trained), *FAST, "--no-progress", "--json", str(out)]
    assert main([*argv, "--runtime", "onnxruntime"]) == 0
    (profile,) = read_profiles_json(out)
    return profile


def _top1_by_hand(path: Path, pixels: np.ndarray, labels: np.ndarray, prep) -> float:
    """(N, H, W, 3) uint8 at the trained size -> /255, (x - mean) / std, NCHW; argmax."""
    x = pixels.astype(np.float32) / 255.0
    x = (x - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (N, 3, H, W)
    session = ort_session(path, threads=1)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})  # (N, num_classes)
    return float((logits.argmax(1) == labels).mean())


def test_int8_test_accuracy_is_measured(profiled: ModelProfile, trained: Path, tmp_path: Path):
    d = profiled.deployment
    assert d is not None and d.int8 is not None, profiled.notes
    test = read_dataset(SPEC).val  # the synthetic format's held-out split: the run's test split
    pixels, labels = np.asarray(test.images), np.asarray(test.labels)
    assert d.test_images == len(labels) == 200
    target = exportable_from_run(trained)
    assert target.preprocessing.image_size == 16 == pixels.shape[1]
    fp32 = export_model(target, tmp_path / "m.onnx", "onnx")
    int8 = quantize_int8(fp32, tmp_path / "m.int8.onnx")
    by_hand_fp32 = _top1_by_hand(fp32, pixels, labels, target.preprocessing)
    by_hand_int8 = _top1_by_hand(int8, pixels, labels, target.preprocessing)
    one_image = 1 / len(labels)  # a near-tie may flip between two batchings
    assert d.test_top1_fp32 == pytest.approx(by_hand_fp32, abs=one_image)
    assert d.test_top1_int8 == pytest.approx(by_hand_int8, abs=one_image)
    assert d.top1_change == pytest.approx(d.test_top1_int8 - d.test_top1_fp32)
    # the fp32 ONNX model is the run's model: its top-1 is the run's own evaluation
    results = json.loads((trained / "results.json").read_text())
    assert d.test_top1_fp32 == pytest.approx(results["test_top1"], abs=one_image)
    assert 0.15 < by_hand_fp32 < 1.0  # trained: above chance (10 classes)


def test_the_profile_records_both_runtimes(profiled: ModelProfile) -> None:
    d = profiled.deployment
    assert d is not None and d.int8 is not None
    assert d.provider == "CPUExecutionProvider" and d.runtime.startswith("onnxruntime ")
    assert d.intra_op_threads == profiled.threads >= 1
    assert profiled.latency_ms.n == 3  # the eager figures are still there
    for timing in (d.fp32, d.int8):
        assert timing.latency_ms.n == timing.throughput.n == 3
        assert timing.latency_ms.median > 0 and timing.throughput.median > 0
    assert d.fp32.ops == []  # nothing integer in the float graph
    assert d.int8.ops and set(d.int8.ops) <= {
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
    }
    assert d.int8.file_bytes < d.fp32.file_bytes  # int8 weights
    assert not d.fused  # resnet_mini has nothing to fold


def test_integer_ops_reads_the_graph(trained: Path, tmp_path: Path) -> None:
    fp32 = export_model(exportable_from_run(trained), tmp_path / "m.onnx", "onnx")
    assert integer_ops(fp32) == []
    assert "ConvInteger" in integer_ops(quantize_int8(fp32, tmp_path / "q.onnx"))


def test_the_report_shows_the_columns_only_when_measured(profiled: ModelProfile, tmp_path):
    def rendered(profile: ModelProfile) -> str:
        run = tmp_path / profile.model.replace(" ", "_")
        run.mkdir(exist_ok=True)
        (run / "profile.json").write_text(json.dumps(profile.to_dict()))
        cell = SimpleNamespace(model="m", run_dir=run)
        data = SimpleNamespace(info=SimpleNamespace(cells=[cell]), models=["m"])
        return render_profile(SimpleNamespace(data=data, figures={}))

    d = profiled.deployment
    assert d is not None and d.int8 is not None
    with_ort = rendered(profiled)
    assert "ONNX Runtime, batch 1" in with_ort and "int8, batch 1" in with_ort
    assert f"{d.int8.latency_ms.median:.2f} ms" in with_ort
    assert f"{d.fp32.file_mb:,.1f} → {d.int8.file_mb:,.1f} MB" in with_ort
    assert f"{100 * d.top1_change:+.2f} pt" in with_ort
    older = profiled.to_dict()
    del older["deployment"]  # a profile.json written before the deployment profile
    without = rendered(ModelProfile.from_dict(older))
    assert "ONNX" not in without and "int8" not in without


def test_a_failed_export_keeps_the_eager_figures(monkeypatch) -> None:
    import cnnvit.profile.onnx_runtime as ort_module
    from cnnvit.config import ProfileConfig
    from cnnvit.profile.profiler import profile_model

    def fail(*args, **kwargs):
        raise RuntimeError("an op the exporter cannot take")

    monkeypatch.setattr(ort_module, "measure_deployment", fail)
    config = ProfileConfig(
        image_size=16,
        batch_size=2,
        train=False,
        repeats=2,
        warmup=1,
        device="cpu",
        runtimes=["torch", "onnxruntime"],
    )
    p = profile_model("resnet_mini", config, num_classes=10, progress=False)
    assert p.deployment is None and p.latency_ms.n == 2
    assert "deployment profile failed: RuntimeError: an op the exporter cannot take" in p.notes


def test_a_study_profile_section_takes_the_runtimes() -> None:
    from cnnvit.config import ConfigError, validate_config
    from cnnvit.study.config import StudyProfile

    profile = validate_config(StudyProfile, {"runtimes": ["torch", "onnxruntime"], "int8": False})
    assert profile.runtimes == ["torch", "onnxruntime"] and profile.int8 is False
    assert StudyProfile().runtimes == ["torch"]  # eager only unless asked
    with pytest.raises(ConfigError, match="unknown runtime 'tflite'; known runtimes: torch"):
        validate_config(StudyProfile, {"runtimes": ["tflite"]})
