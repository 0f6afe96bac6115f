"""The report's recipe-tuning section: every trial of the per-model search and the setting each
model's cells then trained with, read from ``tuning/tuning.json`` (:mod:`cnnvit.study.tuning`).
Shown only for a study that tuned."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from cnnvit.folders import StudyFolder
from cnnvit.formatting import pct
from cnnvit.markup import Markup, join, note, table, tag

if TYPE_CHECKING:
    from cnnvit.report.context import ReportContext

__all__ = ["render_tuning", "tuning_shown", "tuning_table", "tuning_tables"]

EXPLAIN = (
    "Every model's learning rate (and weight decay, where searched) was chosen by the same "
    "procedure before its cells trained: each tried setting is a run at one training size and "
    "seed, scored by its best accuracy on the selection split (held out of the training pool; "
    "the test split is never seen), and the highest score wins (the first of equal ones). "
    "A trial that diverged or failed has no score."
)


def _record(ctx: ReportContext) -> dict[str, Any] | None:
    return StudyFolder(ctx.data.info.root).read_tuning()


def tuning_shown(ctx: ReportContext) -> bool:
    return _record(ctx) is not None


def tuning_table(record: dict[str, Any]) -> pd.DataFrame:
    """One row per trial: model, setting, status, selection score, steps, chosen."""
    chosen = record.get("chosen") or {}
    rows = []
    for trial in record.get("trials") or []:
        setting = trial.get("setting") or {}
        rows.append(
            {
                "model": trial.get("model"),
                "lr": setting.get("lr"),
                "weight_decay": setting.get("weight_decay"),
                "status": trial.get("status"),
                "selection_score": trial.get("score"),
                "steps": trial.get("steps"),
                "still_improving": trial.get("still_improving"),
                "chosen": chosen.get(trial.get("model")) == setting,
                "run_dir": trial.get("run_dir"),
            }
        )
    return pd.DataFrame(rows)


def tuning_tables(ctx: ReportContext) -> dict[str, pd.DataFrame]:
    record = _record(ctx)
    return {} if record is None else {"tuning": tuning_table(record)}


def render_tuning(ctx: ReportContext) -> str:
    record = _record(ctx)
    if record is None:
        return note("This study did not tune its recipes.")
    frame = ctx.tables.get("tuning", tuning_table(record))
    method = "a grid" if record.get("method") == "grid" else "Optuna's TPE sampler"
    where = (
        f"Searched with {method} at training fraction {record.get('fraction'):g}, seed "
        f"{record.get('seed')}; score: {record.get('score')}."
    )
    headers = ["model", "learning rate", "weight decay", "status", "selection top-1", "chosen"]
    rows = [
        [
            r.model,
            f"{r.lr:.3g}",
            "recipe's" if _missing(r.weight_decay) else f"{r.weight_decay:.3g}",
            r.status,
            "—" if _missing(r.selection_score) else pct(r.selection_score),
            Markup("<b>chosen</b>") if r.chosen else "",
        ]
        for r in frame.itertuples()
    ]
    chosen = "; ".join(
        f"{model}: " + ", ".join(f"{_word(k)} {v:.3g}" for k, v in setting.items())
        for model, setting in (record.get("chosen") or {}).items()
    )
    return join(
        [
            tag("p", where),
            table(headers, rows, classes=["name", "num", "num", "", "num", ""]),
            tag("p", f"The cells trained with: {chosen or 'nothing chosen (no trial finished)'}."),
            note(EXPLAIN, "note"),
        ]
    )


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _word(key: str) -> str:
    return {"lr": "learning rate", "weight_decay": "weight decay"}.get(key, key)
