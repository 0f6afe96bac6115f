"""Small helpers the readers share: where data lives, whether the network may be used."""

from __future__ import annotations

import os
from pathlib import Path

from cnnvit.data.types import DataError

# The folder that holds downloaded or extracted data when no data root is given.
DEFAULT_CACHE = Path("~/.cache/cnnvit")


def data_root(root: Path | None) -> Path | None:
    """The data folder: the ``root`` argument, else ``$CNNVIT_DATA``, else None."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("CNNVIT_DATA")
    return Path(env).expanduser() if env else None


def cache_dir(name: str, root: Path | None) -> Path:
    """Where a dataset ``name`` is downloaded or extracted to: ROOT/name or ~/.cache/cnnvit/name."""
    base = data_root(root)
    return (base if base is not None else DEFAULT_CACHE.expanduser()) / name


def require_path(path: Path | None, name: str, example: str) -> Path:
    """The path a reader cannot work without, checked to exist."""
    if path is None:
        raise DataError(f"{name} needs a path, e.g. --data {name}:{example}")
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{name}: {path} does not exist")
    return path
