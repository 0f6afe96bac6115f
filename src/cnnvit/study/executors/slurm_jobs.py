"""``slurm``: the cells as one SLURM job array through submitit (``executor.slurm``: partition,
time limit, array parallelism, sbatch extras; ``cpus_per_cell``, ``gpus_per_cell`` and
``memory_per_cell_mb`` per job). A job that reaches its time limit or is preempted is requeued
by submitit and resumes its run from the last checkpoint; a job that ended without a result
(node failure, killed, out of memory) is submitted again by the driver's loop. ``cluster:
local`` runs the same jobs as subprocesses of this machine (submitit's LocalExecutor), ``debug``
in this process."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from cnnvit.errors import UserError
from cnnvit.study.cell import CellOutcome
from cnnvit.study.config import Cell, ExecutorSettings
from cnnvit.study.executors.base import (
    CellError,
    CellResources,
    CellWork,
    Tracker,
    WorkerDiedError,
    run_in_pool,
)


class RequeuedCellWork(CellWork, submitit.helpers.Checkpointable):
    """A cell's work that submitit requeues on timeout or preemption (the same call again: the
    cell resumes from its run folder's last checkpoint)."""


class SlurmPool:
    def __init__(self, settings: ExecutorSettings, work: CellWork, folder: Path) -> None:
        self.settings, self.folder = settings, folder
        self.work = RequeuedCellWork(work.probe, work.threads)
        self.cluster = settings.slurm.cluster
        # One submitit executor per set of resources that cells ask for (a cell that trains on
        # several processes asks for more): submitit gives one array's jobs the same sbatch.
        self.executors: dict[CellResources, submitit.AutoExecutor] = {}
        on_slurm = self.cluster == "slurm"
        # SLURM runs `array_parallelism` jobs of an array at a time; submitit's local executor
        # starts every job it is given, so the driver gives it that many at a time.
        self.max_in_flight = None if on_slurm else settings.slurm.array_parallelism
        self.poll_s = 15.0 if on_slurm else 0.5  # submitit asks sacct at most every few s

    def executor(self, wanted: CellResources) -> submitit.AutoExecutor:
        if wanted not in self.executors:
            self.executors[wanted] = _submitit_executor(self.settings, wanted, self.folder)
        return self.executors[wanted]

    def submit(self, cells: Sequence[Cell]) -> list[Any]:
        groups: dict[CellResources, list[Cell]] = {}
        for cell in cells:
            groups.setdefault(CellResources.of(self.settings, cell), []).append(cell)
        jobs: dict[str, Any] = {}
        for wanted, group in groups.items():  # one job array per set of resources
            arrayed = self.executor(wanted).map_array(self.work, group)
            jobs.update((c.id, job) for c, job in zip(group, arrayed, strict=True))
        return [jobs[c.id] for c in cells]

    def finished(self, handles: Sequence[Any]) -> list[tuple[Any, Any]]:
        while True:
            done = [job for job in handles if job.done()]
            if done:
                return [(job, _result(job)) for job in done]
            time.sleep(self.poll_s)

    def cancel(self, handles: Sequence[Any]) -> None:
        for job in handles:
            job.cancel(check=False)


def _result(job: Any) -> Any:
    try:
        return job.result()
    except FailedJobError as err:  # the work raised, or ran out of requeues
        return CellError(_last_line(err))
    except UncompletedJobError as err:  # ended without a result: the job is gone
        return WorkerDiedError(_last_line(err))


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


class SlurmExecutor:
    def __init__(self, settings: ExecutorSettings, pool: SlurmPool) -> None:
        self.settings = settings
        self.pool = pool

    def run(self, cells: Sequence[Cell], tracker: Tracker) -> list[CellOutcome]:
        return run_in_pool(self.pool, cells, tracker, self.settings.max_retries)


@contextmanager
def slurm_executor(
    settings: ExecutorSettings, work: CellWork, study_dir: Path
) -> Iterator[SlurmExecutor]:
    s = settings.slurm
    folder = Path(s.folder) if s.folder is not None else study_dir.resolve() / "slurm"
    pool = SlurmPool(settings, work, folder)
    pool.executor(CellResources(settings.cpus_per_cell, settings.gpus_per_cell))  # refused here?
    yield SlurmExecutor(settings, pool)


def _submitit_executor(
    settings: ExecutorSettings, wanted: CellResources, folder: Path
) -> submitit.AutoExecutor:
    """submitit's executor for the jobs of cells that ask for ``wanted``; logs, scripts and
    pickles under ``folder`` (on the study's shared disk)."""
    s = settings.slurm
    try:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=s.cluster)
    except RuntimeError as err:  # no srun: not a SLURM machine
        raise UserError(
            f"cannot submit to SLURM here ({err}); run on a login node of the cluster, or try "
            "the jobs on this machine with --set executor.slurm.cluster=local"
        ) from None
    memory = settings.memory_per_cell_mb
    executor.update_parameters(
        name="cnnvit",
        timeout_min=s.time_min,
        cpus_per_task=wanted.cpus,
        gpus_per_node=wanted.gpus or None,  # no --gpus-per-node=0 for CPU partitions
        mem_gb=memory / 1024 if memory is not None else None,
        slurm_partition=s.partition,
        slurm_array_parallelism=s.array_parallelism,
        slurm_additional_parameters=dict(s.additional) or None,
    )
    return executor
