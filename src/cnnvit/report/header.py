"""The report's header: the study, its data and its three splits, the training budget, the
machine and the exact command.

Every number of the report is named by its split here once: the models train on their fraction
of the training pool, everything chosen during training is chosen on the selection split, and
every reported number is measured on the test split. Runs written before the three-way split
had no selection split; the header says so, and how many.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cnnvit.markup import Markup, esc, join, tag

if TYPE_CHECKING:
    from cnnvit.report.context import ReportContext

__all__ = ["budget_text", "render_header", "selection_text"]


def render_header(ctx: ReportContext) -> Markup:
    """Study name, dataset, splits, budget, device, versions, dates and the exact command."""
    info, envs = ctx.data.info, ctx.data.environments
    counts = ctx.data.results["status"].value_counts()
    rows = [
        ("Dataset", _dataset(ctx)),
        ("Models", _model_names(ctx)),
        ("Train split", _sizes(ctx)),
        ("Selection split", _selection_split(ctx)),
        ("Test split", _test_split(ctx)),
        ("Chosen on", selection_text(ctx.data.results)),
        ("Budget", budget_text(ctx)),
        ("Seeds", ", ".join(str(s) for s in dict.fromkeys(c.seed for c in info.cells))),
        ("Device", _distinct(envs, "device_name", "device") or "unknown (no run started)"),
        ("Precision", _distinct(envs, "dtype") or "unknown"),
        ("Versions", _versions(envs)),
        ("Git revision", _distinct(envs, "git_revision") or "unknown"),
        ("Started", info.started_at or "unknown"),
        ("Finished", info.finished_at or "not finished"),
        ("Cells", f"{counts.get('completed', 0)} of {len(ctx.data.results)} completed"),
        ("Command", tag("code", info.command or "unknown")),
    ]
    meta = join(join([tag("dt", k), tag("dd", v)]) for k, v in rows)
    subtitle = "CNN versus Vision Transformer study report, written by cnnvit"
    return Markup(
        f"<header>{tag('h1', info.name)}{tag('p', subtitle, class_='subtitle')}"
        f'<dl class="meta">{meta}</dl></header>'
    )


def _dataset(ctx: ReportContext) -> str:
    info = ctx.data.info
    data_cfg = info.config.get("data") or {}
    classes = data_cfg.get("classes") if isinstance(data_cfg, dict) else None
    spec = info.data_spec or "unknown"
    return f"{spec} (classes: {', '.join(map(str, classes))})" if classes else spec


def _model_names(ctx: ReportContext) -> Markup:
    names = ctx.data.info.model_names
    parts = []
    for label in ctx.data.models:
        name = names.get(label, label)
        text = label if name == label else f"{label} ({name})"
        parts.append(join([ctx.swatch(label), esc(text)]))
    return Markup(", ".join(parts))


def _sizes(ctx: ReportContext) -> str:
    fractions = sorted({c.fraction for c in ctx.data.info.cells})
    images = ctx.data.results.groupby("fraction")["num_train_images"].median()
    out = []
    for f in fractions:
        n = images.get(f, np.nan)
        out.append(f"{f:g}" + ("" if pd.isna(n) else f" ({int(n):,} images)"))
    return ", ".join(out) + " of the training pool (each seed draws its own subset)"


def _counts(results: pd.DataFrame, column: str) -> str | None:
    counts = results[column].dropna().unique()
    if len(counts) == 0:
        return None
    return ", ".join(f"{int(n):,}" for n in sorted(counts)) + " images"


def _selection_split(ctx: ReportContext) -> str:
    results = ctx.data.results
    counts = _counts(results, "num_selection_images")
    old = _old_runs(results)
    if counts is None:
        if old:
            return "none (runs written before the three-way split)"
        return "unknown (no run finished)"
    text = f"{counts}, held out of the training pool and scored during training"
    return text + (f"; none in {old} older runs" if old else "")


def _test_split(ctx: ReportContext) -> str:
    counts = _counts(ctx.data.results, "num_test_images")
    if counts is None:
        return "unknown (no run finished)"
    return f"{counts}, the same for every run; read once per run, for every reported number"


def _old_runs(results: pd.DataFrame) -> int:
    return int((results["selected_on"] == "test").sum())


def selection_text(results: pd.DataFrame) -> str:
    """Which split chose everything chosen during training, and which scored the results."""
    old = _old_runs(results)
    new = int((results["selected_on"] == "selection").sum())
    line = (
        "Everything chosen during training (the best epoch, early stopping, tuning) used the "
        "selection split only; every accuracy, F1, calibration error and prediction in this "
        "report is on the test split."
    )
    if not old:
        return line
    before = (
        "were written before the three-way split: they had no selection split, so their best "
        "epochs were chosen on the test split itself, and their test numbers are slightly "
        "optimistic."
    )
    if not new:
        return f"All {old} runs {before}"
    return f"{line} But {old} of {old + new} runs {before}"


def budget_text(ctx: ReportContext) -> str:
    """The training budget, per kind: steps planned (a range where it grows with the training
    size) and how often the selection split was scored."""
    budgets = [b for b in ctx.data.budgets.values() if b.get("kind")]
    if not budgets:
        return "not recorded (runs written before cnnvit recorded budgets)"
    kinds = list(dict.fromkeys(str(b["kind"]) for b in budgets))
    return "; ".join(_budget_kind(k, [b for b in budgets if b["kind"] == k]) for k in kinds)


def _budget_kind(kind: str, budgets: list[dict]) -> str:
    steps = _range([b.get("steps_planned") for b in budgets])
    scores = _range([b.get("evaluations_planned") for b in budgets])
    if kind == "epochs":
        per_epoch = " by training size" if "to" in steps else ""
        return (
            f"epochs: {steps} optimiser steps planned per run{per_epoch}, the selection split "
            f"scored after every epoch ({scores} times)"
        )
    if kind == "steps":
        return (
            f"steps: {steps} optimiser steps planned per run at every training size, the "
            f"selection split scored {scores} times"
        )
    patience = _range([b.get("patience") for b in budgets])
    return (
        f"early stopping: a run stops after {patience} scores of the selection split without a "
        f"new best (at most {steps} optimiser steps, scored up to {scores} times) and is "
        "evaluated with its best-scoring weights"
    )


def _range(values: list[object]) -> str:
    numbers = sorted({int(v) for v in values if isinstance(v, (int, float)) and v == v})
    if not numbers:
        return "an unknown number of"
    if len(numbers) == 1:
        return f"{numbers[0]:,}"
    return f"{numbers[0]:,} to {numbers[-1]:,}"


def _distinct(envs: dict[str, dict], *keys: str) -> str:
    """The distinct values of a key over all runs (several means a mixed study: say so)."""
    values = []
    for env in envs.values():
        value = next((env[k] for k in keys if env.get(k)), None)
        if value is not None and str(value) not in values:
            values.append(str(value))
    return "; ".join(values)


def _versions(envs: dict[str, dict]) -> str:
    keys = ("python", "torch", "torchvision", "timm", "cnnvit")
    parts = [f"{k} {_distinct(envs, k)}" for k in keys if _distinct(envs, k)]
    return ", ".join(parts) or "unknown"
