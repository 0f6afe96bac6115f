"""`cnnvit export`: the ONNX file (torch's dynamo exporter) and the ``torch.export`` program give
eager PyTorch's logits for a CNN, a ViT and a fused GResNet at batch 1 and 3 (the batch axis is
dynamic), and carry the preprocessing; bad input is one line and exit status 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnvit.cli import main
from cnnvit.models import create_model
from cnnvit.models.gresnet import SplitNormConv2d
from cnnvit.models.weights import Preprocessing
from cnnvit.profile.export import (
    MissingOnnxError,
    export_model,
    exportable_from_module,
    exportable_from_name,
    read_export_metadata,
    require_onnx,
)

onnxruntime = pytest.importorskip("onnxruntime")

# fp32 both sides; the exported graphs reorder a few reductions: observed <= 3e-7 at 32 px
ATOL = 1e-4
SIDE = 32
# resnet_mini: a CNN; vit_mini: a ViT; gresnet18: the GResNet, exported fused
MODELS = ["resnet_mini", "vit_mini", "gresnet18"]


def _inputs(batch: int, seed: int) -> torch.Tensor:
    # * 2 + 1: away from zero mean, so that a GResNet's mean padding matters
    return torch.randn(batch, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed)) * 2 + 1


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tmp_path_factory) -> tuple[str, torch.nn.Module, Path, Path]:
    name = request.param
    if name == "gresnet18":  # running statistics away from (0, 1): the fused padding matters
        torch.manual_seed(0)
        model = create_model(name, num_classes=1000)
        with torch.no_grad():
            for _ in range(2):
                model(torch.randn(4, 3, SIDE, SIDE) * 2 + 1)
        target = exportable_from_module(model, image_size=SIDE, label=name)
        assert target.fused and not any(isinstance(m, SplitNormConv2d) for m in model.modules())
    else:
        target = exportable_from_name(name, image_size=SIDE)
        assert not target.fused
    root = tmp_path_factory.mktemp(name)
    onnx_file = export_model(target, root / f"{name}.onnx", "onnx")
    pt2_file = export_model(target, root / f"{name}.pt2", "pt2")
    return name, target.model, onnx_file, pt2_file


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_logits_equal_eager(exported, batch: int) -> None:
    name, model, onnx_file, _ = exported
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    x = _inputs(batch, seed=batch)
    with torch.no_grad():
        expected = model(x).numpy()  # (batch, 1000)
    (got,) = session.run(None, {"input": x.numpy()})
    assert got.shape == expected.shape == (batch, 1000)
    assert np.abs(got - expected).max() <= ATOL, name


def test_pt2_round_trip_equals_eager(exported) -> None:
    _, model, _, pt2_file = exported
    loaded = torch.export.load(pt2_file).module()
    for batch in (1, 3):
        x = _inputs(batch, seed=10 + batch)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), atol=ATOL, rtol=0)


def test_preprocessing_is_read_back_from_both_files(exported) -> None:
    name, model, onnx_file, pt2_file = exported
    cfg = model.pretrained_cfg
    for path in (onnx_file, pt2_file):
        meta = read_export_metadata(path)
        assert meta["cnnvit.model"] == name
        assert json.loads(meta["cnnvit.input_size"]) == [3, SIDE, SIDE]
        assert json.loads(meta["cnnvit.mean"]) == pytest.approx(list(cfg["mean"]))
        assert json.loads(meta["cnnvit.std"]) == pytest.approx(list(cfg["std"]))
        assert json.loads(meta["cnnvit.fused"]) is (name == "gresnet18")


def test_the_onnx_batch_axis_is_dynamic(exported) -> None:
    import onnx

    _, _, onnx_file, _ = exported
    dims = onnx.load(str(onnx_file)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # symbolic, not a number
    assert [d.dim_value for d in dims[1:]] == [3, SIDE, SIDE]


def test_class_names_are_recorded(tmp_path: Path) -> None:
    target = exportable_from_name("resnet_mini", image_size=16)
    target.preprocessing = Preprocessing(16, 3, (0.5,) * 3, (0.25,) * 3, ("cat", "dog"), "x")
    meta = read_export_metadata(export_model(target, tmp_path / "m.pt2", "pt2"))
    assert json.loads(meta["cnnvit.class_names"]) == ["cat", "dog"]
    assert json.loads(meta["cnnvit.std"]) == [0.25] * 3


# --- the command line -------------------------------------------------------------------------


def test_cli_export_writes_the_file(tmp_path: Path, capsys) -> None:
    out = tmp_path / "vit.onnx"
    code = main(["export", "--model", "vit_mini", "--image-size", "32", "--out", str(out)])
    assert code == 0
    assert read_export_metadata(out)["cnnvit.image_size"] == "32"
    assert f"wrote {out}" in capsys.readouterr().err.replace("\n", "")  # the console: stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "resnet_mini", "--format", "tflite"], "unknown export format 'tflite'"),
        ([], "give a run folder (cnnvit export DIR) or --model NAME"),
    ],
)
def test_cli_bad_input_is_one_line(argv: list[str], message: str, capsys) -> None:
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_cli_run_without_weights_is_one_line(tmp_path: Path, capsys) -> None:
    """A run folder with its config and results but no checkpoint: nothing to export."""
    from cnnvit.config import RunConfig, dump_yaml

    dump_yaml(RunConfig(), tmp_path / "config.yaml")
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed"}))
    assert main(["export", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no checkpoint" in err


def test_a_missing_onnxruntime_names_the_extra(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(MissingOnnxError, match=r"pip install 'cnnvit\[onnx\]'"):
        require_onnx("onnxruntime")
    # refused before anything is measured
    assert main(["profile", "--model", "resnet_mini", "--runtime", "onnxruntime"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'cnnvit[onnx]'" in err
