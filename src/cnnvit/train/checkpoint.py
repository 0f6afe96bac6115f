"""Atomic checkpoints: weights as safetensors, training state beside them, a pointer to the latest.

Layout under a run folder::

    checkpoints/epoch-0003/model.safetensors   weights (safe to load anywhere)
    checkpoints/epoch-0003/ema.safetensors     EMA of the weights, when the run keeps one
    checkpoints/epoch-0003/state.pt            optimiser, scheduler, RNG states (tensors and
                                               plain containers only: loads with weights_only)
    checkpoints/latest.json                    {"epoch": 3, "path": "epoch-0003"}

A checkpoint folder is written under a temporary name and renamed into place, then the pointer
is replaced atomically; a crash at any moment leaves the previous pointer and its folder intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoints"
WEIGHTS = "model.safetensors"
EMA_WEIGHTS = "ema.safetensors"
STATE = "state.pt"
LATEST = "latest.json"


@dataclass
class Checkpoint:
    epoch: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    ema_weights: dict[str, torch.Tensor] | None = None


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights of a possibly compiled model, contiguous on the CPU, ready for safetensors."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wraps the module
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(
    run_dir: Path,
    epoch: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    ema_model: torch.nn.Module | None = None,
) -> Path:
    """Write epoch ``epoch`` atomically and drop older checkpoints; ``ema_model``: the EMA copy."""
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch-{epoch:04d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    save_file(model_state(model), tmp / WEIGHTS, metadata={"epoch": str(epoch)})
    if ema_model is not None:
        save_file(model_state(ema_model), tmp / EMA_WEIGHTS, metadata={"epoch": str(epoch)})
    torch.save(state, tmp / STATE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(root / LATEST, json.dumps({"epoch": epoch, "path": final.name}))
    for old in root.iterdir():
        if old.is_dir() and old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint_dir(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / CHECKPOINT_DIR / LATEST
    if not pointer.is_file():
        return None
    folder = pointer.parent / json.loads(pointer.read_text())["path"]
    return folder if (folder / WEIGHTS).is_file() else None


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> Checkpoint | None:
    """The latest complete checkpoint of a run, or None if it has none."""
    folder = latest_checkpoint_dir(run_dir)
    if folder is None:
        return None
    weights = load_file(folder / WEIGHTS, device=str(map_location))
    # weights_only: the state holds tensors, numbers and dicts; nothing else may be unpickled.
    state = torch.load(folder / STATE, map_location=map_location, weights_only=True)
    ema = None
    if (folder / EMA_WEIGHTS).is_file():
        ema = load_file(folder / EMA_WEIGHTS, device=str(map_location))
    return Checkpoint(epoch=int(state["epoch"]), weights=weights, state=state, ema_weights=ema)
