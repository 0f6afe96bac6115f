"""One ``<section>`` of the report: an id, a title, a renderer, and the figures and tables it
owns (built once by ``write_report``, saved under ``figures/`` and ``tables/``, and handed back
through ``ctx.figures`` / ``ctx.tables``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from cnnvit.report.context import ReportContext

__all__ = ["Section"]


@dataclass(frozen=True)
class Section:
    """One ``<section>`` of the report."""

    id: str
    title: str
    render: Callable[[ReportContext], str]
    figures: Callable[[ReportContext], dict[str, Figure | None]] | None = None
    tables: Callable[[ReportContext], dict[str, pd.DataFrame]] | None = None
    shown: Callable[[ReportContext], bool] | None = None  # None: always

    def is_shown(self, ctx: ReportContext) -> bool:
        return self.shown is None or self.shown(ctx)
