"""One writer per folder: a run or study folder is written by one cnnvit process at a time.

The lock is filelock's :class:`~filelock.SoftFileLock`: a marker file created exclusively
(``O_CREAT | O_EXCL``, which also works on the shared filesystems that clusters mount), holding
the owner's PID and host name. A marker whose process is gone from this host is stale and
taken over; a marker from another host is trusted, and the message says how to remove it if
that process is gone. The marker's name is the folder's (:mod:`cnnvit.folders`); this module
only takes and releases it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import SoftFileLock, Timeout

from cnnvit.errors import UserError

__all__ = ["FolderBusyError", "holder", "writing"]


class FolderBusyError(UserError):
    """Another process is writing the folder; the message names it."""


@contextmanager
def writing(folder: Path, marker: Path) -> Iterator[None]:
    """Hold ``marker`` (inside ``folder``, which is created) while the block writes ``folder``;
    :class:`FolderBusyError` at once, touching nothing else, where another process holds it.
    A folder created here that the block left empty (bad input found early) is removed."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with _held(folder, marker):
            yield
    finally:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


@contextmanager
def _held(folder: Path, marker: Path) -> Iterator[None]:
    lock = SoftFileLock(marker, timeout=0, is_singleton=False, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise FolderBusyError(
            f"{folder} is being written by {holder(marker)}; wait for it to finish, or stop "
            f"it, then run the command again (if that process is gone, delete {marker})"
        ) from None
    try:
        yield
    finally:
        lock.release()


def holder(marker: Path) -> str:
    """Who holds ``marker``, in words: "process 1234 on host node7 since 14:20:05"."""
    try:
        lines = marker.read_text(encoding="utf-8").splitlines()
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(marker.stat().st_mtime))
    except OSError:
        return "another process"  # released between the attempt and this read
    pid = lines[0] if lines else "?"
    host = lines[1] if len(lines) > 1 else "?"
    return f"process {pid} on host {host} since {since}"
