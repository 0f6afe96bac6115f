"""What bad input raises: one type that the command line turns into a one-line message and exit
status 2. Each stage subclasses it (a config key, a dataset, a model, a run folder, a device)."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """Input that cannot be used: a wrong path, an unknown name, a bad config key or value. The
    message names the thing and how to fix it."""
