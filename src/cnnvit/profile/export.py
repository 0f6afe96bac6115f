"""Export a model for deployment: ONNX (``torch.onnx.export``, the dynamo exporter) or a
``torch.export`` program (``.pt2``), each with its preprocessing recorded in the file.

The model comes from a name (random weights, the model's own pretrained_cfg mean/std) or a
trained run folder (its evaluated weights; size, channels, mean/std and class names from the
safetensors metadata the run wrote, :mod:`cnnvit.models.weights`). The batch axis is dynamic in
both formats; the input is ``(batch, channels, size, size)`` float32, already normalised, and the
output the logits ``(batch, num_classes)``. A GResNet is exported in its inference form, its
split normalisation folded into the convs (:func:`cnnvit.models.gresnet.fuse_split_norm`).

Where the preprocessing goes: ONNX ``metadata_props`` (key -> string), pt2 ``extra_files``
(``cnnvit/preprocessing.json``); both hold the same keys (:func:`export_metadata`).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

import torch
import torch.nn as nn

from cnnvit.config import read_run_config
from cnnvit.errors import UserError
from cnnvit.folders import RunFolder
from cnnvit.models.registry import create_model
from cnnvit.models.weights import Preprocessing, read_preprocessing
from cnnvit.ui import console

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "ExportError",
    "Exportable",
    "MissingOnnxError",
    "export_metadata",
    "export_model",
    "exportable_from_module",
    "exportable_from_name",
    "exportable_from_run",
    "read_export_metadata",
    "require_format",
    "require_onnx",
]

ExportFormat = Literal["onnx", "pt2"]
EXPORT_FORMATS: tuple[str, ...] = ("onnx", "pt2")
DEFAULT_OPSET = 18  # the dynamo exporter's own default; onnxruntime >= 1.16 runs it
PT2_METADATA = "cnnvit/preprocessing.json"  # the key in a .pt2's extra_files


class ExportError(UserError):
    """A format cnnvit cannot write, or a source without a model to export."""


class MissingOnnxError(UserError):
    """onnx, onnxscript or onnxruntime is not installed."""


def require_onnx(module: str) -> ModuleType:
    """Import ``module`` (onnx, onnxscript, onnxruntime...), or say in one line how to install
    it: the deployment profile is an extra, cnnvit runs without it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingOnnxError(
            f"ONNX export and ONNX Runtime need the {module.split('.')[0]} package: "
            "pip install 'cnnvit[onnx]'"
        ) from None


def require_format(fmt: str) -> None:
    """Refuse an unknown format, and ONNX without its packages, before any model is built.

    Raises:
        ExportError: not onnx or pt2.
        MissingOnnxError: onnx or onnxscript (torch's ONNX exporter needs both) is missing.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(
            f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}"
        )
    if fmt == "onnx":
        require_onnx("onnx")
        require_onnx("onnxscript")


@dataclass
class Exportable:
    """A model in eval mode with the preprocessing its inputs need, and where it came from."""

    model: nn.Module
    preprocessing: Preprocessing
    label: str
    fused: bool  # a GResNet's split normalisation was folded for inference


def _inference_form(model: nn.Module) -> tuple[nn.Module, bool]:
    """Eval mode; a GResNet fused (its ``fuse()``: the same outputs, fewer ops)."""
    model.eval()
    fuse = getattr(model, "fuse", None)
    if callable(fuse):
        fuse()
        return model, True
    return model, False


def exportable_from_module(
    model: nn.Module,
    *,
    image_size: int,
    in_chans: int = 3,
    label: str,
    preprocessing: Preprocessing | None = None,
) -> Exportable:
    """``model`` in its inference form (changed in place: pass a copy to keep the original)
    with ``preprocessing``, or else ``image_size``, ``in_chans`` and its pretrained_cfg
    mean/std (ImageNet's where it has none)."""
    if preprocessing is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean = tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406)))[:in_chans]
        std = tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225)))[:in_chans]
        model_name = cfg.get("architecture") or label
        preprocessing = Preprocessing(image_size, in_chans, mean, std, model=model_name)
    model, fused = _inference_form(model)
    return Exportable(model, preprocessing, label, fused)


def exportable_from_name(name: str, *, image_size: int | None = None) -> Exportable:
    """``name`` with random weights (seed 0), 1000 classes, at ``image_size`` (default: the
    model's own pretrained_cfg input size); mean/std from its pretrained_cfg."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000, img_size=image_size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = image_size or int((cfg.get("input_size") or (3, 224, 224))[-1])
    if image_size is None:  # the default size may not be the cfg's: build at that one
        torch.manual_seed(0)
        model = create_model(name, num_classes=1000, img_size=size)
    chans = int(getattr(model, "in_chans", 3) or 3)
    return exportable_from_module(model, image_size=size, in_chans=chans, label=name)


def exportable_from_run(run_dir: str | Path, *, image_size: int | None = None) -> Exportable:
    """The trained model of a run folder (its evaluated weights, as ``cnnvit evaluate`` reads
    them) with the preprocessing its weights file records.

    Raises:
        RunFolderError: not a run folder, or no checkpoint (no weights) in it.
        ExportError: weights without recorded preprocessing, or an ``image_size`` other than
            the trained one.
    """
    folder = RunFolder(run_dir)
    folder.require(checkpoint=True)
    cfg = read_run_config(folder.config)
    weights = folder.evaluated_weights()
    prep = read_preprocessing(weights)
    if prep is None:
        raise ExportError(
            f"{weights} records no preprocessing (written before cnnvit recorded it); export "
            "the architecture with --model NAME, or train the run again"
        )
    if image_size is not None and image_size != prep.image_size:
        raise ExportError(
            f"{folder.path} was trained at {prep.image_size} px and is exported at that size; "
            "drop --image-size"
        )
    num_classes = len(prep.class_names) if prep.class_names else None
    if num_classes is None:
        num_classes = int((folder.read_results() or {})["num_classes"])
    with _quiet():
        model = create_model(
            cfg.model.name,
            num_classes=num_classes,
            in_chans=prep.channels,
            img_size=prep.image_size,
            weights=weights,
            **cfg.model.kwargs,
        )
    label = f"{cfg.model.name} ({folder.name})"
    return exportable_from_module(
        model, image_size=prep.image_size, label=label, preprocessing=prep
    )


class _quiet:
    """Silence the registry's load-report line while a run's weights load."""

    def __enter__(self) -> None:
        self.before = console.quiet
        console.quiet = True

    def __exit__(self, *exc: object) -> None:
        console.quiet = self.before


def export_metadata(prep: Preprocessing, *, fused: bool, label: str) -> dict[str, str]:
    """The preprocessing as string pairs (values JSON where they are not plain strings)."""
    return {
        "cnnvit.format": "cnnvit-export/1",
        "cnnvit.model": prep.model or label,
        "cnnvit.label": label,
        "cnnvit.input_size": json.dumps([prep.channels, prep.image_size, prep.image_size]),
        "cnnvit.image_size": str(prep.image_size),
        "cnnvit.channels": str(prep.channels),
        "cnnvit.mean": json.dumps(list(prep.mean)),
        "cnnvit.std": json.dumps(list(prep.std)),
        "cnnvit.class_names": json.dumps(list(prep.class_names) if prep.class_names else None),
        "cnnvit.fused": json.dumps(fused),
        "cnnvit.input": "float32 (batch, channels, size, size): RGB (or luma) / 255, then "
        "(x - mean) / std per channel",
        "cnnvit.output": "logits (batch, num_classes)",
    }


def export_model(
    target: Exportable,
    out: str | Path,
    fmt: str = "onnx",
    *,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write ``target`` as ``fmt`` (onnx or pt2) to ``out``, batch axis dynamic.

    Raises:
        ExportError: an unknown format.
        MissingOnnxError: ONNX asked for without onnx/onnxscript installed.
    """
    require_format(fmt)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prep = target.preprocessing
    # batch 2 as the example: a batch of 1 would be specialised away as a constant
    example = torch.randn(2, *prep.input_size, generator=torch.Generator().manual_seed(0))
    dims = ({0: torch.export.Dim("batch")},)
    metadata = export_metadata(prep, fused=target.fused, label=target.label)
    if fmt == "pt2":
        program = torch.export.export(target.model, (example,), dynamic_shapes=dims)
        torch.export.save(program, out, extra_files={PT2_METADATA: json.dumps(metadata)})
        return out
    onnx = require_onnx("onnx")
    program = torch.onnx.export(
        target.model,
        (example,),
        dynamo=True,
        dynamic_shapes=dims,
        opset_version=opset,
        input_names=["input"],
        output_names=["logits"],
        verbose=False,
    )
    assert program is not None  # dynamo=True always returns the program
    program.save(str(out))
    proto = onnx.load(str(out))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    return out


def read_export_metadata(path: str | Path) -> dict[str, str]:
    """The ``cnnvit.*`` metadata of an exported ``.onnx`` or ``.pt2`` file."""
    path = Path(path)
    if path.suffix == ".pt2":
        files = {PT2_METADATA: ""}
        torch.export.load(path, extra_files=files)
        return json.loads(files[PT2_METADATA]) if files[PT2_METADATA] else {}
    onnx = require_onnx("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith("cnnvit.")}
