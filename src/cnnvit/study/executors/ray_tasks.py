"""``ray``: each cell a Ray task that reserves its CPUs and GPUs (``cpus_per_cell``,
``gpus_per_cell``, and one GPU per process of a cell that trains on several:
:class:`~cnnvit.study.executors.base.CellResources`) and ``memory_per_cell_mb``, on a cluster
the driver joins (``address``) or on a Ray instance it starts on this machine's cores. Ray does
not retry the tasks itself: the driver's loop (:func:`~cnnvit.study.executors.base.run_in_pool`)
does, after releasing the dead attempt's folder lock."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ray
from ray import exceptions as ray_errors

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
from cnnvit.ui import console

# A task's worker is gone without a result: worth another attempt, which resumes the run.
WORKER_GONE = (
    ray_errors.WorkerCrashedError,
    ray_errors.NodeDiedError,
    ray_errors.OutOfMemoryError,
    ray_errors.ObjectLostError,
    ray_errors.LocalRayletDiedError,
)
# Environment the workers need as the driver has it: data folder, offline switches, caches.
FORWARDED_ENV = ("CNNVIT_", "HF_", "TORCH_HOME")


def _run_on_worker(work: CellWork, cell: Cell) -> CellOutcome | UserError:
    return work(cell)


class RayPool:
    """Tasks on the Ray this process is connected to; connected (or started) at the first
    submission, so that a study whose cells are all finished starts nothing."""

    max_in_flight = None  # Ray queues the tasks until a node has their resources

    def __init__(self, settings: ExecutorSettings, work: CellWork) -> None:
        self.settings, self.work = settings, work
        self.connected_here = False
        self.task = ray.remote(_run_on_worker)

    def connect(self) -> None:
        if not ray.is_initialized():
            _connect(self.settings.address)
            self.connected_here = True

    def submit(self, cells: Sequence[Cell]) -> list[Any]:
        self.connect()
        _check_fits(self.settings, {CellResources.of(self.settings, c) for c in cells})
        return [self.task.options(**self._options(c)).remote(self.work, c) for c in cells]

    def _options(self, cell: Cell) -> dict[str, Any]:
        wanted = CellResources.of(self.settings, cell)
        options: dict[str, Any] = {
            "name": f"cnnvit {cell.id}",
            "num_cpus": wanted.cpus,
            "num_gpus": wanted.gpus,
            "max_retries": 0,  # retried by the driver: see base.release_dead_marker
        }
        if self.settings.memory_per_cell_mb is not None:
            options["memory"] = self.settings.memory_per_cell_mb * 2**20
        return options

    def finished(self, handles: Sequence[Any]) -> list[tuple[Any, Any]]:
        ready, _ = ray.wait(list(handles), num_returns=1)
        return [(ref, _result(ref)) for ref in ready]

    def cancel(self, handles: Sequence[Any]) -> None:
        for ref in handles:  # a running task gets a KeyboardInterrupt: its run lock is released
            ray.cancel(ref)


def _result(ref: Any) -> Any:
    try:
        return ray.get(ref)
    except WORKER_GONE as err:
        return WorkerDiedError(_first_line(err))
    except ray_errors.RayTaskError as err:
        return CellError(f"{type(err.cause).__name__}: {_first_line(err.cause)}")


def _first_line(err: BaseException | None) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class RayExecutor:
    def __init__(self, settings: ExecutorSettings, work: CellWork) -> None:
        self.settings = settings
        self.pool = RayPool(settings, work)

    def run(self, cells: Sequence[Cell], tracker: Tracker) -> list[CellOutcome]:
        return run_in_pool(self.pool, cells, tracker, self.settings.max_retries)


@contextmanager
def ray_executor(settings: ExecutorSettings, work: CellWork) -> Iterator[RayExecutor]:
    """The executor on the Ray this process is connected to, else on the cluster at ``address``
    (joined at once: a wrong address is refused before the study folder is claimed) or on a Ray
    started when the first cell is submitted (a study whose cells are all finished starts
    none); it leaves what it joined or started afterwards."""
    executor = RayExecutor(settings, work)
    try:
        if settings.address is not None:
            executor.pool.connect()
        yield executor
    finally:
        if executor.pool.connected_here:
            ray.shutdown()


def _connect(address: str | None) -> None:
    quiet: dict[str, Any] = {
        "log_to_driver": False,  # each cell's log is its run folder; Ray keeps the workers' own
        "logging_level": logging.ERROR,  # Ray's notices at start-up are not the study's
        "runtime_env": {
            "env_vars": {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        },
    }
    if address is None:  # a Ray of this machine's cores, for this command only ("local": not
        # whichever cluster this machine last started, as a bare ray.init() would join)
        ray.init(address="local", include_dashboard=False, **quiet)
        return
    try:
        ray.init(address=address, **quiet)
    except ConnectionError as err:
        raise UserError(f"cannot join the Ray cluster at {address}: {_first_line(err)}") from None


def _check_fits(settings: ExecutorSettings, wanted: set[CellResources]) -> None:
    """Each cell must fit on one node, or Ray would queue it forever."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for cell in sorted(wanted, key=lambda r: (r.cpus, r.gpus), reverse=True):
        if any(n.get("CPU", 0) >= cell.cpus and n.get("GPU", 0) >= cell.gpus for n in nodes):
            continue
        largest = max(((n.get("CPU", 0), n.get("GPU", 0)) for n in nodes), default=(0, 0))
        message = (
            f"a cell asks for {cell.cpus} CPUs and {cell.gpus} GPUs (executor.cpus_per_cell, "
            "executor.gpus_per_cell, times train.nproc where a cell trains on several "
            f"processes), but the largest Ray node has {largest[0]:g} CPUs and {largest[1]:g} GPUs"
        )
        if settings.address is None:
            raise UserError(message)
        console.print(f"[yellow]{message}; the cells wait for the cluster to add such a node[/]")
        return
