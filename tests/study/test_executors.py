"""Study cells on Ray and on SLURM through submitit (issue 14, items 1 and 2): the same results as
``local``, finished cells skipped, a failing cell recorded, a killed worker's cell retried from
its checkpoint, a simulated multi-node cluster, and the driver's own rules on fake workers."""

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray

from cnnvit.cli import main
from cnnvit.errors import UserError
from cnnvit.folders import RunFolder
from cnnvit.study.config import cells, load_study
from cnnvit.study.executors.base import (
    CellResources,
    CellWork,
    MissingExtraError,
    Probe,
    SharedFolderError,
    Tracker,
    WorkerDiedError,
    require,
    run_in_pool,
)

SYNTH = "synthetic:train_size=768,val_size=192,image_size=16"
# Training numbers of results.csv: equal for equal seeds, whatever ran the cells.
TRAINED = ["cell", "status", "test_top1", "best_selection_top1", "test_top5", "test_macro_f1"]


def _write_study(
    path: Path,
    *,
    models: str = "[resnet_mini, vit_mini]",
    seeds: str = "[0]",
    epochs: int = 1,
    spec: str = SYNTH,
) -> Path:
    path.write_text(
        f"name: tiny\ndata: {{spec: '{spec}'}}\nmodels: {models}\nfractions: [1.0]\n"
        f"seeds: {seeds}\nrecipe:\n  optim: {{lr: 3.0e-3, warmup_epochs: 0}}\n"
        f"  train: {{epochs: {epochs}, batch_size: 64}}\nprofile: {{enabled: false}}\n"
    )
    return path


def _compare(study: Path, out: Path, *flags: str) -> int:
    return main(["compare", str(study), "--out", str(out), "--no-progress", *flags])


def _local(study: Path, out: Path) -> int:
    # One thread, as each cell of the other executors gets (cpus_per_cell: 1), so that the
    # numbers can be compared to the last digit.
    return _compare(study, out, "--set", "recipe.train.threads=1")


def _trained(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "results.csv")[TRAINED]


@pytest.fixture(scope="module")
def local_ray():
    """One Ray instance of 2 CPUs for the module; the executor uses the one it finds."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The tiny study run by the local executor: what every other executor must give."""
    root = tmp_path_factory.mktemp("reference")
    out = root / "local"
    assert _local(_write_study(root / "study.yaml"), out) == 0
    return out


def test_ray_gives_the_results_of_local_and_skips_finished_cells(
    local_ray, reference: Path, tmp_path: Path, capsys
):
    study = _write_study(tmp_path / "study.yaml")
    out = tmp_path / "ray"
    assert _compare(study, out, "--executor", "ray") == 0
    pd.testing.assert_frame_equal(_trained(out), _trained(reference))
    for run in (out / "runs").iterdir():  # each cell took its share of the cores
        assert RunFolder(run).read_results()["status"] == "completed"
        assert '"threads": 1' in (run / "environment.json").read_text()
    assert (out / "report.html").is_file() and not (out / ".cnnvit-probe").exists()

    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/results.json")}
    capsys.readouterr()
    assert _compare(study, out, "--executor", "ray") == 0
    assert capsys.readouterr().err.count("earlier, skipped") == 2
    # how the cells run is not what they train: another executor keeps them too
    assert _compare(study, out, "--executor", "local") == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_failing_cell_on_ray_is_recorded_and_the_others_finish(local_ray, tmp_path: Path):
    models = "[resnet_mini, {name: resnet_mini, label: broken, kwargs: {no_such_argument: 1}}]"
    study = _write_study(tmp_path / "study.yaml", models=models, seeds="[0]")
    out = tmp_path / "out"
    assert _compare(study, out, "--executor", "ray") == 1  # failed cells: exit status 1
    results = pd.read_csv(out / "results.csv").set_index("model")
    assert results.status.to_dict() == {"resnet_mini": "completed", "broken": "failed"}
    assert "no_such_argument" in results.error["broken"]


def test_a_worker_killed_mid_cell_is_retried_and_resumes_from_its_checkpoint(
    local_ray, tmp_path: Path, capsys
):
    study = _write_study(tmp_path / "study.yaml", models="[resnet_mini]", seeds="[0]", epochs=6)
    reference = tmp_path / "reference"
    assert _local(study, reference) == 0
    out = tmp_path / "killed"
    run = out / "runs" / "resnet_mini-f1-s0"
    seen: dict = {}
    killer = threading.Thread(target=_kill_after_first_checkpoint, args=(run, seen), daemon=True)
    killer.start()
    assert _compare(study, out, "--executor", "ray") == 0
    killer.join(timeout=1)
    assert "pid" in seen, "the cell finished before its worker could be killed"
    said = " ".join(capsys.readouterr().err.split())  # as one line, however rich wrapped it
    assert "its worker died" in said and "attempt 2 of 3 continues from its last checkpoint" in said
    rows = (run / "epochs.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]
    assert rows[1] == seen["first_epoch"]  # epoch 1 was not trained again (its time is the same)
    pd.testing.assert_frame_equal(_trained(out), _trained(reference))


def _kill_after_first_checkpoint(run: Path, seen: dict) -> None:
    """Kill the worker that trains ``run`` (its PID is in the run's lock) once epoch 1 is saved."""
    folder, deadline = RunFolder(run), time.monotonic() + 300
    while time.monotonic() < deadline:
        lines = folder.lock.read_text().split() if folder.lock.is_file() else []
        if lines and folder.latest_checkpoint() is not None:
            seen["first_epoch"] = folder.epochs.read_text().splitlines()[1]
            os.kill(int(lines[0]), signal.SIGKILL)
            seen["pid"] = int(lines[0])
            return
        time.sleep(0.005)


def test_slurm_through_submitits_local_executor_gives_the_results_of_local(
    reference: Path, tmp_path: Path
):
    study = _write_study(tmp_path / "study.yaml")
    out = tmp_path / "slurm"
    flags = ["--executor", "slurm", "--set", "executor.slurm.cluster=local"]
    assert _compare(study, out, *flags) == 0
    pd.testing.assert_frame_equal(_trained(out), _trained(reference))
    assert list((out / "slurm").glob("*/*_result.pkl"))  # real jobs, pickled both ways


def test_the_executor_is_a_study_key_and_the_flags_override_it(tmp_path: Path):
    study = _write_study(tmp_path / "study.yaml")
    study.write_text(
        study.read_text() + "executor: {kind: slurm, slurm: {partition: gpu, time_min: 30}}\n"
    )
    settings = load_study(study).executor
    assert (settings.kind, settings.slurm.partition, settings.slurm.time_min) == (
        "slurm",
        "gpu",
        30,
    )
    with pytest.raises(UserError, match=r"executor\.address 'auto' is a Ray cluster's address"):
        load_study(study, ["executor.address=auto"])
    with pytest.raises(UserError, match=r"unknown config key 'executor\.slurm\.partiton'"):
        load_study(study, ["executor.slurm.partiton=gpu"])


def test_a_missing_engine_is_one_line_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    with pytest.raises(MissingExtraError, match=r"pip install 'cnnvit\[ray\]'"):
        require("no_such_engine_module", "ray")
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if not installed
    out = tmp_path / "out"
    assert _compare(_write_study(tmp_path / "study.yaml"), out, "--executor", "ray") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'cnnvit[ray]'" in err
    assert not out.exists()  # refused before the folder was claimed


def test_a_ray_cluster_that_is_not_there_is_refused_before_the_folder_is_claimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    def no_cluster(address=None, **_):
        raise ConnectionError(f"Could not find any running Ray instance at {address}.\nMore.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    out = tmp_path / "out"
    assert _compare(_write_study(tmp_path / "study.yaml"), out, "--address", "head:6379") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "cannot join the Ray cluster at head:6379: Could not find any running Ray instance at "
        "head:6379."
    )
    assert len(err.splitlines()) == 1 and not out.exists()


def test_slurm_jobs_ask_for_what_the_study_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from cnnvit.study.executors.slurm_jobs import slurm_executor

    fake = tmp_path / "bin"  # submitit takes a machine with srun for a SLURM cluster
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    settings = load_study(
        _write_study(tmp_path / "study.yaml"),
        [
            "executor.kind=slurm",
            "executor.gpus_per_cell=1",
            "executor.memory_per_cell_mb=8192",
            "executor.slurm.partition=gpu",
            "executor.slurm.time_min=30",
            "executor.slurm.array_parallelism=4",
            "executor.slurm.additional.account=proj42",
        ],
    ).executor
    work = CellWork(Probe(tmp_path / ".cnnvit-probe", "t"), settings.cpus_per_cell)
    with slurm_executor(settings, work, tmp_path / "out") as executor:
        one = executor.pool.executor(CellResources(1, 1))._executor
        sbatch = one._make_submission_file_text("CMD", "0")
        # a cell on 2 processes (train.nproc: 2) is a job of 2 CPUs and 2 GPUs
        two = executor.pool.executor(CellResources(2, 2))._executor
        sbatch_two = two._make_submission_file_text("CMD", "0")
    for line in ("partition=gpu", "time=30", "gpus-per-node=1", "mem=8GB", "account=proj42"):
        assert f"#SBATCH --{line}\n" in sbatch
    assert "#SBATCH --cpus-per-task=1\n" in sbatch
    assert one.parameters["array_parallelism"] == 4
    assert f"--output {tmp_path}/out/slurm/" in sbatch  # the logs on the study's (shared) disk
    for line in ("gpus-per-node=2", "cpus-per-task=2", "partition=gpu", "account=proj42"):
        assert f"#SBATCH --{line}\n" in sbatch_two


def test_a_cell_on_several_processes_reserves_a_cpu_share_and_a_gpu_for_each(tmp_path: Path):
    study = _write_study(tmp_path / "study.yaml", models="[resnet_mini, vit_mini]")
    study.write_text(  # vit_mini alone trains on 4 processes
        study.read_text().replace(
            "models: [resnet_mini, vit_mini]",
            "models: [resnet_mini, {name: vit_mini, train: {nproc: 4}}]",
        )
    )
    (tmp_path / "out").mkdir()
    for gpus, expected in (
        (0, {"resnet_mini": (2, 0), "vit_mini": (8, 0)}),
        (1, {"resnet_mini": (2, 1), "vit_mini": (8, 4)}),
        (6, {"resnet_mini": (2, 6), "vit_mini": (8, 6)}),
    ):
        settings = load_study(
            study,
            ["executor.kind=ray", "executor.cpus_per_cell=2", f"executor.gpus_per_cell={gpus}"],
        )
        grid = cells(settings, tmp_path / "out")
        got = {c.model: CellResources.of(settings.executor, c) for c in grid}
        assert {m: (r.cpus, r.gpus) for m, r in got.items()} == expected


def test_a_cell_larger_than_this_machines_ray_is_refused_in_one_line(
    local_ray, tmp_path: Path, capsys
):
    study = _write_study(tmp_path / "study.yaml", models="[resnet_mini]")
    flags = ["--executor", "ray", "--set", "recipe.train.nproc=4"]
    assert _compare(study, tmp_path / "out", *flags) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "a cell asks for 4 CPUs and 0 GPUs" in err and "the largest Ray node has 2 CPUs" in err
    assert not (tmp_path / "out" / "runs").exists()  # nothing was trained


def test_slurm_where_there_is_none_is_refused_in_one_line_before_the_folder_is_claimed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    out = tmp_path / "out"
    assert _compare(_write_study(tmp_path / "study.yaml"), out, "--executor", "slurm") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "executor.slurm.cluster=local" in err
    assert not out.exists()


# --- the driver's rules, on workers faked in this process -------------------------------------


def _tiny_cells(tmp_path: Path, models: str = "[resnet_mini]"):
    study = load_study(_write_study(tmp_path / "study.yaml", models=models, seeds="[0]"))
    (tmp_path / "out").mkdir()
    return cells(study, tmp_path / "out")


class _InProcessPool:
    """Workers faked in this process: each cell's work runs when its result is asked for. The
    first attempt of a cell in ``die`` ends as if its worker had been killed, leaving the lock
    marker ``leave`` (PID and host) in its run folder, as a worker killed mid-cell does."""

    max_in_flight = None

    def __init__(self, work: CellWork, die: set[str] = frozenset(), leave: str = "") -> None:
        self.work, self.die, self.leave = work, set(die), leave
        self.pending: dict[int, object] = {}
        self.submitted: list[str] = []
        self.cancelled = 0

    def submit(self, batch):
        handles = [object() for _ in batch]
        self.pending.update((id(h), c) for h, c in zip(handles, batch, strict=True))
        self.submitted += [c.id for c in batch]
        return handles

    def finished(self, handles):
        cell = self.pending.pop(id(handles[0]))
        if cell.id not in self.die:
            return [(handles[0], self.work(cell))]
        self.die.discard(cell.id)
        if self.leave:
            RunFolder(cell.config.output.dir).lock.write_text(self.leave)
        return [(handles[0], WorkerDiedError("killed"))]

    def cancel(self, handles):
        self.cancelled += len(handles)


def test_a_dead_workers_lock_from_another_host_is_released_before_the_retry(tmp_path: Path):
    (cell,) = _tiny_cells(tmp_path)
    RunFolder(cell.config.output.dir).path.mkdir(parents=True)
    with Probe.written(tmp_path / "out") as probe:
        # a PID on a host this one cannot probe: filelock alone would refuse the retry
        pool = _InProcessPool(CellWork(probe, 1), die={cell.id}, leave="4242\nnode-elsewhere\n")
        (outcome,) = run_in_pool(pool, [cell], Tracker(), max_retries=1)
    assert (outcome.status, outcome.attempts) == ("completed", 2)
    assert pool.submitted == [cell.id, cell.id]
    assert not RunFolder(cell.config.output.dir).lock.exists()


def test_a_worker_that_cannot_see_the_study_folder_stops_the_study_in_one_line(tmp_path: Path):
    first, second = _tiny_cells(tmp_path, "[resnet_mini, vit_mini]")
    elsewhere = Probe(tmp_path / "out" / ".cnnvit-probe", "written-by-another-driver")
    pool = _InProcessPool(CellWork(elsewhere, 1))
    with pytest.raises(SharedFolderError, match="cannot see the study folder") as err:
        run_in_pool(pool, [first, second], Tracker(), max_retries=2)
    assert "\n" not in str(err.value) and "shared filesystem" in str(err.value)
    assert pool.cancelled == 1  # the other cell was cancelled
    assert not RunFolder(first.config.output.dir).path.exists()


def test_a_cell_whose_worker_dies_every_time_is_recorded_as_failed(tmp_path: Path):
    (cell,) = _tiny_cells(tmp_path)
    with Probe.written(tmp_path / "out") as probe:
        pool = _InProcessPool(CellWork(probe, 1))
        pool.finished = lambda handles: [(handles[0], WorkerDiedError("node lost"))]
        (outcome,) = run_in_pool(pool, [cell], Tracker(), max_retries=2)
    assert (outcome.status, outcome.attempts) == ("failed", 3)
    results = RunFolder(cell.config.output.dir).read_results()
    assert results["status"] == "failed" and "died in each of 3 attempts" in results["error"]


# Last: it replaces the module's Ray instance with a cluster of its own.
def test_a_study_runs_to_completion_on_a_simulated_three_node_cluster(
    reference: Path, tmp_path: Path
):
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        out = tmp_path / "cluster"
        study = _write_study(tmp_path / "study.yaml")
        assert _compare(study, out, "--address", cluster.address) == 0
        pd.testing.assert_frame_equal(_trained(out), _trained(reference))
        assert not ray.is_initialized()  # the driver left the cluster it joined
    finally:
        ray.shutdown()
        cluster.shutdown()
