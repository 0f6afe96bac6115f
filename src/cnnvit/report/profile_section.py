"""The report's cost-profile section: each model's ``profile.json`` (written by the study once
its cells have trained, see :func:`cnnvit.study.run.profile_models`) as one table row, and the
image-size sweep as a log-log plot (attention grows with the square of the token count,
convolutions linearly with the pixels).

Only files are read, so a rebuild from the run folders gives the same bytes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pandas as pd
from matplotlib.figure import Figure

from cnnvit.folders import RunFolder
from cnnvit.markup import img, join, note, table
from cnnvit.profile.plot import sweep_figure
from cnnvit.profile.record import Deployment, ModelProfile, profile_rows
from cnnvit.report.collect import StudyData

if TYPE_CHECKING:
    from cnnvit.report.context import ReportContext


def study_profiles(data: StudyData) -> list[ModelProfile]:
    """One profile per model, in study order: from the model's first cell that has one."""
    found: dict[str, ModelProfile] = {}
    for cell in data.info.cells:
        path = RunFolder(cell.run_dir).profile
        if cell.model in found or not path.is_file():
            continue
        try:
            profile = ModelProfile.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            continue  # a damaged profile leaves the model out of this section only
        found[cell.model] = profile
    return [found[m] for m in data.models if m in found]


def profile_tables(ctx: ReportContext) -> dict[str, pd.DataFrame]:
    return {"cost_profile": pd.DataFrame(profile_rows(study_profiles(ctx.data)))}


def profile_figures(ctx: ReportContext) -> dict[str, Figure | None]:
    profiles = [p for p in study_profiles(ctx.data) if p.sweep]
    return {"cost_sweep": sweep_figure(profiles) if profiles else None}


def render_profile(ctx: ReportContext) -> str:
    profiles = study_profiles(ctx.data)
    if not profiles:
        return note(
            "No model has a profile.json yet (the study writes one per model once its cells "
            "have trained; `profile: {enabled: false}` turns it off)."
        )
    headers = [
        "model",
        "parameters",
        "size on disk",
        "GMACs",
        "latency, batch 1",
        "inference",
        "training step",
        "peak memory, inference / training",
        "load time",
    ]
    rows = [_row(p) for p in profiles]
    deployed = [p.deployment for p in profiles if p.deployment is not None]
    if deployed:  # the ONNX Runtime and int8 columns, only where a profile measured them
        headers += DEPLOYMENT_HEADERS
        rows = [r + _deployment_cells(p.deployment) for r, p in zip(rows, profiles, strict=True)]
    first = profiles[0]
    explain = note(
        f"Measured on {first.device_name} ({first.dtype}, batch {first.batch_size}, "
        f"{first.image_size} px, {first.threads} threads) after warm-up, the device synchronised "
        "before every clock read: latency median (95th percentile); throughput median "
        "(interquartile range) in images per second. MACs from torch's FlopCounterMode at the "
        "study's image size. Peak memory: the device's peak (on a CPU the resident set).",
        "note",
    )
    parts = [table(headers, rows, classes=["name", *["num"] * (len(headers) - 1)]), explain]
    if deployed:
        parts.append(_deployment_note(deployed[0]))
    if "cost_sweep" in ctx.figures:
        caption = (
            "Cost against image side, log-log, batch 1: a ViT's attention grows with the "
            "square of the token count, a CNN's convolutions linearly with the pixels."
        )
        parts.append(img(ctx.figures["cost_sweep"], "cost against image size", caption))
    return join(parts)


def _row(p: ModelProfile) -> list[object]:
    def rate(spread) -> str:
        return "-" if spread is None else f"{spread.median:,.1f} img/s"

    memory_train = "-" if p.memory_train is None else f"{p.memory_train.peak_mib:,.0f}"
    memory_infer = "-" if p.memory_infer is None else f"{p.memory_infer.peak_mib:,.0f}"
    latency = p.latency_ms
    return [
        p.model,
        f"{p.cost.params_total / 1e6:.2f} M",
        f"{p.cost.disk_mb:,.1f} MB",
        f"{p.cost.gmacs:.3g}",
        "-" if latency is None else f"{latency.median:.2f} ms ({latency.p95:.2f})",
        rate(p.throughput),
        rate(p.train_throughput),
        f"{memory_infer} / {memory_train} MiB",
        f"{p.load_s:.2f} s",
    ]


DEPLOYMENT_HEADERS = [
    "ONNX Runtime, batch 1",
    "int8, batch 1",
    "ONNX size, fp32 → int8",
    "test top-1 change under int8",
]


def _deployment_cells(d: Deployment | None) -> list[object]:
    """ORT fp32 latency median (p95), int8's, file sizes, and the test top-1 change."""
    if d is None:
        return ["-"] * len(DEPLOYMENT_HEADERS)
    q = d.int8
    fp32 = d.fp32.latency_ms
    change = d.top1_change
    return [
        f"{fp32.median:.2f} ms ({fp32.p95:.2f})",
        "-" if q is None else f"{q.latency_ms.median:.2f} ms ({q.latency_ms.p95:.2f})",
        f"{d.fp32.file_mb:,.1f} → {q.file_mb:,.1f} MB" if q else f"{d.fp32.file_mb:,.1f} MB → -",
        "-" if change is None else f"{100 * change:+.2f} pt",
    ]


def _deployment_note(d: Deployment) -> str:
    return note(
        f"ONNX Runtime columns: the model exported to ONNX (opset {d.opset}) and run by "
        f"{d.runtime} on the CPU ({d.provider}, {d.intra_op_threads} intra-op threads), batch "
        "1, median (95th percentile) after warm-up; int8: dynamic quantisation "
        "(onnxruntime.quantization.quantize_dynamic, int8 weights, activations quantised at "
        "run time). Test top-1 change: the int8 model's top-1 minus the fp32 ONNX model's on "
        "the test split of the model's first completed cell (the one profiled), in "
        "percentage points.",
        "note",
    )
