"""Read a study folder into tables: one row per cell, aggregates over seeds, per-epoch curves.

Only files are read (study.yaml, study.json and the run folders that ``cnnvit train`` writes),
never models, so a report can be rebuilt anywhere the folder is copied. A cell whose folder is
absent is ``missing``; a run folder without results.json is ``missing`` too (it never got far
enough to say anything). Numbers a run did not produce are NaN, not errors.

Each file is read once and the cost grows linearly with the number of cells: results.json is
read once per cell for every table that needs it, and the epoch logs are parsed together, not
one small DataFrame per cell (``tests/report/test_scaling.py``, ``docs/scale.md``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cnnvit.folders import RunFolder, StudyFolder, StudyFolderError, read_json
from cnnvit.formatting import as_number

# The columns of results.csv, in order: the cell, its grid point, its status, then its numbers.
RESULT_COLUMNS = [
    "cell",
    "model",
    "fraction",
    "num_train_images",
    "num_selection_images",
    "num_test_images",
    "seed",
    "trainable_blocks",
    "status",
    "error",
    "best_selection_top1",
    "test_top1",
    "test_top5",
    "test_macro_f1",
    "test_ece",
    "params_total",
    "params_trainable",
    "mean_epoch_seconds",
    "train_seconds",
    "peak_memory_mb",
    "epochs_completed",
    "steps_completed",
    "budget",
    "steps_planned",
    "stopped_early",
    "still_improving",
    "selected_on",
]

# Accuracy-like metrics aggregated with mean, std and a 95 % interval over seeds.
SPREAD_METRICS = ["test_top1", "best_selection_top1", "test_macro_f1", "test_ece"]
# Cost metrics aggregated with a plain mean over seeds.
MEAN_METRICS = [
    "mean_epoch_seconds",
    "train_seconds",
    "peak_memory_mb",
    "params_total",
    "params_trainable",
]
GROUP_KEYS = ["model", "fraction", "trainable_blocks"]

# results.csv column -> its results.json keys, newest first: runs written before the three-way
# split called the test split "val" and chose their best epoch on it.
_RESULT_KEYS = {
    "best_selection_top1": ("best_selection_acc", "best_val_acc"),
    "test_top1": ("test_top1", "final_top1"),
    "test_top5": ("test_top5", "final_top5"),
    "test_macro_f1": ("test_macro_f1", "macro_f1"),
    "test_ece": ("test_ece",),
    "params_total": ("params_total",),
    "params_trainable": ("params_trainable",),
    "mean_epoch_seconds": ("mean_epoch_seconds",),
    "train_seconds": ("train_seconds",),
    "peak_memory_mb": ("peak_memory_mb",),
    "epochs_completed": ("epochs_completed",),
    "steps_completed": ("steps_completed",),
    "num_train_images": ("num_train_images",),
    "num_selection_images": ("num_selection_images",),
    "num_test_images": ("num_test_images", "num_val_images"),
}


_COUNT_COLUMNS = (
    "num_train_images",
    "num_selection_images",
    "num_test_images",
    "params_total",
    "params_trainable",
    "steps_completed",
)
_NULLABLE_COUNTS = (*_COUNT_COLUMNS, "steps_planned")


@dataclass(frozen=True)
class CellSpec:
    """One cell as study.json lists it."""

    id: str
    model: str  # display label
    model_name: str | None  # registry name, where known
    fraction: float
    seed: int
    trainable_blocks: int | None
    run_dir: Path  # absolute


@dataclass
class StudyInfo:
    """What study.json and study.yaml say about the study as a whole."""

    root: Path
    name: str
    command: str | None
    started_at: str | None
    finished_at: str | None
    cells: list[CellSpec]
    config: dict[str, Any] = field(default_factory=dict)  # study.yaml as plain data

    # Cached: each reads every cell, and the report asks for them many times.
    @cached_property
    def models(self) -> list[str]:
        """Display labels in the study's order (study.yaml first, then as cells list them)."""
        labels = [_label(m) for m in self.config.get("models") or []]
        seen = set(labels)
        for cell in self.cells:
            if cell.model not in seen:
                labels.append(cell.model)
                seen.add(cell.model)
        return labels

    @cached_property
    def model_names(self) -> dict[str, str]:
        """Display label -> registry name (labels and names differ when a study sets `label`)."""
        names = {_label(m): _name(m) for m in self.config.get("models") or []}
        for cell in self.cells:
            if cell.model_name:
                names.setdefault(cell.model, cell.model_name)
        return names

    @cached_property
    def run_dirs(self) -> dict[str, Path]:
        """Cell id -> its run folder (absolute)."""
        return {c.id: c.run_dir for c in self.cells}

    @property
    def data_spec(self) -> str | None:
        data = self.config.get("data") or {}
        return data.get("spec") if isinstance(data, dict) else None


# --- study.json / study.yaml -------------------------------------------------------------


def load_study_info(study_dir: Path | str) -> StudyInfo:
    """Read study.json (the cells in run order) and study.yaml (the resolved config).

    Without study.json (a hand-made folder, or the runner died before writing it) the cells are
    the run folders under ``runs/``, described by their own results.json.
    """
    folder = StudyFolder(study_dir)
    root = folder.path
    config = folder.read_config_data() or {}
    meta = folder.read_info()
    if meta is None:
        cells = _cells_from_run_folders(folder)
        if not cells:
            raise StudyFolderError(f"{root} has neither study.json nor run folders under runs/")
        meta = {}
    else:
        cells = [_cell_spec(root, c) for c in meta.get("cells") or []]
    return StudyInfo(
        root=root,
        name=str(meta.get("name") or config.get("name") or root.name),
        command=meta.get("command"),
        started_at=meta.get("started_at"),
        finished_at=meta.get("finished_at"),
        cells=cells,
        config=config,
    )


def _cell_spec(root: Path, c: dict[str, Any]) -> CellSpec:
    tb = c.get("trainable_blocks")
    return CellSpec(
        id=str(c["id"]),
        model=str(c["model"]),
        model_name=c.get("model_name"),
        fraction=float(c["fraction"]),
        seed=int(c["seed"]),
        trainable_blocks=None if tb is None else int(tb),
        run_dir=root / c.get("run_dir", StudyFolder(root).run_dir_entry(str(c["id"]))),
    )


def _cells_from_run_folders(folder: StudyFolder) -> list[CellSpec]:
    out = []
    for run in folder.run_folders():
        res = run.read_results() or {}
        if not res:
            continue
        tb = res.get("trainable_blocks")
        out.append(
            CellSpec(
                id=run.name,
                model=str(res.get("model", run.name)),
                model_name=res.get("model"),
                fraction=float(res.get("train_fraction", 1.0)),
                seed=int(res.get("seed", 0)),
                trainable_blocks=None if tb is None else int(tb),
                run_dir=run.path,
            )
        )
    return out


def _label(entry: Any) -> str:
    if isinstance(entry, str):
        return entry
    return str(entry.get("label") or entry["name"])


def _name(entry: Any) -> str:
    return entry if isinstance(entry, str) else str(entry["name"])


# --- one row per cell ----------------------------------------------------------------------


ResultsJson = Mapping[str, dict[str, Any] | None]


def read_results_json(info: StudyInfo) -> dict[str, dict[str, Any] | None]:
    """results.json of every cell, by cell id (None where it is missing or damaged): read once
    and handed to the readers below, which otherwise read it themselves."""
    return {cell.id: RunFolder(cell.run_dir).read_results() for cell in info.cells}


def _results_of(info: StudyInfo, found: ResultsJson | None) -> ResultsJson:
    return read_results_json(info) if found is None else found


def collect_results(
    study_dir: Path | str, info: StudyInfo | None = None, found: ResultsJson | None = None
) -> pd.DataFrame:
    """One row per cell, in study.json order, with the columns of ``RESULT_COLUMNS``.

    ``status`` is the run's own (completed, diverged, failed, running) or ``missing`` where the
    cell has no results.json. ``trainable_blocks`` is a nullable integer (NA = all trainable).
    ``found``: every cell's results.json (:func:`read_results_json`), read here when absent.
    """
    info = info or load_study_info(study_dir)
    found = _results_of(info, found)
    rows = [_result_row(cell, found.get(cell.id)) for cell in info.cells]
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    frame["trainable_blocks"] = frame["trainable_blocks"].astype("Int64")
    for col in ("seed",):
        frame[col] = frame[col].astype("int64")
    for col in _NULLABLE_COUNTS:
        frame[col] = frame[col].astype("Int64")
    for col in ("stopped_early", "still_improving"):
        frame[col] = frame[col].astype("boolean")
    return frame


def _result_row(cell: CellSpec, res: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "cell": cell.id,
        "model": cell.model,
        "fraction": cell.fraction,
        "seed": cell.seed,
        "trainable_blocks": cell.trainable_blocks,
        "status": "missing" if res is None else str(res.get("status", "unknown")),
        "error": None if res is None else res.get("error"),
    }
    res = res or {}
    for col, keys in _RESULT_KEYS.items():
        row[col] = next((as_number(res[k]) for k in keys if k in res), math.nan)
    for col in _COUNT_COLUMNS:
        row[col] = None if math.isnan(row[col]) else int(row[col])
    row.update(_budget_columns(res))
    # Runs from before the three-way split chose their best epoch on the test split itself.
    row["selected_on"] = None
    if res:
        row["selected_on"] = "selection" if "num_selection_images" in res else "test"
    return row


def _budget_columns(res: dict[str, Any]) -> dict[str, Any]:
    """budget (its kind), steps_planned, stopped_early and still_improving; None where the run
    did not record them (runs from before budgets and the convergence check)."""
    budget = res.get("budget")
    budget = budget if isinstance(budget, dict) else {}
    planned = as_number(budget.get("steps_planned"))
    convergence = res.get("convergence")
    flag = convergence.get("still_improving") if isinstance(convergence, dict) else None
    stopped = res.get("stopped_early")
    return {
        "budget": budget.get("kind"),
        "steps_planned": None if math.isnan(planned) else int(planned),
        "stopped_early": stopped if isinstance(stopped, bool) else None,
        "still_improving": flag if isinstance(flag, bool) else None,
    }


# --- aggregates over seeds -----------------------------------------------------------------


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Aggregate completed cells over seeds, one row per (model, fraction, trainable_blocks).

    ``n`` counts completed cells only. For each of ``SPREAD_METRICS``: ``_mean``, ``_std``
    (ddof=1; NaN with one seed), ``_ci95_low``/``_ci95_high`` (Student t interval of the mean;
    NaN with one seed). Cost columns are plain means. Rows keep the order in which models and
    fractions first appear in ``results``.
    """
    done = results[results["status"] == "completed"]
    rows = []
    for keys, group in done.groupby(GROUP_KEYS, sort=False, dropna=False):
        model, fraction, blocks = keys
        row: dict[str, Any] = {
            "model": model,
            "fraction": fraction,
            "trainable_blocks": blocks,
            "n": len(group),
            "num_train_images": _typical_count(group["num_train_images"]),
        }
        for metric in SPREAD_METRICS:
            row.update(_spread(group[metric], metric))
        for metric in MEAN_METRICS:
            values = group[metric].astype("float64").dropna()
            row[metric] = float(values.mean()) if len(values) else math.nan
        rows.append(row)
    columns = ["model", "fraction", "trainable_blocks", "n", "num_train_images"]
    columns += [
        f"{m}_{s}" for m in SPREAD_METRICS for s in ("mean", "std", "ci95_low", "ci95_high")
    ]
    columns += MEAN_METRICS
    summary = pd.DataFrame(rows, columns=columns)
    summary["trainable_blocks"] = summary["trainable_blocks"].astype("Int64")
    summary["num_train_images"] = summary["num_train_images"].astype("Int64")
    return _ordered(summary, results)


def _spread(values: pd.Series, name: str) -> dict[str, float]:
    """Mean, sample std and the 95 % Student-t interval of the mean of the non-missing values."""
    x = values.astype("float64").dropna().to_numpy()
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    if n > 1:
        half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        low = high = math.nan
    return {
        f"{name}_mean": mean,
        f"{name}_std": std,
        f"{name}_ci95_low": low,
        f"{name}_ci95_high": high,
    }


def _typical_count(values: pd.Series) -> int | None:
    # Seeds draw different subsets of the same size; the median guards against a stray value.
    x = values.dropna().astype("float64")
    return None if x.empty else round(float(np.median(x)))


def _ordered(summary: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    """Sort by model (study order), then trainable_blocks, then fraction."""
    if summary.empty:
        return summary
    model_rank = {m: i for i, m in enumerate(dict.fromkeys(results["model"]))}
    key = summary.assign(
        _m=summary["model"].map(model_rank),
        _k=summary["trainable_blocks"].astype("float64").fillna(-1.0),
    )
    key = key.sort_values(["_m", "_k", "fraction"], kind="stable")
    return key.drop(columns=["_m", "_k"]).reset_index(drop=True)


# --- per-epoch curves, final metrics, environment -----------------------------------------


def read_curves(
    info: StudyInfo, results: pd.DataFrame, found: ResultsJson | None = None
) -> pd.DataFrame:
    """The epochs.csv of every completed cell, stacked, with the cell's grid coordinates.

    Columns: cell, model, fraction, seed, trainable_blocks, then epochs.csv's own columns, and
    three that read the same for every run: ``step`` (optimiser steps; for an old log without
    steps, epoch × steps per epoch where results.json knows it, else NaN), ``score_acc`` (the
    accuracy scored during training) and ``scored_on``: ``selection``, or ``test`` for runs from
    before the three-way split, whose ``val_acc`` was the test split's.

    The logs are parsed together, one CSV parse per distinct header (one for a study written by
    one version of cnnvit), not a DataFrame per cell: the same table as stacking each log's
    own frame, in linear time with a small constant.
    """
    done = results[results["status"] == "completed"].reset_index(drop=True)
    runs = info.run_dirs
    # header line -> the data lines of every log with that header, each prefixed by the
    # position of its cell in ``done``
    groups: dict[str, list[str]] = {}
    for pos, cell in enumerate(done["cell"]):
        text = _log_text(RunFolder(runs[cell]))
        if text is None:
            continue
        lines = text.splitlines()
        body = groups.setdefault(lines[0], [])
        body.extend(f"{pos},{line}" for line in lines[1:] if line)
    frames = []
    for header, body in groups.items():
        log = _parse_logs(header, body, done, runs, found)
        if log is not None:
            frames.append(log)
    if not frames:
        return pd.DataFrame(columns=[*CURVE_KEYS, "epoch", "step", "score_acc", "scored_on"])
    curves = pd.concat(frames, ignore_index=True)
    if len(frames) > 1:  # logs of two headers: back to the order of the cells
        curves = curves.sort_values(_POS, kind="stable", ignore_index=True)
    curves = curves.drop(columns=_POS)
    curves["trainable_blocks"] = curves["trainable_blocks"].astype("Int64")
    return curves


CURVE_KEYS = ["cell", "model", "fraction", "seed", "trainable_blocks"]
_POS = "__cell_position"  # which cell of ``done`` a log row came from (dropped at the end)


def _log_text(run: RunFolder) -> str | None:
    """One run's epochs.csv, or None where there is none (or no header)."""
    try:
        text = run.epochs.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None
    return text if text.strip() else None


def _parse_logs(
    header: str,
    body: list[str],
    done: pd.DataFrame,
    runs: Mapping[str, Path],
    found: ResultsJson | None,
) -> pd.DataFrame | None:
    """The logs that share ``header`` as one frame with the cells' keys, ``step``,
    ``score_acc`` and ``scored_on`` (None where the header lacks the epoch or the score)."""
    log = pd.read_csv(io.StringIO("\n".join([f"{_POS},{header}", *body])))
    if "epoch" not in log:
        return None
    if "selection_acc" in log:
        log["score_acc"], log["scored_on"] = log["selection_acc"], "selection"
    elif "val_acc" in log:
        log["score_acc"], log["scored_on"] = log["val_acc"], "test"
    else:
        return None
    pos = log[_POS].to_numpy()
    keys = done.iloc[pos]
    for i, key in enumerate(CURVE_KEYS):
        log.insert(i, key, keys[key].to_numpy())
    if "step" not in log:
        cells = done["cell"].to_numpy()
        per_epoch = {p: _steps_per_epoch(runs[cells[p]], found, cells[p]) for p in set(pos)}
        log["step"] = log["epoch"] * np.array([per_epoch[p] for p in pos], dtype="float64")
    log["step"] = log["step"].astype("float64")
    # the position column goes last, as if each log had been read on its own
    return log[[c for c in log.columns if c != _POS] + [_POS]]


def _steps_per_epoch(run_dir: Path, found: ResultsJson | None, cell: str) -> float:
    """Optimiser steps per epoch as results.json's budget records it; NaN where it does not."""
    res = found.get(cell) if found is not None else RunFolder(run_dir).read_results()
    budget = (res or {}).get("budget")
    return as_number(budget.get("steps_per_epoch")) if isinstance(budget, dict) else math.nan


def read_metrics(info: StudyInfo) -> dict[str, dict[str, Any]]:
    """metrics.json of every cell that has one, by cell id."""
    found = {cell.id: RunFolder(cell.run_dir).read_metrics() for cell in info.cells}
    return {cell_id: data for cell_id, data in found.items() if data is not None}


def read_environments(info: StudyInfo) -> dict[str, dict[str, Any]]:
    """environment.json of every cell that has one, by cell id."""
    found = {cell.id: read_json(RunFolder(cell.run_dir).environment) for cell in info.cells}
    return {cell_id: data for cell_id, data in found.items() if data is not None}


def read_result_dicts(
    info: StudyInfo, key: str, found: ResultsJson | None = None
) -> dict[str, dict[str, Any]]:
    """results.json's ``key`` (a mapping) of every cell that has one, by cell id:
    ``convergence`` (was the selection score still rising when training stopped, and the
    check's advice) or ``budget`` (kind, steps per epoch, steps and evaluations planned)."""
    found = _results_of(info, found)
    out = {}
    for cell in info.cells:
        value = (found.get(cell.id) or {}).get(key)
        if isinstance(value, dict):
            out[cell.id] = value
    return out


def read_families(info: StudyInfo, found: ResultsJson | None = None) -> dict[str, str]:
    """Model label -> family (cnn, vit, hybrid) as its runs recorded it in results.json;
    ``unknown`` for a model none of whose runs says (not started, or written before cnnvit
    recorded families)."""
    found = _results_of(info, found)
    families: dict[str, str] = {}
    for cell in info.cells:
        family = (found.get(cell.id) or {}).get("family")
        if isinstance(family, str) and cell.model not in families:
            families[cell.model] = family
    return {model: families.get(model, "unknown") for model in info.models}


# --- everything a report needs -------------------------------------------------------------


@dataclass
class StudyData:
    """Everything read from a study folder, once, for every figure, table and section."""

    info: StudyInfo
    results: pd.DataFrame
    summary: pd.DataFrame
    curves: pd.DataFrame
    metrics: dict[str, dict[str, Any]]
    environments: dict[str, dict[str, Any]]
    families: dict[str, str] = field(default_factory=dict)  # model label -> cnn/vit/hybrid
    convergence: dict[str, dict[str, Any]] = field(default_factory=dict)  # cell -> its check
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)  # cell -> its budget

    @property
    def models(self) -> list[str]:
        return self.info.models


def load_study_data(study_dir: Path | str) -> StudyData:
    """Read a study folder: cells, per-cell results, summary, curves, metrics, environments."""
    info = load_study_info(study_dir)
    found = read_results_json(info)  # once per cell, for every table below
    results = collect_results(study_dir, info, found)
    return StudyData(
        info=info,
        results=results,
        summary=summarize(results),
        curves=read_curves(info, results, found),
        metrics=read_metrics(info),
        environments=read_environments(info),
        families=read_families(info, found),
        convergence=read_result_dicts(info, "convergence", found),
        budgets=read_result_dicts(info, "budget", found),
    )
