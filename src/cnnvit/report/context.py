"""What every section of the report sees (:class:`ReportContext`): the study's data, the
figures and tables already built, and what is computed once for several sections (the verdict's
head-to-head comparisons and curves, the pairs of the agreement section, the colours)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import pandas as pd

from cnnvit.markup import Markup, swatch
from cnnvit.plotting import model_colors
from cnnvit.report.agreement import StudyAgreement, study_agreement
from cnnvit.report.analysis_summary import analysis_verdict
from cnnvit.report.collect import StudyData
from cnnvit.report.verdict import HeadToHead, head_to_heads, verdict
from cnnvit.stats.curves import CurveComparison

__all__ = ["ReportContext"]


@dataclass
class ReportContext:
    """What every section sees: the study's data and the figures/tables already built."""

    data: StudyData
    figures: dict[str, bytes] = field(default_factory=dict)  # name -> PNG bytes
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # name -> table

    @property
    def families(self) -> dict[str, str]:
        """Model label -> family, as the runs recorded it (picks the head-to-head pair among 3+
        models)."""
        return self.data.families

    @cached_property
    def pairs(self) -> dict[object, HeadToHead | None]:
        """The verdict's head-to-head pair per unfrozen depth (None = all trainable)."""
        return head_to_heads(self.data, self.families)

    @cached_property
    def verdict(self) -> list[str]:
        lines = verdict(self.data, self.families, self.pairs)
        return lines + analysis_verdict(self.data.info.root)

    @cached_property
    def curves(self) -> dict[object, CurveComparison | None]:
        """The head-to-head pair's fitted learning curves, by unfrozen depth."""
        return {k: None if p is None else p.curves for k, p in self.pairs.items()}

    @cached_property
    def still_improving(self) -> set[tuple[str, float, object]]:
        """(model, fraction, depth) where at least one completed run was still improving."""
        r = self.data.results
        flagged = r[(r["status"] == "completed") & r["still_improving"].fillna(False).astype(bool)]
        return {
            (row.model, float(row.fraction), _depth(row.trainable_blocks))
            for row in flagged.itertuples()
        }

    @cached_property
    def colors(self) -> dict[str, str]:
        return model_colors(self.data.models)

    def swatch(self, model: str) -> Markup:
        """The model's colour square (grey for a model the study does not list)."""
        return swatch(self.colors.get(model, "#999999"))

    @cached_property
    def agreement(self) -> StudyAgreement:
        """Every pair of models compared on the same images, per seed (agreement section)."""
        return study_agreement(self.data, self.families)


def _depth(blocks: object) -> object:
    return None if pd.isna(blocks) else int(blocks)
