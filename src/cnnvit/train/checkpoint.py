"""Atomic checkpoints: weights as safetensors, training state beside them, a pointer to the latest.

The layout is the run folder's (:class:`cnnvit.folders.RunFolder`: ``checkpoints/latest.json``
-> ``epoch-NNNN/`` with ``model.safetensors``, ``ema.safetensors`` when the run keeps an EMA,
``best.safetensors`` under early stopping (the best selection score's weights, which the run
reports), and ``state.pt``: optimiser, scheduler and RNG states, tensors and plain containers
only, so it loads with ``weights_only``). A checkpoint folder is written under a temporary name
and renamed into place, then the pointer is replaced atomically; a crash at any moment leaves
the previous pointer and its folder intact. The weights files carry the preprocessing and class
names of the run (:mod:`cnnvit.models.weights`), so that they can be used without the run's config.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from pickle import UnpicklingError
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cnnvit.folders import CheckpointFiles, RunFolder, RunFolderError
from cnnvit.models.weights import preprocessing_metadata
from cnnvit.train.distributed import unwrap

if TYPE_CHECKING:
    from cnnvit.data.pipeline import PreparedData


@dataclass
class Checkpoint:
    epoch: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    ema_weights: dict[str, torch.Tensor] | None = None
    best_weights: dict[str, torch.Tensor] | None = None  # early stopping: what it reports


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights of a possibly compiled or DDP-wrapped model, contiguous on the CPU, ready for
    safetensors."""
    model = unwrap(model)  # torch.compile and DistributedDataParallel wrap the module
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def weights_metadata(model_name: str, data: PreparedData) -> dict[str, str]:
    """The metadata a run's weights files carry: the model, the preprocessing of the run's
    evaluation (size, channels, mean/std) and its class names."""
    return preprocessing_metadata(
        image_size=data.image_size,
        channels=data.channels,
        mean=data.eval_transform.mean,
        std=data.eval_transform.std,
        class_names=[str(c) for c in data.classes],
        model=model_name,
    )


def save_checkpoint(
    run_dir: Path,
    epoch: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    ema_model: torch.nn.Module | None = None,
    best_weights: dict[str, torch.Tensor] | None = None,
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write epoch ``epoch`` atomically and drop older checkpoints; ``ema_model``: the EMA copy;
    ``best_weights``: the weights early stopping will restore; ``metadata``: written into each
    weights file (:func:`weights_metadata`), beside its ``epoch``."""
    folder = RunFolder(run_dir)
    final = folder.checkpoint(epoch)
    folder.checkpoints.mkdir(parents=True, exist_ok=True)
    tmp = CheckpointFiles(Path(tempfile.mkdtemp(dir=folder.checkpoints, prefix=".tmp-")), epoch)
    meta = {**(metadata or {}), "epoch": str(epoch)}
    try:
        save_file(model_state(model), tmp.weights, metadata=meta)
        if ema_model is not None:
            save_file(model_state(ema_model), tmp.ema_weights, metadata=meta)
        if best_weights is not None:
            tensors = {k: v.contiguous() for k, v in best_weights.items()}
            save_file(tensors, tmp.best_weights, metadata=meta)
        torch.save(state, tmp.state)
        _sync(tmp.path)  # on disk before its name says it is complete
    except BaseException:
        # Disk full, or interrupted: the half-written folder goes; the previous checkpoint and
        # the pointer to it were never touched.
        shutil.rmtree(tmp.path, ignore_errors=True)
        raise
    if final.path.exists():
        shutil.rmtree(final.path)
    os.replace(tmp.path, final.path)
    folder.point_to(final)
    # Older checkpoints go only once the pointer names the new, complete one.
    for old in folder.checkpoints.iterdir():
        if old.is_dir() and old != final.path:
            shutil.rmtree(old, ignore_errors=True)
    return final.path


def _sync(folder: Path) -> None:
    """fsync every file in ``folder`` and the folder itself."""
    for path in [*folder.iterdir(), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def latest_checkpoint_dir(run_dir: Path) -> Path | None:
    latest = RunFolder(run_dir).latest_checkpoint()
    return None if latest is None else latest.path


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> Checkpoint | None:
    """The newest checkpoint of a run that reads back whole, or None if it has none at all.

    A damaged one (a truncated file) is passed over for an older one where there is one; where
    every one is damaged, :class:`RunFolderError` names them and why, and nothing is deleted."""
    folder = RunFolder(run_dir)
    problems = []
    for candidate in folder.checkpoint_candidates():
        try:
            return _read(candidate, map_location)
        except (
            SafetensorError,
            UnpicklingError,
            RuntimeError,
            OSError,
            EOFError,
            KeyError,
            ValueError,
        ) as err:
            problems.append(f"{candidate.path.name}: {type(err).__name__}: {err}")
    if not problems:
        return None
    raise RunFolderError(
        f"{folder.path}: no checkpoint reads back whole ({'; '.join(problems)}); the files are "
        "left as they are: restore them, or train the run again into another folder"
    )


def _read(latest: CheckpointFiles, map_location: str | torch.device) -> Checkpoint:
    weights = load_file(latest.weights, device=str(map_location))
    # weights_only: the state holds tensors, numbers and dicts; nothing else may be unpickled.
    state = torch.load(latest.state, map_location=map_location, weights_only=True)
    ema = best = None
    if latest.ema_weights.is_file():
        ema = load_file(latest.ema_weights, device=str(map_location))
    if latest.best_weights.is_file():
        best = load_file(latest.best_weights, device=str(map_location))
    return Checkpoint(int(state["epoch"]), weights, state, ema_weights=ema, best_weights=best)


def evaluated_weights(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The weights a run is evaluated on, as its final evaluation was: the best selection
    score's under early stopping, else its EMA where it kept one, else the last."""
    if checkpoint.best_weights is not None:
        return checkpoint.best_weights
    return checkpoint.ema_weights if checkpoint.ema_weights is not None else checkpoint.weights
