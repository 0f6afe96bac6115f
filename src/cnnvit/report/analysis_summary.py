"""The analyses' headline numbers, one row per model, for the verdict and the terminal summary.

Each registered analysis says which columns it contributes and how to read them off its own
``<name>.json`` (:mod:`cnnvit.analyze.registry`); nothing is recomputed. An analysis that did not
run, or whose file is damaged, leaves its columns empty.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from cnnvit.analyze.registry import Column, all_analyses
from cnnvit.folders import StudyFolder
from cnnvit.formatting import pct


def summary_columns() -> dict[str, Column]:
    """Every registered analysis's summary columns, in report order."""
    return {name: column for a in all_analyses() for name, column in a.columns.items()}


def columns_notes(columns: list[str]) -> list[str]:
    """How to read these summary columns: the note of each analysis that owns one of them."""
    return [
        a.columns_note for a in all_analyses() if a.columns_note and set(a.columns) & set(columns)
    ]


def analysis_headlines(root: Path | str) -> pd.DataFrame:
    """One row per model label with the columns of :func:`summary_columns` (NaN where not
    measured)."""
    folder = StudyFolder(root)
    rows: dict[str, dict[str, float]] = {}
    for item in all_analyses():
        data = folder.analysis(item.name).read_result()
        if item.headline is None or data is None:
            continue
        for label, values in item.headline(data).items():
            rows.setdefault(str(label), {}).update(values)
    frame = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(summary_columns()))
    frame.index.name = "model"
    return frame.astype("float64")


def analysis_verdict(root: Path | str) -> list[str]:
    """Plain sentences, one per analysis that ran and has something to say, comparing the
    models on it."""
    folder = StudyFolder(root)
    lines = []
    for item in all_analyses():
        data = folder.analysis(item.name).read_result()
        if item.verdict is None or data is None:
            continue
        sentence = item.verdict(data)
        if sentence:
            lines.append(sentence)
    return lines


def format_headline(column: str, value: float) -> str:
    if math.isnan(value):
        return "—"
    kind = summary_columns()[column].kind
    if kind == "pct":
        return pct(value)
    if kind == "px":
        return f"{value:.1f}"
    return f"{value:.2f}"
