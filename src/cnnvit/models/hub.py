"""Weights from files and from the hub, and the errors that say why a model cannot be had.

* :func:`load_weights_file` reads safetensors, or a torch file with ``weights_only=True``: a file
  that needs arbitrary pickled objects is refused, never unpickled.
* Published weights never hang without network: huggingface_hub retries an unreachable hub for
  about 45 s, so the hub is probed first (offline mode or no answer in a few seconds means no
  download), and weights already in the local cache are used instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from huggingface_hub import constants, try_to_load_from_cache
from timm.models import get_pretrained_cfg

from cnnvit.errors import UserError
from cnnvit.net import offline_reason, unreachable

__all__ = [
    "WEIGHTS_HINT",
    "ModelError",
    "UnknownModelError",
    "cached_weights",
    "hub_reachable",
    "load_into",
    "load_weights_file",
    "published_state_dict",
]

_HUB_PROBE_TIMEOUT_S = 3.0
WEIGHTS_HINT = "pass a local file instead (config: `model.weights: path/to/model.safetensors`)"


class ModelError(UserError, ValueError):
    """A model cannot be created or loaded as asked; the message says what to do instead."""


class UnknownModelError(ModelError):
    """No timm model or cnnvit built-in has this name."""


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors or torch file (``weights_only=True``, on CPU).

    Training checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``, EMA)
    are unwrapped and DDP / torch.compile prefixes removed, as timm does.

    Raises:
        ModelError: the file is missing, unreadable, or needs unsafe unpickling.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        state_dict = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for a bad file
        raise ModelError(
            f"cannot read weights file {path}: {exc}. Use a .safetensors file, or a torch file of "
            "tensors only (it is loaded with weights_only=True; arbitrary pickles are refused)"
        ) from exc
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise ModelError(f"weights file {path} does not hold a state dict of tensors")
    return state_dict


def load_into(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str | Path) -> None:
    """``model.load_state_dict(weights)``, or a :class:`ModelError` that says in one line which
    tensors do not fit (missing, unexpected, another shape) instead of torch's page of keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in weights and weights[k].shape != v.shape
    ]
    problems = [
        f"{len(found)} {what}, e.g. {', '.join(found[:3])}"
        for what, found in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("of another shape (file vs model)", shapes),
        )
        if found
    ]
    if problems:
        name = type(model).__name__
        raise ModelError(
            f"weights in {source} do not fit this {name}: tensors {'; '.join(problems)}; check "
            "--model (and its --set model.kwargs) against the model that wrote the file"
        )
    model.load_state_dict(weights)


def published_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The published weights of the timm model ``name`` as a state dict: from the hub where it
    answers, else from the local cache; :class:`ModelError` where neither has them."""
    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.has_weights:
        raise ModelError(f"{name} has no published pretrained weights; {WEIGHTS_HINT}")
    if hub_reachable(cfg):
        try:
            return timm.create_model(name, pretrained=True).state_dict()
        except Exception as exc:  # network, hub and format errors all mean "could not fetch"
            raise ModelError(f"could not fetch pretrained weights for {name}: {exc}") from exc
    cached = cached_weights(cfg)
    if cached is None:
        where = cfg.hf_hub_id or cfg.url
        raise ModelError(
            f"could not fetch pretrained weights for {name} from {where}: no network (or "
            "offline mode) and not in the local cache"
        )
    return load_weights_file(cached)


def hub_reachable(cfg: Any) -> bool:
    """Whether the weights' host answers within a few seconds (False when offline)."""
    if offline_reason() is not None:
        return False
    if cfg.hf_hub_id:
        if constants.is_offline_mode():
            return False
        return unreachable(constants.ENDPOINT, _HUB_PROBE_TIMEOUT_S) is None
    return bool(cfg.url) and unreachable(cfg.url, _HUB_PROBE_TIMEOUT_S) is None


def cached_weights(cfg: Any) -> Path | None:
    """A copy of the published weights already on disk (HF cache or torch hub cache), if any."""
    if cfg.hf_hub_id:
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        names = (
            [cfg.hf_hub_filename]
            if cfg.hf_hub_filename
            else ["model.safetensors", "pytorch_model.bin"]
        )
        for filename in names:
            found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if candidate.is_file():
            return candidate
    return None
