"""Experiment trackers (``output.loggers``): TensorBoard, MLflow and Weights & Biases.

A run logs, to each tracker it names, what its run folder holds: every row of epochs.csv
(losses, accuracies, learning rate, throughput, memory; the step is the row's global training
step), the resolved config as hyper-parameters (flattened: ``data.spec``, ``optim.lr``, ...),
the final numbers of results.json (``final/test_top1``, ...) and the PNG figures in the run
folder; a study adds its report's figures as an entry named "study" in its group
(:func:`log_study_figures`). Where they go:

- TensorBoard: ``<tracker_dir>/tensorboard/<run name>`` for a study's cell (one folder per cell
  under the study, so ``tensorboard --logdir DIR/tensorboard`` compares them), the run folder's
  ``tensorboard/`` for a single run.
- MLflow: ``MLFLOW_TRACKING_URI`` where set, else a local SQLite store ``<tracker_dir>/mlflow.db``
  (MLflow 3 refuses its ``./mlruns`` file store by default) with artifacts in ``mlartifacts/``;
  the experiment is ``output.tracker_group`` (a study's name) or "cnnvit", the run is named
  after the run folder (a cell's id).
- W&B: project ``WANDB_PROJECT`` or "cnnvit", group ``output.tracker_group``, files under the
  run folder's ``wandb/``; ``WANDB_MODE`` (offline, disabled) is honoured by wandb itself.

None of them is needed to train: each is imported only when named, and a missing one is refused
before training starts, in one line with its install command. A tracker that raises later (a
server gone, a full disk) is warned about once and dropped; training goes on. Only rank 0 logs.

A resumed run continues the same records: TensorBoard writes to the same folder and purges the
steps after the checkpoint (readers drop the lost rows); MLflow and W&B continue the run whose
id the run folder keeps in ``trackers.json`` (a new run where that one cannot be found).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from cnnvit.config import RunConfig
from cnnvit.errors import UserError
from cnnvit.folders import read_json, write_json

# The module each tracker needs, and the extra that installs it.
MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
# The run folder's record of the trackers' run ids, so that a resumed run continues them.
IDS_FILE = "trackers.json"
# The study's own entry in its trackers, next to its cells': its figures.
STUDY_ENTRY = "study"
# results.json's final numbers that reach the trackers (as ``final/<name>``).
FINAL_METRICS = (
    "test_top1",
    "test_top5",
    "test_macro_f1",
    "test_ece",
    "best_selection_acc",
    "final_selection_acc",
    "epochs_completed",
    "steps_completed",
    "train_seconds",
    "mean_epoch_seconds",
    "peak_memory_mb",
    "params_total",
    "params_trainable",
)


class TrackerMissingError(UserError):
    """A tracker named in output.loggers whose package is not installed."""


class TrackerWarning(UserWarning):
    """A tracker failed; the run goes on without it."""


def require_trackers(names: Iterable[str]) -> None:
    """Import each named tracker's package now, so that a missing one stops the run before it
    trains, in one line that says how to install it."""
    for name in names:
        try:
            importlib.import_module(MODULES[name])
        except ImportError:
            raise TrackerMissingError(
                f"output.loggers names {name}, which is not installed: pip install "
                f"'cnnvit[{name}]' (or remove {name} from output.loggers)"
            ) from None


@dataclass(frozen=True)
class Where:
    """Where a run logs and under which names."""

    run_dir: Path
    name: str  # the run in every tracker: a cell's id, else the run folder's name
    group: str | None  # MLflow experiment / W&B group: the study's name
    tracker_dir: Path  # the study folder for a cell, else the run folder
    in_study: bool

    @classmethod
    def of(cls, cfg: RunConfig, run_dir: Path) -> Where:
        out = cfg.output
        return cls(
            run_dir=run_dir,
            name=run_dir.name,
            group=out.tracker_group,
            tracker_dir=out.tracker_dir if out.tracker_dir is not None else run_dir,
            in_study=out.tracker_dir is not None,
        )

    @property
    def tensorboard_dir(self) -> Path:
        if self.in_study:
            return self.tracker_dir / "tensorboard" / self.name
        return self.run_dir / "tensorboard"


class Tracker(Protocol):
    """One backend. Any method may raise: :class:`Trackers` drops a tracker that does."""

    name: str

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_row(self, row: Mapping[str, float], step: int) -> None: ...

    def log_final(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_figures(self, paths: list[Path], step: int) -> None: ...

    def close(self, status: str) -> None: ...


class Trackers:
    """The run's trackers behind one front: a call reaches each; one that raises is warned
    about once, closed as far as it goes, and called no more."""

    def __init__(self, trackers: Iterable[Tracker] = ()) -> None:
        self.live: list[Tracker] = list(trackers)

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.live):
            try:
                call(tracker)
            except Exception as err:
                self._drop(tracker, what, err)

    def _drop(self, tracker: Tracker, what: str, err: Exception) -> None:
        self.live.remove(tracker)
        warnings.warn(
            f"{tracker.name} stopped logging ({what}: {type(err).__name__}: {err}); "
            "the run goes on without it",
            TrackerWarning,
            stacklevel=4,
        )
        with contextlib.suppress(Exception):  # already failing: the warning said so
            tracker.close("failed")

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._each("config", lambda t: t.log_params(params))

    def log_row(self, row: Mapping[str, float]) -> None:
        """One epochs.csv row, at its global step."""
        step = int(row["step"])
        scalars = {k: float(v) for k, v in row.items() if k != "step" and _finite(v)}
        self._each("epoch row", lambda t: t.log_row(scalars, step))

    def finish(self, results: Mapping[str, Any], run_dir: Path, step: int) -> None:
        """The final numbers of ``results``, the run folder's figures, and close."""
        final = {f"final/{k}": float(results[k]) for k in FINAL_METRICS if _finite(results.get(k))}
        self._each("final metrics", lambda t: t.log_final(final, step))
        self.log_figures(sorted(run_dir.glob("*.png")), step)
        self.close(str(results.get("status", "completed")))

    def log_figures(self, paths: list[Path], step: int) -> None:
        if paths:
            self._each("figures", lambda t: t.log_figures(paths, step))

    def close(self, status: str) -> None:
        self._each("close", lambda t: t.close(status))
        self.live = []


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def flat_params(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as ``{"data.spec": ..., "optim.lr": ...}``: numbers and booleans as
    they are, anything else (None, lists, paths) as its text."""
    out: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, Mapping) and value:
            for key, sub in value.items():
                walk(sub, f"{prefix}{key}.")
        elif isinstance(value, bool | int | float | str):
            out[prefix[:-1]] = value
        else:
            out[prefix[:-1]] = str(value)

    walk(cfg.model_dump(mode="json"), "")
    return out


def open_trackers(cfg: RunConfig, run_dir: Path, *, last_step: int | None) -> Trackers:
    """The trackers ``cfg`` names, started (``last_step``: the last kept epochs.csv row's step
    of a resumed run, None for a new one), with the config logged. One that cannot start is
    warned about and left out."""
    where = Where.of(cfg, run_dir)
    trackers = _started(cfg.output.loggers, where, last_step, cfg.model_dump(mode="json"))
    trackers.log_params(flat_params(cfg))
    return trackers


def _started(
    names: Iterable[str], where: Where, last_step: int | None, config: dict[str, Any]
) -> Trackers:
    """The trackers ``names``, each started for ``where`` (continuing the runs whose ids
    ``where.run_dir`` keeps in trackers.json, and keeping the new ones' there); one that cannot
    start is warned about and left out."""
    ids_path = where.run_dir / IDS_FILE
    ids = read_json(ids_path) or {}
    openers: dict[str, Callable[[], Tracker]] = {
        "tensorboard": lambda: TensorBoardTracker(where, last_step),
        "mlflow": lambda: MlflowTracker(where, ids.get("mlflow")),
        "wandb": lambda: WandbTracker(where, ids.get("wandb"), config),
    }
    started: list[Tracker] = []
    for name in names:
        try:
            started.append(openers[name]())
        except Exception as err:
            warnings.warn(
                f"{name} could not start ({type(err).__name__}: {err}); the run goes on without it",
                TrackerWarning,
                stacklevel=3,
            )
    kept = {t.name: t.run_id for t in started if getattr(t, "run_id", None)}
    if kept and kept != {k: ids.get(k) for k in kept}:
        write_json(ids_path, {**ids, **kept})
    return Trackers(started)


def log_study_figures(names: Iterable[str], study_dir: Path, group: str) -> None:
    """After a study's report: its figures (``DIR/figures/*.png``) as one more entry of the
    study's group, named "study", next to its cells: ``DIR/tensorboard/study``, a run of the
    study's MLflow experiment, a W&B run of its group. A re-run of the study updates the same
    entry (its ids in ``DIR/trackers.json``; TensorBoard's earlier images purged). A tracker
    that fails warns once; the study's own files are written already."""
    figures = sorted((study_dir / "figures").glob("*.png"))
    if not names or not figures:
        return
    where = Where(study_dir, STUDY_ENTRY, group, tracker_dir=study_dir, in_study=True)
    trackers = _started(names, where, last_step=-1, config={"study": group})
    trackers.log_figures(figures, step=0)
    trackers.close("completed")


# --- the backends --------------------------------------------------------------------------------


class TensorBoardTracker:
    """``torch.utils.tensorboard``: scalars by epochs.csv's column names, the config in the
    HParams tab next to the final numbers, figures as images."""

    name = "tensorboard"

    def __init__(self, where: Where, last_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # On resume, readers drop the earlier events from the step after the checkpoint's row
        # on: the rows replayed after a crash are not shown twice.
        purge = None if last_step is None else last_step + 1
        self.writer = SummaryWriter(log_dir=str(where.tensorboard_dir), purge_step=purge)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        # The HParams tab pairs these with the final metrics' scalars (logged by log_final).
        metrics = {f"final/{k}": 0.0 for k in FINAL_METRICS}
        writer = self.writer._get_file_writer()
        for summary in hparams(dict(params), metrics):
            writer.add_summary(summary)

    def log_row(self, row: Mapping[str, float], step: int) -> None:
        for key, value in row.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_final(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_figures(self, paths: list[Path], step: int) -> None:
        import numpy as np
        from PIL import Image

        for path in paths:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
            self.writer.add_image(f"figures/{path.stem}", pixels, step, dataformats="HWC")

    def close(self, status: str) -> None:
        self.writer.close()


class MlflowTracker:
    """``mlflow.MlflowClient`` (no global active run: cells may share a process): one run, its
    metrics at the global step, the config as params, figures as artifacts."""

    name = "mlflow"
    STATUS: ClassVar[dict[str, str]] = {"completed": "FINISHED", "diverged": "FAILED"}

    def __init__(self, where: Where, run_id: str | None) -> None:
        self.client, self.artifacts = _mlflow_store(where.tracker_dir)
        self.run_id = self._continued(run_id) or self._new(where)

    def _continued(self, run_id: str | None) -> str | None:
        if run_id is None:
            return None
        try:
            self.client.get_run(run_id)
        except Exception:  # another store, or the run deleted: start a new one
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _new(self, where: Where) -> str:
        experiment_id = _mlflow_experiment(self.client, where.group or "cnnvit", self.artifacts)
        tags = {"run_dir": str(where.run_dir.resolve())}
        return self.client.create_run(experiment_id, run_name=where.name, tags=tags).info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # log_batch takes 100 params at a time
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_row(self, row: Mapping[str, float], step: int) -> None:
        self._metrics(row, step)

    def log_final(self, metrics: Mapping[str, float], step: int) -> None:
        self._metrics(metrics, step)

    def _metrics(self, values: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_figures(self, paths: list[Path], step: int) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path="figures")

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=self.STATUS.get(status, "FAILED"))


def _mlflow_store(tracker_dir: Path) -> tuple[Any, str | None]:
    """The MLflow client of ``MLFLOW_TRACKING_URI``, else of the SQLite store in
    ``tracker_dir`` (created at the first call), and where a new experiment keeps artifacts."""
    from mlflow import MlflowClient

    if os.environ.get("MLFLOW_TRACKING_URI") is not None:
        return MlflowClient(), None  # the server's own artifact store
    store = tracker_dir.resolve()
    store.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    return client, (store / "mlartifacts").as_uri()


def _mlflow_experiment(client: Any, name: str, artifacts: str | None) -> str:
    """The id of experiment ``name``, created where missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except Exception:  # another process created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def prepare_trackers(names: Iterable[str], tracker_dir: Path, group: str) -> None:
    """Before a study's cells start (maybe many at once, on Ray): create the MLflow store and
    the study's experiment, which concurrent first writers would race to create (SQLite schema
    migrations collide). A failure is warned about: the cells then try on their own."""
    if "mlflow" not in names:
        return
    try:
        client, artifacts = _mlflow_store(tracker_dir)
        _mlflow_experiment(client, group, artifacts)
    except Exception as err:
        warnings.warn(
            f"mlflow: could not prepare the study's store ({type(err).__name__}: {err})",
            TrackerWarning,
            stacklevel=2,
        )


class WandbTracker:
    """``wandb``: a run in the study's group, history rows at the global step, the nested
    config, the final numbers in the summary, figures as images."""

    name = "wandb"

    def __init__(self, where: Where, run_id: str | None, config: dict[str, Any]) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "cnnvit"),
            group=where.group,
            name=where.name,
            dir=str(where.run_dir),
            id=run_id,
            resume="allow",  # the same id continues the run (a resumed training run)
            config=config,
            reinit="create_new",  # cells in one process each get their own run
            settings=wandb.Settings(console="off"),  # the run folder keeps cnnvit's own log
        )
        self.run_id = self.run.id

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass  # the nested config went to wandb.init

    def log_row(self, row: Mapping[str, float], step: int) -> None:
        self.run.log(dict(row), step=step)

    def log_final(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.summary.update(dict(metrics))

    def log_figures(self, paths: list[Path], step: int) -> None:
        images = {f"figures/{p.stem}": self.wandb.Image(str(p)) for p in paths}
        # W&B drops a row below the run's current step: a continued study entry is past 0.
        self.run.log(images, step=max(step, self.run.step))

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "completed" else 1)
