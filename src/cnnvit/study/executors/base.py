"""What every executor shares: the work a worker does on one cell, the driver's loop over a pool
of workers (skip finished cells, submit the rest, collect, retry a cell whose worker died), and
the progress of a batch of cells."""

from __future__ import annotations

import importlib
import os
import secrets
import socket
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from rich.progress import Progress, TaskID

from cnnvit.errors import UserError
from cnnvit.folders import FINAL, RunFolder
from cnnvit.runtime import num_threads
from cnnvit.study.cell import CellOutcome, cell_status, record_failure, run_cell
from cnnvit.study.config import Cell, ExecutorSettings
from cnnvit.ui import console, progress_bar


class SharedFolderError(UserError):
    """A worker cannot see the study folder: DIR must be on a filesystem every worker mounts."""


class MissingExtraError(UserError):
    """The executor's engine (ray, submitit) is not installed; the message says how to."""


class WorkerDiedError(RuntimeError):
    """A cell's worker is gone without a result (killed, out of memory, node lost)."""


class CellError(RuntimeError):
    """The engine ran a cell's work and it raised (not a training failure: those are recorded
    by the cell itself); the cell is recorded as failed with this message."""


def require(module: str, kind: str) -> ModuleType:
    """Import ``module`` for ``--executor kind``, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"--executor {kind} needs the {module} package: pip install 'cnnvit[{kind}]' (or run "
            "with --executor local)"
        ) from None


class Executor(Protocol):
    def run(self, cells: Sequence[Cell], tracker: Tracker) -> list[CellOutcome]:
        """Run (or skip) every cell; their outcomes in the same order."""
        ...


@dataclass
class Tracker:
    """The progress bar of one batch of cells (or tuning trials): finished ones, across workers."""

    bar: Progress | None = None
    task: TaskID | None = None

    @classmethod
    @contextmanager
    def shown(cls, label: str, total: int, enabled: bool) -> Iterator[Tracker]:
        with progress_bar(enabled) as bar:
            task = bar.add_task(label, total=total, rate="") if bar is not None else None
            yield cls(bar, task)

    def started(self, cell: Cell) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, rate=cell.id)

    def finished(self, outcome: CellOutcome) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=1, rate=f"{outcome.cell.id}: {outcome.status}")


@dataclass(frozen=True)
class CellResources:
    """What one cell reserves on a worker. A cell that trains on several processes
    (``train.nproc`` N, torchrun on the worker's node) reserves ``cpus_per_cell`` CPUs for each
    and, where it asks for GPUs at all, at least N GPUs: one per process."""

    cpus: int
    gpus: int

    @classmethod
    def of(cls, settings: ExecutorSettings, cell: Cell) -> CellResources:
        nproc = cell.config.train.nproc
        gpus = max(settings.gpus_per_cell, nproc) if settings.gpus_per_cell else 0
        return cls(cpus=settings.cpus_per_cell * nproc, gpus=gpus)


# --- the worker's side --------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A file the driver writes into the study folder: a worker that reads it back sees the
    folder (the run folders are the only way results come back)."""

    path: Path
    token: str

    @classmethod
    @contextmanager
    def written(cls, study_dir: Path) -> Iterator[Probe]:
        probe = cls(study_dir.resolve() / ".cnnvit-probe", secrets.token_hex(8))
        probe.path.write_text(probe.token)
        try:
            yield probe
        finally:
            probe.path.unlink(missing_ok=True)

    def check(self) -> None:
        try:
            seen = self.path.read_text()
        except OSError:
            seen = None
        if seen != self.token:
            raise SharedFolderError(
                f"a worker on host {socket.gethostname()} cannot see the study folder "
                f"{self.path.parent}: workers need DIR on a shared filesystem, at the same path on "
                "every worker (pass such an --out)"
            )


@dataclass(frozen=True)
class CellWork:
    """What a worker runs for one cell: it checks that it sees the study folder, sets torch's
    threads to the cell's share of the cores (the recipe's ``train.threads``, else
    ``cpus_per_cell``) and trains, skips or resumes the cell (:func:`run_cell`).

    A refusal (the folder is busy or not shared) is returned, not raised, so that the driver
    raises it as the same one-line message whichever engine carried it back."""

    probe: Probe
    threads: int

    def __call__(self, cell: Cell) -> CellOutcome | UserError:
        threads = cell.config.train.threads or self.threads
        try:
            self.probe.check()
            with num_threads(threads), _child_threads(threads):
                return run_cell(cell)
        except UserError as err:
            return err


@contextmanager
def _child_threads(threads: int) -> Iterator[None]:
    """``OMP_NUM_THREADS`` = ``threads`` for the processes the cell starts (torchrun's, where it
    trains on several: each gets a share of the cores reserved for it, not the whole node's)."""
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


# --- the driver's side --------------------------------------------------------------------------


class Pool(Protocol):
    """Workers of one engine, as the driver's loop sees them."""

    # Cells submitted at a time (None: all; the engine queues them by their resources).
    max_in_flight: int | None

    def submit(self, cells: Sequence[Cell]) -> list[Any]:
        """One handle per cell, the cells started (or queued) on workers."""
        ...

    def finished(self, handles: Sequence[Any]) -> list[tuple[Any, Any]]:
        """Waits until at least one handle is done; (handle, result) for each done one, the
        result a CellOutcome, a UserError, a :class:`WorkerDiedError` where the worker is gone,
        or a :class:`CellError`."""
        ...

    def cancel(self, handles: Sequence[Any]) -> None: ...


def run_in_pool(
    pool: Pool, cells: Sequence[Cell], tracker: Tracker, max_retries: int
) -> list[CellOutcome]:
    """The driver's loop of every pooled executor: skip finished cells before submitting
    anything, submit the rest, collect outcomes as workers finish them (the progress bar counts
    them), and give a cell whose worker died up to ``max_retries`` new attempts, each resuming
    its run from its last checkpoint. A refusal stops the study: the other cells are cancelled."""
    outcomes: dict[str, CellOutcome] = {}
    todo: deque[Cell] = deque()
    for cell in cells:
        status = cell_status(cell.config.output.dir)
        if status in FINAL:
            console.print(f"[dim]{cell.id}: {status} earlier, skipped[/]")
            outcomes[cell.id] = CellOutcome(cell, "skipped", 0.0)
            tracker.finished(outcomes[cell.id])
        else:
            todo.append(cell)
    attempts = dict.fromkeys((c.id for c in todo), 1)
    pending: dict[int, tuple[Any, Cell]] = {}
    try:
        while todo or pending:
            room = len(todo) if pool.max_in_flight is None else pool.max_in_flight - len(pending)
            _submit(pool, pending, [todo.popleft() for _ in range(min(room, len(todo)))])
            for handle, result in pool.finished([h for h, _ in pending.values()]):
                cell = pending.pop(id(handle))[1]
                if isinstance(result, UserError):
                    raise result
                if isinstance(result, WorkerDiedError) and attempts[cell.id] <= max_retries:
                    attempts[cell.id] += 1
                    _retry_notice(cell, result, attempts[cell.id], max_retries)
                    _submit(pool, pending, [cell])
                    continue
                outcomes[cell.id] = _outcome(cell, result, attempts[cell.id])
                tracker.finished(outcomes[cell.id])
    finally:
        if pending:
            pool.cancel([h for h, _ in pending.values()])
    return [outcomes[c.id] for c in cells]


def _submit(pool: Pool, pending: dict[int, tuple[Any, Cell]], cells: Sequence[Cell]) -> None:
    if cells:
        pending.update((id(h), (h, c)) for h, c in zip(pool.submit(cells), cells, strict=True))


def _retry_notice(cell: Cell, err: WorkerDiedError, attempt: int, max_retries: int) -> None:
    console.print(
        f"[yellow]{cell.id}: its worker died ({err}); attempt {attempt} of {max_retries + 1} "
        "continues from its last checkpoint, if it has one[/]"
    )
    release_dead_marker(cell)


def release_dead_marker(cell: Cell) -> None:
    """Remove the run folder's lock marker left by an attempt whose worker died.

    The marker names the dead worker's PID and host. On the same host filelock sees that PID is
    gone and the next attempt takes the marker over; on another host it cannot probe the PID, so
    the next attempt would be refused as if the dead worker still wrote the folder. The driver
    knows better: the engine (Ray, SLURM) reported the worker gone, the driver holds the study
    folder's lock (no other ``compare`` runs these cells) and it submits one attempt of a cell at
    a time, so the marker can only be the dead attempt's. (The one case this trusts the engine
    for: a node cut off by the network that Ray declares dead while its process still runs.)"""
    RunFolder(cell.config.output.dir).lock.unlink(missing_ok=True)


def _outcome(cell: Cell, result: Any, attempts: int) -> CellOutcome:
    if isinstance(result, WorkerDiedError | CellError):  # recorded as failed; the rest go on
        if isinstance(result, WorkerDiedError):  # the last attempt died too
            release_dead_marker(cell)
            result = WorkerDiedError(f"its worker died in each of {attempts} attempts: {result}")
        record_failure(cell, RunFolder(cell.config.output.dir), result)
        return CellOutcome(cell, "failed", 0.0, attempts)
    outcome: CellOutcome = result
    if outcome.status == "skipped" and attempts > 1:  # an attempt that died had finished it
        outcome = replace(outcome, status=cell_status(cell.config.output.dir) or "failed")
    console.print(f"{cell.id}: {outcome.status} ({outcome.seconds:.0f} s on a worker)")
    return replace(outcome, cell=cell, attempts=attempts)
