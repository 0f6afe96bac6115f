"""One cell of a study, trained where an executor runs it: skipped when finished, resumed from
its last checkpoint when interrupted, recorded as failed (not raised) when training fails."""

from __future__ import annotations

import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from cnnvit.folders import FINAL, RunFolder, RunFolderError, write_text
from cnnvit.locks import FolderBusyError
from cnnvit.study.config import Cell
from cnnvit.train.run import resume, train
from cnnvit.ui import console


@dataclass(frozen=True)
class CellOutcome:
    cell: Cell
    status: str  # completed | diverged | failed | skipped (finished earlier)
    seconds: float
    attempts: int = 1  # > 1: the worker of an earlier attempt died and the cell ran again


def run_cell(cell: Cell) -> CellOutcome:
    """Train one cell, or skip/resume it according to what its folder already holds."""
    run = RunFolder(cell.config.output.dir)
    status = run.status()
    start = time.perf_counter()
    if status in FINAL:
        console.print(f"[dim]{cell.id}: {status} earlier, skipped[/]")
        return CellOutcome(cell, "skipped", 0.0)
    console.rule(f"{cell.id}")
    try:
        if run.latest_checkpoint() is not None:
            results = resume(run.path)
        else:
            # A folder without a checkpoint holds nothing worth keeping (killed in epoch 1).
            shutil.rmtree(run.path, ignore_errors=True)
            results = train(cell.config)
        status = results["status"]
    except (KeyboardInterrupt, RunFolderError, FolderBusyError):  # the folder is not ours to mark
        raise
    except Exception as err:  # a failing cell must not stop the study
        status = "failed"
        record_failure(cell, run, err)
    return CellOutcome(cell, status, time.perf_counter() - start)


def cell_status(run_dir: Path) -> str | None:
    """The status in a cell's results.json, or None where it has none."""
    return RunFolder(run_dir).status()


def record_failure(cell: Cell, run: RunFolder, err: Exception) -> None:
    """Make sure a failed cell has a results.json that says why, even if it never started."""
    console.print(f"[red]{cell.id} failed:[/] {type(err).__name__}: {err}")
    results = run.read_results() or {}
    results.update(
        status="failed",
        error=results.get("error") or f"{type(err).__name__}: {err}",
        model=cell.config.model.name,
        train_fraction=cell.fraction,
        seed=cell.seed,
        trainable_blocks=cell.trainable_blocks,
    )
    run.write_results(results)
    write_text(run.traceback, "".join(traceback.format_exception(err)))
