"""The analyses' headline numbers, one row per model, for the verdict and the terminal summary.

Read from the files each analysis wrote under ``DIR/analysis/`` (nothing is recomputed); an
analysis that did not run, or whose file is damaged, leaves its columns empty.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from cnnvit.report.analysis_sections import ANALYSIS_DIR

# column -> (header, how to print it)
COLUMNS: dict[str, tuple[str, str]] = {
    "knn_top1": ("1-NN", "pct"),
    "head_top1": ("head", "pct"),
    "shape_bias": ("shape bias", "num"),
    "corruption_accuracy": ("corrupted", "pct"),
    "relative_robustness": ("kept", "pct"),
    "first_distance_px": ("reach, first layer", "px"),
    "last_distance_px": ("reach, last layer", "px"),
}


def _read(root: Path, name: str) -> dict[str, Any] | None:
    try:
        data = json.loads((root / ANALYSIS_DIR / name / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _models(data: dict[str, Any] | None) -> list[dict[str, Any]]:
    models = (data or {}).get("models")
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


def _number(x: object) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def analysis_headlines(root: Path | str) -> pd.DataFrame:
    """One row per model label with the columns of :data:`COLUMNS` (NaN where not measured)."""
    root = Path(root)
    rows: dict[str, dict[str, float]] = {}

    def put(label: object, **values: float) -> None:
        rows.setdefault(str(label), {}).update(values)

    knn = _read(root, "knn")
    for m in _models(knn):
        accuracy = m.get("knn_accuracy") or {}
        first_k = min(accuracy, key=int) if accuracy else None
        put(
            m.get("label"),
            knn_top1=_number(accuracy.get(first_k)) if first_k == "1" else math.nan,
            head_top1=_number(m.get("head_top1")),
        )
    for m in _models(_read(root, "shape_bias")):
        put(m.get("label"), shape_bias=_number(m.get("shape_bias")))
    for m in _models(_read(root, "robustness")):
        put(
            m.get("label"),
            corruption_accuracy=_number(m.get("mean_corruption_accuracy")),
            relative_robustness=_number(m.get("relative_accuracy")),
        )
    for m in _models(_read(root, "attention")):
        if m.get("kind") == "attention":
            distances = m.get("mean_distance_px") or []
        else:
            distances = [s.get("erf_distance_px") for s in m.get("stages") or []]
        if distances:
            put(
                m.get("label"),
                first_distance_px=_number(distances[0]),
                last_distance_px=_number(distances[-1]),
            )
    frame = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(COLUMNS))
    frame.index.name = "model"
    return frame


def analysis_verdict(root: Path | str) -> list[str]:
    """Plain sentences, one per analysis that ran, comparing the models on it."""
    root = Path(root)
    lines = []
    frame = analysis_headlines(root)
    if frame.empty:
        return lines
    robust = frame["relative_robustness"].dropna()
    settings = (_read(root, "robustness") or {}).get("settings") or {}
    if len(robust) >= 2:
        kinds = len(settings.get("corruptions") or []) or "the"
        levels = len(settings.get("severities") or []) or "several"
        parts = [
            f"{m} keeps {100 * r:.0f} % of its clean accuracy "
            f"({100 * frame.at[m, 'corruption_accuracy']:.1f} % on average)"
            for m, r in robust.sort_values(ascending=False).items()
        ]
        lines.append(f"Under {kinds} corruptions at {levels} severities, " + "; ".join(parts) + ".")
    knn = frame["knn_top1"].dropna()
    if len(knn) >= 2:
        parts = [
            f"{m} {100 * v:.1f} % (its classifier head {100 * frame.at[m, 'head_top1']:.1f} %)"
            for m, v in knn.sort_values(ascending=False).items()
        ]
        lines.append(
            "Nearest-neighbour retrieval on penultimate features (1-NN top-1): "
            + "; ".join(parts)
            + "."
        )
    bias = frame["shape_bias"].dropna()
    if len(bias) >= 1:
        parts = [f"{m} {v:.2f}" for m, v in bias.sort_values(ascending=False).items()]
        lines.append(
            "Shape bias on cue-conflict images (1 = decides by shape, 0 = by texture): "
            + ", ".join(parts)
            + "."
        )
    distance = frame[["first_distance_px", "last_distance_px"]].dropna()
    if len(distance) >= 1:
        parts = [
            f"{m} {r.first_distance_px:.1f} px at its first layer, {r.last_distance_px:.1f} px "
            "at its last"
            for m, r in distance.iterrows()
        ]
        lines.append(
            "How far each model looks (ViT: mean attention distance; CNN: effective receptive "
            "field): " + "; ".join(parts) + "."
        )
    return lines


def format_headline(column: str, value: float) -> str:
    if math.isnan(value):
        return "—"
    kind = COLUMNS[column][1]
    if kind == "pct":
        return f"{100 * value:.1f} %"
    if kind == "px":
        return f"{value:.1f}"
    return f"{value:.2f}"
