"""``local``: the cells one after another in this process, each with the threads its recipe
sets (today's behaviour, no extra install)."""

from __future__ import annotations

from collections.abc import Sequence

from cnnvit.study.cell import CellOutcome, run_cell
from cnnvit.study.config import Cell
from cnnvit.study.executors.base import Tracker


class LocalExecutor:
    def run(self, cells: Sequence[Cell], tracker: Tracker) -> list[CellOutcome]:
        outcomes = []
        for cell in cells:
            tracker.started(cell)
            outcomes.append(run_cell(cell))
            tracker.finished(outcomes[-1])
        return outcomes
