"""Per-model recipe tuning: the same search for every model, scored on the selection split.

Each trial is a run like a cell (:class:`Trial` is a :class:`~cnnvit.study.config.Cell` with
its own folder under ``DIR/tuning/``), so a finished trial is skipped on a re-run and an
interrupted one resumes. A trial's score is its best selection-split accuracy; a trial that
diverged or failed scores below every finished one. The grid is every ``lr`` × ``weight_decay``;
with ``trials``, Optuna's TPE sampler proposes them from the grid's ranges (log-uniform), seeded,
and a re-run replays the finished trials' scores into it so it proposes the same ones again.
The grid's trials of every model go to the study's executor at once (side by side on Ray or
SLURM); Optuna's run one at a time, each proposed from the scores before it.
``tuning.json`` records every trial and the chosen setting per model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cnnvit.folders import RunFolder, StudyFolder
from cnnvit.study.config import Cell, StudyConfig, StudyModel, Tuning, cell_config

# Runs trials (side by side where the executor can; each skipped when finished) and returns
# their statuses in the same order.
RunTrials = Callable[[Sequence[Cell]], list[str]]
SCORE = "best_selection_acc"


@dataclass(frozen=True)
class Trial(Cell):
    """One tried setting of one model: a run under ``DIR/tuning/<id>``."""

    setting: tuple[tuple[str, float], ...] = ()  # (("lr", 0.001), ("weight_decay", 0.05))

    @property
    def id(self) -> str:
        keys = "".join(f"-{_short(k)}{v:.3g}" for k, v in self.setting)
        return f"{super().id}{keys}"


def _short(key: str) -> str:
    return {"lr": "lr", "weight_decay": "wd"}[key]


def tune(
    study: StudyConfig, folder: StudyFolder, run_trials: RunTrials
) -> dict[str, dict[str, float]]:
    """Search every model's setting (when ``study.tuning.enabled``); write tuning.json; return
    each model's chosen keys by display label (empty when tuning is off)."""
    settings = study.tuning
    if not settings.enabled:
        return {}
    fraction = settings.fraction if settings.fraction is not None else min(study.fractions)
    seed = settings.seed if settings.seed is not None else study.seeds[0]
    if settings.trials is None:  # a grid: every point of every model at once
        batch = [
            _trial(study, model, fraction, seed, setting, folder)
            for model in study.models
            for setting in grid(settings)
        ]
        records = [_record(t, status) for t, status in zip(batch, run_trials(batch), strict=True)]
    else:  # Optuna: each model's trials in turn, each proposed from the scores before it
        records = [
            record
            for model in study.models
            for record in _optuna_search(
                settings, _attempt(study, model, fraction, seed, folder, run_trials)
            )
        ]
    chosen = {}
    for model in study.models:
        finished = [r for r in records if r["model"] == model.display and r["score"] is not None]
        if finished:
            best = max(finished, key=lambda r: r["score"])  # the first of equals: grid order
            chosen[model.display] = dict(best["setting"])
    folder.write_tuning(
        {
            "method": "optuna-tpe" if settings.trials else "grid",
            "fraction": fraction,
            "seed": seed,
            "score": f"{SCORE} (the selection split)",
            "trials": records,
            "chosen": chosen,
        }
    )
    return chosen


def _attempt(
    study: StudyConfig,
    model: StudyModel,
    fraction: float,
    seed: int,
    folder: StudyFolder,
    run_trials: RunTrials,
) -> Callable[[dict[str, float]], dict[str, Any]]:
    """One trial of a sequential search: run the setting, return its record."""

    def attempt(setting: dict[str, float]) -> dict[str, Any]:
        trial = _trial(study, model, fraction, seed, setting, folder)
        (status,) = run_trials([trial])
        return _record(trial, status)

    return attempt


def grid(settings: Tuning) -> list[dict[str, float]]:
    """Every combination of the listed values, learning rate outermost."""
    decays = settings.weight_decay or [None]
    return [
        {"lr": lr} if wd is None else {"lr": lr, "weight_decay": wd}
        for lr in settings.lr
        for wd in decays
    ]


def _optuna_search(
    settings: Tuning, attempt: Callable[[dict[str, float]], dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    import optuna  # only a search with `trials` needs it

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=settings.seed or 0)
    )
    for _ in range(settings.trials or 0):
        ask = search.ask()
        setting = {"lr": _rounded(ask.suggest_float("lr", *_range(settings.lr), log=True))}
        if settings.weight_decay:
            low, high = _range(settings.weight_decay)
            setting["weight_decay"] = _rounded(
                ask.suggest_float("weight_decay", max(low, 1e-8), high, log=True)
            )
        record = attempt(setting)
        score = record["score"]
        search.tell(ask, score if score is not None else 0.0)
        yield record


def _range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    return (low, high) if high > low else (low / 3, high * 3)


def _rounded(value: float) -> float:
    # Three significant digits: the folder name shows them, and a re-run must name the same one.
    return float(f"{value:.3g}")


def _trial(
    study: StudyConfig,
    model: StudyModel,
    fraction: float,
    seed: int,
    setting: dict[str, float],
    folder: StudyFolder,
) -> Trial:
    config = cell_config(study, model, fraction, seed, None, setting)
    trial = Trial(model.display, fraction, seed, None, config, tuple(setting.items()))
    config.output.dir = folder.tuning_run(trial.id).path
    return trial


def _record(trial: Trial, status: str) -> dict[str, Any]:
    results = RunFolder(trial.config.output.dir).read_results() or {}
    score = results.get(SCORE)
    usable = results.get("status") == "completed" and isinstance(score, float | int)
    return {
        "model": trial.model,
        "id": trial.id,
        "setting": dict(trial.setting),
        "status": results.get("status", status),
        "score": float(score) if usable and math.isfinite(score) else None,
        "steps": results.get("steps_completed"),
        "still_improving": (results.get("convergence") or {}).get("still_improving"),
        "run_dir": f"{trial.config.output.dir.parent.name}/{trial.id}",
    }
