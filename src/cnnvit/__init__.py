"""cnnvit: fair, fast, reproducible head-to-head studies of CNNs against Vision Transformers.

The Python API (:mod:`cnnvit.api`) is reachable from here: ``cnnvit.compare``, ``cnnvit.Study``,
``cnnvit.train_run``, ``cnnvit.load_run``, ``cnnvit.Run``, ``cnnvit.analyze_runs``. They load on
first use, so ``import cnnvit`` stays light (no torch, no pandas).
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("cnnvit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_API = ("Run", "Study", "analysis_names", "analyze_runs", "compare", "load_run", "train_run")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """The API's names, imported on first use (module ``__getattr__``, PEP 562)."""
    if name in _API:
        # By name, not `from cnnvit import api`: lower layers import this package for
        # __version__, and a static import here would make them depend on the top layer.
        return getattr(import_module("cnnvit.api"), name)
    raise AttributeError(f"module 'cnnvit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
