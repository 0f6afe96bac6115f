"""Experiment trackers (output.loggers): each tracker's own reader gets back what epochs.csv and
results.json say; a failing tracker never stops training; a missing one is refused up front;
a study's cells are grouped; a resumed run continues its records."""

import csv
import json
import multiprocessing
import os
import socket
import struct
import sys
import traceback
import warnings
from pathlib import Path

import pytest

from cnnvit.config import load_run_config
from cnnvit.study.config import StudyConfig, cells
from cnnvit.train import run as run_module
from cnnvit.train import trackers as trackers_module
from cnnvit.train.run import EPOCH_COLUMNS, resume, train
from cnnvit.train.trackers import FINAL_METRICS, TrackerMissingError, TrackerWarning

DATA = "synthetic:train_size=256,val_size=64,image_size=16"
SCALARS = [c for c in EPOCH_COLUMNS if c != "step"]  # step is every tracker's x axis


def _cfg(out: Path, loggers: str, *extra: str):
    return load_run_config(
        None,
        [
            f"data.spec={DATA}",
            "model.name=resnet_mini",
            f"output.dir={out}",
            "train.epochs=2",
            "train.batch_size=64",
            "optim.lr=3e-3",
            "train.progress=false",
            "train.threads=2",
            f"output.loggers={loggers}",
            *extra,
        ],
    )


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "epochs.csv").open() as f:
        return list(csv.DictReader(f))


def _mlflow_client(folder: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{(folder / 'mlflow.db').resolve()}")


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trackers") / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("WANDB_PROJECT", raising=False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TrackerWarning)
            results = train(_cfg(out, "[tensorboard, mlflow, wandb]"))
    finally:
        mp.undo()
    assert results["status"] == "completed"
    assert not [w for w in caught if issubclass(w.category, TrackerWarning)]
    return out


def test_tensorboard_scalars_equal_epochs_csv(logged_run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logged_run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    rows = _rows(logged_run)
    assert len(rows) == 2
    for column in SCALARS:
        logged = events.Scalars(column)
        assert [e.step for e in logged] == [int(r["step"]) for r in rows], column
        # float32 in the event file
        assert [e.value for e in logged] == pytest.approx(
            [float(r[column]) for r in rows], rel=1e-6, abs=1e-7
        ), column
    results = json.loads((logged_run / "results.json").read_text())
    assert events.Scalars("final/test_top1")[0].value == pytest.approx(results["test_top1"])
    assert events.Scalars("final/test_top1")[0].step == int(rows[-1]["step"])


def test_mlflow_metrics_and_params_equal_the_run_folder(logged_run: Path):
    client = _mlflow_client(logged_run)
    experiment = client.get_experiment_by_name("cnnvit")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert json.loads((logged_run / "trackers.json").read_text())["mlflow"] == run.info.run_id
    rows = _rows(logged_run)
    for column in SCALARS:
        history = sorted(client.get_metric_history(run.info.run_id, column), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [
            (int(r["step"]), pytest.approx(float(r[column]))) for r in rows
        ], column
    results = json.loads((logged_run / "results.json").read_text())
    for key in ("test_top1", "test_top5", "test_macro_f1"):
        assert run.data.metrics[f"final/{key}"] == pytest.approx(results[key])
    # Every final number results.json has (a renamed key would silently vanish).
    assert all(k in results for k in FINAL_METRICS)
    assert {f"final/{k}" for k in FINAL_METRICS if results[k] is not None} <= set(run.data.metrics)
    params = run.data.params
    assert params["data.spec"] == DATA
    assert float(params["optim.lr"]) == 3e-3
    assert params["model.name"] == "resnet_mini" and params["train.epochs"] == "2"


def _wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file: a 7-byte header (":W&B", magic,
    version), then 32 KiB blocks of records, each ``crc u32, length u16, type u8`` + data, a
    record split over blocks as FIRST/MIDDLE/LAST (LevelDB's log format). wandb 0.31 has no
    public reader of it (its Python datastore moved into the Go core)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record
        elif kind == 0:
            break


def _values(items) -> dict:
    """Key -> value of W&B's protobuf items (the key in ``key``, or in ``nested_key``)."""
    return {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in items}


def test_wandb_offline_history_equals_epochs_csv(logged_run: Path):
    (path,) = (logged_run / "wandb").glob("offline-run-*/run-*.wandb")
    history, summary, runs = [], {}, []
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({**_values(record.history.item), "_step": record.history.step.num})
        elif kind == "summary":
            summary.update(_values(record.summary.update))
        elif kind == "run":
            runs.append(record.run)
    rows = _rows(logged_run)
    assert len(history) == len(rows) == 2
    for logged, row in zip(history, rows, strict=True):
        assert logged["_step"] == int(row["step"])
        for column in SCALARS:
            assert logged[column] == pytest.approx(float(row[column])), column
    results = json.loads((logged_run / "results.json").read_text())
    assert summary["final/test_top1"] == pytest.approx(results["test_top1"])
    config = _values(runs[0].config.update)
    assert config["optim"]["lr"] == 3e-3
    assert config["data"]["spec"] == DATA
    assert runs[0].project == "cnnvit" and runs[0].display_name == "run"


def test_a_tracker_that_raises_mid_run_warns_once_and_the_run_completes(tmp_path, monkeypatch):
    def server_gone(self, row, step):
        raise ConnectionError("tracking server gone")

    monkeypatch.setattr(trackers_module.TensorBoardTracker, "log_row", server_gone)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = train(_cfg(tmp_path / "run", "[tensorboard]"))
    assert results["status"] == "completed"
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "completed"
    mine = [str(w.message) for w in caught if issubclass(w.category, TrackerWarning)]
    assert len(mine) == 1  # two epoch rows, one warning
    assert "tensorboard stopped logging" in mine[0] and "tracking server gone" in mine[0]


def test_a_missing_tracker_is_refused_before_training_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(TrackerMissingError) as err:
        train(_cfg(tmp_path / "run", "[mlflow]"))
    message = str(err.value)
    assert "\n" not in message and "pip install 'cnnvit[mlflow]'" in message
    assert not (tmp_path / "run").exists()  # nothing started


def _tiny_study(loggers: list[str]) -> StudyConfig:
    return StudyConfig.model_validate(
        {
            "name": "tiny",
            "data": {"spec": DATA},
            "models": ["resnet_mini"],
            "seeds": [0, 1],
            "recipe": {
                "train": {"epochs": 1, "batch_size": 64, "progress": False, "threads": 2},
                "output": {"loggers": loggers},
            },
        }
    )


def test_a_study_groups_its_cells(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    grid = cells(_tiny_study(["tensorboard", "mlflow", "wandb"]), tmp_path)
    for cell in grid:
        assert train(cell.config)["status"] == "completed"
    ids = sorted(c.id for c in grid)
    client = _mlflow_client(tmp_path)  # one store for the study, in its folder
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ids
    assert {r.info.status for r in runs} == {"FINISHED"}
    # One TensorBoard folder per cell, side by side under the study's.
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ids
    assert not any((tmp_path / "runs" / c.id / "tensorboard").exists() for c in grid)
    # One W&B group: the study's name; each run named by its cell.
    logged = []
    for cell in grid:
        (path,) = (tmp_path / "runs" / cell.id / "wandb").glob("offline-run-*/run-*.wandb")
        run = next(r.run for r in _wandb_records(path) if r.WhichOneof("record_type") == "run")
        logged.append((run.run_group, run.display_name))
    assert sorted(logged) == [("tiny", i) for i in ids]


def test_a_study_is_refused_before_its_folder_when_a_tracker_is_missing(tmp_path, monkeypatch):
    from cnnvit.study.run import run_study

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(TrackerMissingError, match=r"pip install 'cnnvit\[wandb\]'"):
        run_study(_tiny_study(["wandb"]), tmp_path / "study", command="test", progress=False)
    assert not (tmp_path / "study").exists()


def test_a_study_rerun_with_other_trackers_keeps_its_cells():
    from cnnvit.study.run import _trained_part

    with_trackers = _tiny_study(["mlflow"]).model_dump(mode="json")
    without = _tiny_study([]).model_dump(mode="json")
    assert _trained_part(with_trackers) == _trained_part(without)


@pytest.mark.parametrize("crash_at", [1, 2])
def test_a_resumed_run_continues_the_same_records(tmp_path, monkeypatch, crash_at):
    """A crash after epoch ``crash_at``'s row is logged but before its checkpoint: the resumed
    run re-runs that epoch (epoch 1: from scratch), TensorBoard shows each step once, MLflow
    continues the same run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    real_save, calls = run_module._save, {"n": 0}

    def crash_before_second_checkpoint(s, epoch):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise KeyboardInterrupt
        real_save(s, epoch)

    out = tmp_path / "run"
    monkeypatch.setattr(run_module, "_save", crash_before_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(out, "[tensorboard, mlflow]"))
    monkeypatch.setattr(run_module, "_save", real_save)
    client = _mlflow_client(out)
    (first,) = client.search_runs([client.get_experiment_by_name("cnnvit").experiment_id])
    assert first.info.status == "FAILED"
    assert len(client.get_metric_history(first.info.run_id, "train_loss")) == crash_at

    assert resume(out)["status"] == "completed"
    rows = _rows(out)
    steps = [int(r["step"]) for r in rows]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = events.Scalars("train_loss")
    assert [e.step for e in logged] == steps  # the crashed epoch's first row purged
    assert logged[-1].value == pytest.approx(float(rows[-1]["train_loss"]), rel=1e-6)
    (run,) = client.search_runs([client.get_experiment_by_name("cnnvit").experiment_id])
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    # MLflow keeps every value it was sent: the re-run step twice, the latest the re-run's.
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == sorted(steps[:crash_at] + steps[crash_at - 1 :])
    assert run.data.metrics["train_loss"] == pytest.approx(float(rows[-1]["train_loss"]))


def _as_rank(rank: int, port: int, start) -> None:
    """A forked process as torchrun starts it (2 processes); exit status 1 where it raised."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    try:
        start()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def test_only_rank_0_logs(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    cfg = _cfg(out, "[tensorboard, mlflow]", "train.device=cpu", "train.threads=1")
    cfg.train.epochs = 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fork = multiprocessing.get_context("fork")
    processes = [fork.Process(target=_as_rank, args=(r, port, lambda: train(cfg))) for r in (0, 1)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
    assert [p.exitcode for p in processes] == [0, 0]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    client = _mlflow_client(out)
    (run,) = client.search_runs([client.get_experiment_by_name("cnnvit").experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == len(_rows(out))


def test_the_run_folders_figures_reach_every_tracker(tmp_path, monkeypatch):
    """A PNG in the run folder at the end: an image in TensorBoard, an MLflow artifact, a W&B
    image (a training run writes none itself; later stages may)."""
    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = _cfg(run_dir, "[tensorboard, mlflow, wandb]")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TrackerWarning)
        trackers = trackers_module.open_trackers(cfg, run_dir, last_step=None)
        row = {c: 1.0 for c in EPOCH_COLUMNS} | {"epoch": 1, "step": 4}
        trackers.log_row(row)
        pixels = np.zeros((8, 12, 3), dtype=np.uint8)  # (H, W, RGB)
        pixels[:, :6, 0] = 255
        Image.fromarray(pixels).save(run_dir / "curves.png")
        trackers.finish({"status": "completed", "test_top1": 0.5}, run_dir, step=4)
    assert not [w for w in caught if issubclass(w.category, TrackerWarning)]
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images("figures/curves")
    assert (image.width, image.height, image.step) == (12, 8, 4)
    client = _mlflow_client(run_dir)
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    assert [a.path for a in client.list_artifacts(run_id, "figures")] == ["figures/curves.png"]
    assert client.get_run(run_id).data.metrics["final/test_top1"] == 0.5
    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(_wandb_records(path))
    (history,) = [r.history for r in records if r.WhichOneof("record_type") == "history"]
    logged = _values(history.item)  # the image joins the last row (same step)
    assert history.step.num == 4 and logged["figures/curves._type"] == "image-file"
    assert (logged["figures/curves.width"], logged["figures/curves.height"]) == (12, 8)


def _cell_logging(tracker_dir: Path, name: str) -> str:
    """One of several processes logging to one study's MLflow store at once."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    where = trackers_module.Where(tracker_dir / name, name, "g", tracker_dir, in_study=True)
    tracker = trackers_module.MlflowTracker(where, None)
    tracker.log_params({"cell": name})
    for step in range(1, 21):
        tracker.log_row({"train_loss": 1.0 / step}, step)
    tracker.close("completed")
    return tracker.run_id


@pytest.mark.slow  # three spawned processes import cnnvit: 13 s
def test_cells_log_at_once_to_the_prepared_study_store(tmp_path, monkeypatch):
    # Without the store prepared first, concurrent first writers collide in MLflow's SQLite
    # schema migration (alembic errors, "duplicate column name: step"; seen both ways).
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    trackers_module.prepare_trackers(["mlflow"], tmp_path, "g")
    names = ["a", "b", "c"]
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        ids = pool.starmap(_cell_logging, [(tmp_path, n) for n in names])
    client = _mlflow_client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("g").experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(ids)
    assert sorted(r.info.run_name for r in runs) == names
    for run in runs:
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 20


def test_a_studys_figures_join_its_group_as_one_entry_that_a_rerun_updates(tmp_path, monkeypatch):
    """After the report, DIR/figures/*.png reach every tracker as an entry named "study" in the
    study's group; building the report again updates that entry instead of adding another."""
    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    figures = tmp_path / "figures"
    figures.mkdir()
    for name, width in (("accuracy", 10), ("learning_curves", 14)):
        Image.fromarray(np.zeros((6, width, 3), dtype=np.uint8)).save(figures / f"{name}.png")
    names = ["tensorboard", "mlflow", "wandb"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TrackerWarning)
        trackers_module.log_study_figures(names, tmp_path, "tiny")
        trackers_module.log_study_figures(names, tmp_path, "tiny")  # the report built again
    assert not [w for w in caught if issubclass(w.category, TrackerWarning)]

    events = EventAccumulator(str(tmp_path / "tensorboard" / "study"), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == ["figures/accuracy", "figures/learning_curves"]
    assert [(i.width, i.height) for i in events.Images("figures/learning_curves")] == [(14, 6)]

    client = _mlflow_client(tmp_path)
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id])  # one entry after two builds
    assert (run.info.run_name, run.info.status) == ("study", "FINISHED")
    artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id, "figures"))
    assert artifacts == ["figures/accuracy.png", "figures/learning_curves.png"]

    # W&B offline writes a file per session; both sessions are the same run (one id).
    paths = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    sessions = [list(_wandb_records(path)) for path in paths]
    runs = [next(r.run for r in s if r.WhichOneof("record_type") == "run") for s in sessions]
    assert len(runs) == 2 and runs[0].run_id == runs[1].run_id
    assert {(r.run_group, r.display_name) for r in runs} == {("tiny", "study")}
    for records in sessions:
        history = [
            _values(r.history.item) for r in records if r.WhichOneof("record_type") == "history"
        ]
        assert history and history[0]["figures/accuracy._type"] == "image-file"


def test_no_figures_or_no_trackers_log_nothing(tmp_path):
    trackers_module.log_study_figures(["tensorboard"], tmp_path, "tiny")  # no figures yet
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "accuracy.png").write_bytes(b"")
    trackers_module.log_study_figures([], tmp_path, "tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures"]


def test_compare_logs_the_reports_figures_after_building_it(tmp_path):
    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from cnnvit.study.run import run_study

    def report(folder: Path) -> None:  # stands in for write_report: one figure
        (folder / "figures").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(folder / "figures" / "a.png")

    out = tmp_path / "study"
    study = _tiny_study(["tensorboard"])
    run_study(study, out, command="test", progress=False, then=report)
    events = EventAccumulator(str(out / "tensorboard" / "study"), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["figures/a"]
    cells_logged = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert cells_logged == sorted([c.id for c in cells(study, out)] + ["study"])
