"""The folders between the stages: every file name in a run, study and analysis folder, the
status values, and reading and writing them safely. Nothing else in cnnvit spells these names.

Torch-free (json, yaml, csv, pandas only), so the report and the command line read folders
without importing torch::

    RUN FOLDER (``cnnvit train``, one cell of a study)
      config.yaml          the resolved run config (re-loadable with ``--config``)
      environment.json     versions, device, dtype, git revision, seed
      epochs.csv           one row per score of the selection split (epoch, step, train and
                           selection loss and accuracy, lr, seconds, throughput, memory)
      checkpoints/         latest.json -> epoch-NNNN/{model,ema,best}.safetensors + state.pt
      results.json         status and summary figures, each named by its split (train,
                           selection, test); the budget, steps, convergence; which weights the
                           final evaluation used (``evaluated_weights``: model, ema, best)
      skipped.csv          image files that could not be decoded, with the reason
      metrics.json         the final evaluation, on the test split
      predictions.parquet  one row per test image
      profile.json         the efficiency profile (studies)
      traceback.txt        why a study cell failed
      .cnnvit.lock         while a process writes the folder: its PID and host

    STUDY FOLDER (``cnnvit compare``)
      study.yaml, study.json, .cnnvit.lock (while ``compare`` runs), runs/<cell>/,
      tuning/<trial>/ + tuning.json (the recipe search), analysis/<name>/, agreement/,
      results.csv, results.parquet, summary.csv, tables/, figures/, report.html

    ANALYSIS FOLDER (``analysis/<name>/`` of a study, or what an analysis command writes)
      <name>.json          every number and the settings; PNG figures and CSV tables beside it
      run.json             the cells and settings of the finished analysis (skip when unchanged)
      error.txt            the traceback of a failed analysis
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import yaml

if TYPE_CHECKING:
    import pandas as pd

from cnnvit.errors import UserError

__all__ = [
    "FINAL",
    "AnalysisFolder",
    "RunFolder",
    "RunFolderError",
    "Status",
    "StudyFolder",
    "StudyFolderError",
    "json_ready",
    "read_json",
    "write_json",
    "write_text",
]

Status = Literal["running", "completed", "diverged", "failed"]
# Final for a deterministic recipe: a re-run of the study skips these cells.
FINAL: tuple[Status, ...] = ("completed", "diverged")
EvaluatedWeights = Literal["model", "ema"]
# In a run or study folder while a process writes it: its PID and host (:mod:`cnnvit.locks`).
LOCK_NAME = ".cnnvit.lock"


class RunFolderError(UserError, FileNotFoundError):
    """A folder given as a run is not one (the message names what is missing), or cannot take a
    new run."""


class StudyFolderError(UserError, FileNotFoundError):
    """A folder given as a study is not one (the message names what is missing)."""


# --- writing safely -------------------------------------------------------------------------


def json_ready(obj: Any) -> Any:
    """Plain JSON data: numpy scalars and arrays become Python numbers and lists, tuples lists,
    and NaN or infinite floats ``null`` (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_text(path: Path, text: str) -> None:
    """Write ``text`` under a temporary name and rename it into place: a reader (a study
    re-run, the report, a browser) never sees half a file, and a crash leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """``data`` (through :func:`json_ready`) as indented JSON, atomically."""
    write_text(path, json.dumps(json_ready(data), indent=2))


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None where the file is missing, half-written or not an object: a
    damaged file must not stop a report or a re-run."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_yaml(path: Path) -> dict[str, Any] | None:
    """A YAML mapping, or None where the file is missing, damaged or not a mapping."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Rows under a header, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # disk full: no half file left behind
        raise


# --- run folders ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointFiles:
    """One checkpoint folder of a run: ``checkpoints/epoch-NNNN/``."""

    path: Path
    epoch: int

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def ema_weights(self) -> Path:
        return self.path / "ema.safetensors"

    @property
    def best_weights(self) -> Path:
        """Early stopping: the best selection score's weights, which the run reports."""
        return self.path / "best.safetensors"

    @property
    def state(self) -> Path:
        return self.path / "state.pt"

    @property
    def evaluated_weights(self) -> Path:
        """The weights a run is evaluated on: the best selection score's under early stopping,
        else the EMA where the run kept one, else the last."""
        if self.best_weights.is_file():
            return self.best_weights
        return self.ema_weights if self.ema_weights.is_file() else self.weights


@dataclass(frozen=True)
class RunFolder:
    """A run folder (see the module docstring): file paths and their readers and writers."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # accept str too

    # file names
    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def environment(self) -> Path:
        return self.path / "environment.json"

    @property
    def epochs(self) -> Path:
        return self.path / "epochs.csv"

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    @property
    def skipped(self) -> Path:
        return self.path / "skipped.csv"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.parquet"

    @property
    def profile(self) -> Path:
        return self.path / "profile.json"

    @property
    def traceback(self) -> Path:
        return self.path / "traceback.txt"

    @property
    def lock(self) -> Path:
        """The marker of the one process writing the folder (:mod:`cnnvit.locks`)."""
        return self.path / LOCK_NAME

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def name(self) -> str:
        return self.path.name

    # what the folder holds
    def holds_run(self) -> bool:
        """Whether a run has started here (an epoch log or a checkpoint)."""
        return self.epochs.exists() or self.checkpoints.exists()

    def require(self, *, checkpoint: bool = False, results: bool = True) -> None:
        """Raise :class:`RunFolderError` naming what a run folder needs and this one lacks."""
        needed = [self.config] + ([self.results] if results else [])
        missing = [p.name for p in needed if not p.is_file()]
        if missing:
            raise RunFolderError(
                f"{self.path} is not a run folder (needs {' and '.join(p.name for p in needed)}; "
                f"missing {', '.join(missing)}); train one with `cnnvit train` or give "
                "--model NAME --weights FILE"
            )
        if checkpoint and self.latest_checkpoint() is None:
            raise RunFolderError(
                f"{self.path} has no checkpoint (looked in {self.checkpoints}); train it with "
                f"`cnnvit train --resume {self.path}`"
            )

    def read_results(self) -> dict[str, Any] | None:
        return read_json(self.results)

    def write_results(self, results: Mapping[str, Any]) -> None:
        write_json(self.results, results)

    def status(self) -> str | None:
        """The status results.json gives, or None where there is none (never started, or a
        damaged file)."""
        results = self.read_results()
        return None if results is None else results.get("status")

    def read_config_data(self) -> dict[str, Any]:
        """config.yaml as plain data (``cnnvit.config.read_run_config`` validates it)."""
        data = read_yaml(self.config)
        if data is None:
            raise RunFolderError(f"{self.config} is missing or not a YAML mapping")
        return data

    def write_config_data(self, data: Mapping[str, Any]) -> None:
        write_text(self.config, yaml.safe_dump(dict(data), sort_keys=False))

    def write_environment(self, environment: Mapping[str, Any]) -> None:
        write_json(self.environment, environment)

    def read_epochs(self) -> list[dict[str, str]]:
        if not self.epochs.is_file():
            return []
        with self.epochs.open(newline="") as f:
            return list(csv.DictReader(f))

    def write_epochs(self, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
        write_csv(self.epochs, columns, ([row[c] for c in columns] for row in rows))

    def write_skipped(self, skipped: Sequence[tuple[str, str]]) -> None:
        """(path, reason) of each file that could not be decoded; nothing when there is none."""
        if skipped:
            write_csv(self.skipped, ["path", "reason"], skipped)

    def read_skipped_paths(self) -> set[str]:
        if not self.skipped.is_file():
            return set()
        with self.skipped.open(newline="") as f:
            return {row["path"] for row in csv.DictReader(f)}

    def read_metrics(self) -> dict[str, Any] | None:
        return read_json(self.metrics)

    def write_evaluation(self, metrics: Mapping[str, Any], predictions: pd.DataFrame) -> None:
        """metrics.json and predictions.parquet of an evaluation (a frame from
        :func:`cnnvit.metrics.predictions_frame`)."""
        write_json(self.metrics, metrics)
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{self.predictions.name}.tmp"
        try:
            predictions.to_parquet(tmp, index=False)
            tmp.replace(self.predictions)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read_predictions(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        # pandas is imported here, not at the top: the command line and the analysis registry
        # import this module and must start without pandas' second of start-up.
        import pandas as pd

        if not self.predictions.is_file():
            raise RunFolderError(
                f"{self.path} has no {self.predictions.name}; evaluate it first with "
                f"`cnnvit evaluate {self.path}`"
            )
        return pd.read_parquet(self.predictions, columns=list(columns) if columns else None)

    def read_prediction_arrays(self, columns: Sequence[str]) -> dict[str, np.ndarray]:
        """Columns of predictions.parquet as NumPy arrays, by name: what
        :meth:`read_predictions` gives, a few times faster (no DataFrame; a reader of thousands
        of run folders, like the report's pairing, spends its time there). A file it cannot
        read as asked goes through :meth:`read_predictions`, which raises as it always has."""
        import pyarrow.parquet as pq

        columns = list(columns)
        try:
            table = pq.ParquetFile(self.predictions).read(columns=columns, use_threads=False)
        except Exception:  # missing, damaged: the slow path below says why
            table = None
        if table is None or table.column_names != columns:  # it leaves out missing columns
            frame = self.read_predictions(columns)
            return {c: frame[c].to_numpy() for c in columns}
        return {c: table.column(c).to_numpy() for c in columns}

    # checkpoints
    def checkpoint(self, epoch: int) -> CheckpointFiles:
        return CheckpointFiles(self.checkpoints / f"epoch-{epoch:04d}", epoch)

    @property
    def latest_pointer(self) -> Path:
        return self.checkpoints / "latest.json"

    def latest_checkpoint(self) -> CheckpointFiles | None:
        """The newest checkpoint there is: the one latest.json names, else (a pointer that is
        damaged or names a missing folder) the newest complete ``epoch-NNNN/``; None where there
        is none."""
        candidates = self.checkpoint_candidates()
        return candidates[0] if candidates else None

    def checkpoint_candidates(self) -> list[CheckpointFiles]:
        """Checkpoints to resume from, best first: latest.json's, then every ``epoch-NNNN/``
        with weights and state, newest first. A folder gets its ``epoch-NNNN`` name only once it
        is complete (it is written under a temporary name), so each of these is whole unless a
        file in it was damaged afterwards."""
        found: list[CheckpointFiles] = []
        pointer = read_json(self.latest_pointer) or {}
        try:
            named = CheckpointFiles(self.checkpoints / str(pointer["path"]), int(pointer["epoch"]))
        except (KeyError, TypeError, ValueError):
            named = None
        if named is not None and named.weights.is_file() and named.state.is_file():
            found.append(named)
        for folder in sorted(self.checkpoints.glob("epoch-*"), reverse=True):
            epoch = folder.name.removeprefix("epoch-")
            files = CheckpointFiles(folder, int(epoch)) if epoch.isdigit() else None
            if files and files.weights.is_file() and files.state.is_file() and files not in found:
                found.append(files)
        return found

    def point_to(self, checkpoint: CheckpointFiles) -> None:
        """Make ``checkpoint`` the latest, atomically."""
        write_text(
            self.latest_pointer,
            json.dumps({"epoch": checkpoint.epoch, "path": checkpoint.path.name}),
        )

    def evaluated_weights(self) -> Path:
        """The weights file evaluation uses (the latest checkpoint's EMA where the run kept
        one); :class:`RunFolderError` where there is no checkpoint."""
        self.require(checkpoint=True, results=False)
        latest = self.latest_checkpoint()
        assert latest is not None
        return latest.evaluated_weights


# --- analysis folders -----------------------------------------------------------------------


@dataclass(frozen=True)
class AnalysisFolder:
    """``analysis/<name>/``: an analysis's numbers (``<name>.json``), figures and tables, and
    the record of the run that wrote them."""

    path: Path
    name: str

    @property
    def result(self) -> Path:
        return self.path / f"{self.name}.json"

    @property
    def run_record(self) -> Path:
        return self.path / "run.json"

    @property
    def error(self) -> Path:
        return self.path / "error.txt"

    def file(self, name: str) -> Path:
        """A figure or table of the analysis, by file name."""
        return self.path / name

    def read_result(self) -> dict[str, Any] | None:
        return read_json(self.result)

    def write_result(self, result: Mapping[str, Any]) -> None:
        write_json(self.result, result)

    def read_run(self) -> dict[str, Any] | None:
        return read_json(self.run_record)

    def unchanged(self, settings: Mapping[str, Any]) -> bool:
        """Whether a finished run recorded exactly these settings (then it need not run again)."""
        earlier = self.read_run()
        return earlier is not None and {k: earlier.get(k) for k in settings} == dict(settings)

    def start(self) -> None:
        """Before a run: the folder exists and no longer claims a finished one."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.run_record.unlink(missing_ok=True)

    def finish(self, record: Mapping[str, Any]) -> None:
        self.error.unlink(missing_ok=True)
        write_json(self.run_record, record)

    def fail(self, traceback_text: str) -> None:
        write_text(self.error, traceback_text)

    def last_error_line(self) -> str | None:
        """The last line of error.txt, or None when the analysis did not fail."""
        if not self.error.is_file():
            return None
        lines = self.error.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "?"

    def files(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.is_file())


# --- study folders --------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyFolder:
    """A study folder (see the module docstring)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # accept str too

    @property
    def config(self) -> Path:
        return self.path / "study.yaml"

    @property
    def info(self) -> Path:
        return self.path / "study.json"

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    @property
    def lock(self) -> Path:
        """The marker of the one process writing the folder (:mod:`cnnvit.locks`)."""
        return self.path / LOCK_NAME

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def results_csv(self) -> Path:
        return self.path / "results.csv"

    @property
    def summary_csv(self) -> Path:
        return self.path / "summary.csv"

    @property
    def tables(self) -> Path:
        return self.path / "tables"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def agreement(self) -> Path:
        """Images where two models disagree, saved by the study for the report's grid."""
        return self.path / "agreement"

    @property
    def tuning(self) -> Path:
        """The recipe search: one run folder per model and tried setting, and tuning.json."""
        return self.path / "tuning"

    @property
    def tuning_json(self) -> Path:
        """Every tried setting with its selection score, and the chosen one per model."""
        return self.tuning / "tuning.json"

    def tuning_run(self, trial_id: str) -> RunFolder:
        return RunFolder(self.tuning / trial_id)

    def read_tuning(self) -> dict[str, Any] | None:
        return read_json(self.tuning_json)

    def write_tuning(self, data: Mapping[str, Any]) -> None:
        write_json(self.tuning_json, data)

    def run(self, cell_id: str) -> RunFolder:
        return RunFolder(self.runs / cell_id)

    def run_dir_entry(self, cell_id: str) -> str:
        """How study.json names a cell's run folder (relative to the study)."""
        return f"{self.runs.name}/{cell_id}"

    def analysis(self, name: str) -> AnalysisFolder:
        return AnalysisFolder(self.path / "analysis" / name, name)

    def disagreement_images(self, cell_a: str, cell_b: str) -> Path:
        """The images where the runs of two cells disagree (either order names one file)."""
        first, second = sorted((cell_a, cell_b))
        return self.agreement / f"{first}__{second}.npz"

    def require(self) -> None:
        if not self.info.is_file():
            raise StudyFolderError(
                f"{self.path} is not a study folder (no {self.info.name}); run a study into it "
                "with `cnnvit compare STUDY.yaml --out DIR`"
            )

    def read_info(self) -> dict[str, Any] | None:
        return read_json(self.info)

    def write_info(self, info: Mapping[str, Any]) -> None:
        write_json(self.info, info)

    def read_config_data(self) -> dict[str, Any] | None:
        return read_yaml(self.config)

    def write_config_data(self, data: Mapping[str, Any]) -> None:
        write_text(self.config, yaml.safe_dump(dict(data), sort_keys=False))

    def run_folders(self) -> list[RunFolder]:
        """Every folder under runs/, sorted by name."""
        return [RunFolder(p) for p in sorted(self.runs.glob("*/"))]
