"""Small pieces the report's sections share: a section's table (built once by
``write_report``), rows grouped by model in study order, a model's cell with its colour, and
numbers formatted for tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pandas as pd

from cnnvit.formatting import is_missing
from cnnvit.markup import Markup, esc, join
from cnnvit.report.collect import StudyData
from cnnvit.report.verdict import format_seconds

if TYPE_CHECKING:
    from cnnvit.report.context import ReportContext

__all__ = ["by_model", "cached_table", "mb", "model_cell", "params", "secs"]


def cached_table(ctx: ReportContext, name: str, build: Callable[[StudyData], pd.DataFrame]):
    """The table ``write_report`` built, or a fresh one where a section renders alone."""
    built = ctx.tables.get(name)
    return build(ctx.data) if built is None else built


def by_model(ctx: ReportContext, frame: pd.DataFrame):
    """Groups of ``frame`` by (model, trainable_blocks), in study order of models."""
    order = {m: i for i, m in enumerate(ctx.data.models)}
    groups = list(frame.groupby(["model", "trainable_blocks"], sort=False, dropna=False))
    return sorted(
        groups,
        key=lambda g: (order.get(g[0][0], len(order)), -1 if pd.isna(g[0][1]) else g[0][1]),
    )


def model_cell(ctx: ReportContext, model: str, blocks: object) -> Markup:
    text = model if pd.isna(blocks) else f"{model}, last {int(blocks)} blocks"
    return join([ctx.swatch(model), esc(text)])


def params(p: float) -> str:
    if is_missing(p):
        return "—"
    return f"{p / 1e6:.2f} M" if p < 100e6 else f"{p / 1e6:.0f} M"


def secs(s: float) -> str:
    return "—" if is_missing(s) else format_seconds(s)


def mb(x: float) -> str:
    return "—" if is_missing(x) else f"{x:,.0f} MB"
