"""Terminal output: one rich Console and the progress bar every long loop uses."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


# The one live progress display: rich allows a single live display at a time, so a loop that
# runs inside another (an epoch inside a study) adds its task to the display already shown.
_active: Progress | None = None


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Progress | None]:
    """A rich Progress with count, a text field ``rate`` and ETA; ``None`` when disabled.

    Tasks must be added with a ``rate`` field: ``progress.add_task("train", total=n, rate="")``.
    """
    global _active
    if not enabled:
        yield None
        return
    if _active is not None:
        yield _active
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    _active = progress
    try:
        with progress:
            yield progress
    finally:
        _active = None


@contextmanager
def at_least_width(columns: int, target: Console | None = None) -> Iterator[None]:
    """Render ``target`` (default: cnnvit's console) at least ``columns`` wide for a while (a
    wide table in a pipe or a log file would otherwise be squeezed to 80 columns)."""
    target = console if target is None else target
    before = target.width
    target.width = max(before, columns)
    try:
        yield
    finally:
        target.width = before
