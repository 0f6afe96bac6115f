"""Where a study's cells (and tuning trials) run: ``executor.kind`` in the study, or ``cnnvit
compare --executor``.

* ``local`` (:mod:`.local`, the default): one after another in this process.
* ``ray`` (:mod:`.ray_tasks`, ``pip install 'cnnvit[ray]'``): each cell a Ray task with its
  CPUs, GPUs and memory declared, on a Ray cluster (``--address auto``, ``ray://…``) or on a Ray
  instance started on this machine's cores.
* ``slurm`` (:mod:`.slurm_jobs`, ``pip install 'cnnvit[slurm]'``): the cells as one SLURM job
  array through submitit.

The driver (this process) holds the study folder's lock, skips finished cells before it submits
anything, and builds the results, summary and report once the cells are done, exactly as for
``local``. Workers write each cell's run folder (holding that folder's lock) and nothing else:
the run folders are the interface, so every worker must see the study folder at the same path
(a shared filesystem); a worker that does not stops the study with one line saying so. A cell
runs with its share of the cores (torch threads: the recipe's ``train.threads``, else
``cpus_per_cell``), so cells side by side on one machine do not fight over them. A cell whose
worker dies runs again (``max_retries``) and resumes from its last checkpoint; a cell that fails
is recorded and the others go on (:mod:`.base`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cnnvit.study.config import ExecutorSettings
from cnnvit.study.executors.base import (
    CellWork,
    Executor,
    MissingExtraError,
    Probe,
    SharedFolderError,
    Tracker,
    require,
)
from cnnvit.study.executors.local import LocalExecutor

__all__ = [
    "Executor",
    "MissingExtraError",
    "SharedFolderError",
    "Tracker",
    "check_installed",
    "open_executor",
]


# The package each executor needs beyond cnnvit's own (its extra: pip install 'cnnvit[KIND]').
ENGINES = {"ray": "ray", "slurm": "submitit"}


def check_installed(settings: ExecutorSettings) -> None:
    """Refuse at once, in one line that says how to install it, an executor whose engine is
    missing."""
    if settings.kind in ENGINES:
        require(ENGINES[settings.kind], settings.kind)


@contextmanager
def open_executor(settings: ExecutorSettings, study_dir: Path) -> Iterator[Executor]:
    """The executor ``settings`` name, ready for the cells of the study in ``study_dir``."""
    if settings.kind == "local":
        yield LocalExecutor()
        return
    check_installed(settings)
    with Probe.written(study_dir) as probe:
        work = CellWork(probe, settings.cpus_per_cell)
        if settings.kind == "ray":
            from cnnvit.study.executors.ray_tasks import ray_executor

            with ray_executor(settings, work) as executor:
                yield executor
        else:
            from cnnvit.study.executors.slurm_jobs import slurm_executor

            with slurm_executor(settings, work, study_dir) as executor:
                yield executor
