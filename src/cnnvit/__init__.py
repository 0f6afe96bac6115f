"""cnnvit: fair, fast, reproducible head-to-head studies of CNNs against Vision Transformers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cnnvit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
