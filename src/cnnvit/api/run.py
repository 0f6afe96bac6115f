"""Runs from Python: :func:`train_run` trains one, :func:`load_run` opens a run folder.

``cnnvit train`` is :func:`train_config` plus printing. (The function is ``train_run``, not
``train``: ``cnnvit.train`` is the training package, and importing it would replace a function
of that name on the ``cnnvit`` package.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cnnvit.api.overrides import nested_values
from cnnvit.config import (
    RunConfig,
    apply_overrides,
    load_run_config,
    read_run_config,
    validate_config,
)
from cnnvit.folders import RunFolder
from cnnvit.presets import deep_merge

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Run", "load_run", "run_config", "train_config", "train_run"]


@dataclass(frozen=True)
class Run:
    """A run folder that ``cnnvit train`` (or a study cell) wrote."""

    path: Path

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.path)

    @cached_property
    def config(self) -> RunConfig:
        """The resolved config the run trained with (``config.yaml``)."""
        return read_run_config(self.folder.config)

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """``results.json``: status, test accuracies, calibration, cost, counts."""
        return self.folder.read_results() or {}

    @cached_property
    def epochs(self) -> pd.DataFrame:
        """One row per epoch (``epochs.csv``): losses, accuracies, learning rate, timing."""
        return pd.read_csv(self.folder.epochs)

    @cached_property
    def predictions(self) -> pd.DataFrame | None:
        """Per test image (``predictions.parquet``): label, prediction, confidence, top-5;
        None where the run has no evaluation yet."""
        path = self.folder.predictions
        return pd.read_parquet(path) if path.is_file() else None

    def model(self, device: str = "cpu") -> nn.Module:
        """The trained model with the weights its evaluation used, in eval mode, on ``device``
        (built as the analyses build it: :func:`cnnvit.analyze.subject.subject_from_run`)."""
        from cnnvit.analyze.subject import subject_from_run

        return subject_from_run(self.path, device=device).model

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"


def load_run(path: str | Path) -> Run:
    """An existing run folder; :class:`~cnnvit.folders.RunFolderError` where it holds no run."""
    folder = RunFolder(Path(path))
    folder.require(checkpoint=False, results=False)
    return Run(folder.path)


def run_config(
    config_or_path: str | Path | RunConfig | None = None,
    settings: Sequence[str] = (),
    **overrides: Any,
) -> RunConfig:
    """The config a run trains with: a YAML file (its preset applied), a :class:`RunConfig`, or
    the defaults; then ``overrides`` (``optim__lr=3e-4``), then ``settings`` (``KEY=VALUE``)."""
    values = nested_values(overrides)
    if isinstance(config_or_path, RunConfig):  # resolved already: no preset again
        data = deep_merge(config_or_path.model_dump(mode="json"), values)
        return validate_config(RunConfig, apply_overrides(data, list(settings)))
    from cnnvit.models import family_of_name  # the registry imports torch and timm

    path = None if config_or_path is None else Path(config_or_path)
    return load_run_config(path, list(settings), values=values, family_of=family_of_name)


def train_config(cfg: RunConfig) -> dict[str, Any]:
    """Train a new run of ``cfg``; returns its results.json (what ``cnnvit train`` prints)."""
    from cnnvit.train.run import train

    return train(cfg)


def train_run(config_or_path: str | Path | RunConfig | None = None, **overrides: Any) -> Run:
    """Train one run and return it. ``config_or_path``: as :func:`run_config`; ``overrides``:
    config keys with ``__`` for dots (``model__name="vit_mini"``, ``train__epochs=2``). The run
    goes to ``output.dir`` (default ``runs/<model>-<dataset>-<time>``)."""
    from cnnvit.train.run import default_run_dir

    cfg = run_config(config_or_path, **overrides)
    out = Path(cfg.output.dir) if cfg.output.dir else default_run_dir(cfg)
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": out})})
    train_config(cfg)
    return Run(out)
