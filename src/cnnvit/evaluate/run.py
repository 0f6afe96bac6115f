"""Evaluate a model on a run's test split and write ``metrics.json`` and ``predictions.parquet``.

A weights file that cnnvit wrote carries the preprocessing it was trained with
(:mod:`cnnvit.models.weights`): :func:`evaluate_weights_file` feeds it that (size, channels,
mean/std) unless the config sets ``data.image_size`` or ``data.normalize`` itself, and refuses
data whose classes are not the weights'.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from cnnvit.config import ConfigError, RunConfig, read_run_config
from cnnvit.folders import RunFolder
from cnnvit.metrics import write_evaluation
from cnnvit.models import load_into, load_weights_file
from cnnvit.models.weights import (
    Preprocessing,
    check_class_names,
    classes_override,
    read_preprocessing,
)
from cnnvit.runtime import num_threads
from cnnvit.train.assemble import assemble
from cnnvit.train.checkpoint import evaluated_weights, load_checkpoint
from cnnvit.train.loop import predict_logits
from cnnvit.ui import progress_bar

__all__ = ["Evaluation", "evaluate_config", "evaluate_run", "evaluate_weights_file"]


@dataclass(frozen=True)
class Evaluation:
    metrics: dict
    preprocessing: str  # one line: what the images went through, and where each part came from


def evaluate_config(cfg: RunConfig, weights: dict[str, torch.Tensor] | None, out_dir: Path) -> dict:
    """Build the model and test split that ``cfg`` describes, load ``weights``, evaluate."""
    with num_threads(cfg.train.threads):
        return _evaluate(cfg, weights, Path(out_dir)).metrics


def evaluate_weights_file(cfg: RunConfig, path: Path, out_dir: Path) -> Evaluation:
    """Evaluate the weights in ``path`` on the test split of ``cfg``'s data.

    Where the file records its preprocessing, that is used: its image size unless the config
    sets ``data.image_size``, its mean/std unless it sets ``data.normalize`` (keys the config
    file, a preset or ``--set`` give count as set; defaults do not), always its channels (the
    first layer takes no others). A file without it (published or foreign weights) is evaluated
    with the data config, as before.

    Raises:
        UserError: the data's classes are not the weights' (another set, or another order), the
            config asks for other channels than the weights take, or the file cannot be read.
    """
    prep = read_preprocessing(path)
    weights = load_weights_file(path)
    cfg, use_weights_norm, origin = _with_preprocessing(cfg, prep, path)
    with num_threads(cfg.train.threads):
        return _evaluate(
            cfg,
            weights,
            Path(out_dir),
            prep=prep,
            use_weights_norm=use_weights_norm,
            origin=origin,
            source=path,
        )


def _with_preprocessing(
    cfg: RunConfig, prep: Preprocessing | None, path: Path
) -> tuple[RunConfig, bool, dict[str, str]]:
    """``cfg`` with the weights' size and channels where the config leaves them to defaults;
    whether to normalise with the weights' mean/std; where size, channels and normalisation
    come from."""
    if prep is None:
        note = f"the data config ({path.name} records no preprocessing)"
        return cfg, False, dict.fromkeys(("size", "channels", "normalisation"), note)
    given = cfg.data.model_fields_set  # what the file, preset, shortcuts or --set gave
    if "channels" in given and cfg.data.channels != prep.channels:
        raise ConfigError(
            f"data.channels={cfg.data.channels}, but {path} takes {prep.channels}-channel input; "
            "drop data.channels (images are converted to the weights' channels)"
        )
    origin = {"channels": path.name}
    update: dict[str, object] = {"channels": prep.channels}
    if "image_size" in given:
        origin["size"] = f"data.image_size={cfg.data.image_size}, set explicitly"
    else:
        update["image_size"] = prep.image_size
        origin["size"] = path.name
    if "normalize" in given:
        origin["normalisation"] = f"data.normalize={cfg.data.normalize}, set explicitly"
    else:
        origin["normalisation"] = path.name
    data = cfg.data.model_copy(update=update)
    return cfg.model_copy(update={"data": data}), "normalize" not in given, origin


def _evaluate(
    cfg: RunConfig,
    weights: dict[str, torch.Tensor] | None,
    out_dir: Path,
    *,
    prep: Preprocessing | None = None,
    use_weights_norm: bool = False,
    origin: dict[str, str] | None = None,
    source: str | Path = "the weights given",
) -> Evaluation:
    parts = assemble(cfg)
    runtime, data, model = parts.runtime, parts.data, parts.model
    transform = data.eval_transform
    if prep is not None:
        check_class_names(
            prep,
            data.classes,
            source="the weights",
            data=f"--data {cfg.data.spec}",
            hint=f"evaluate on data with the weights' classes in their order, e.g. "
            f"{classes_override(prep.class_names or ())}",
        )
        if use_weights_norm:
            transform = replace(transform, mean=prep.mean, std=prep.std)
    if weights is not None:
        load_into(model, weights, source)
    with progress_bar(cfg.train.progress) as progress:
        logits, labels = predict_logits(
            model, data.open_test(), transform, runtime=runtime, progress=progress
        )
    probs = torch.softmax(logits.float(), dim=1).numpy()  # (N, C)
    metrics = write_evaluation(out_dir, probs, labels.numpy(), data.classes)
    used = Preprocessing(transform.size, transform.channels, transform.mean, transform.std)
    return Evaluation(metrics, _describe(used, origin or {}))


def _describe(used: Preprocessing, origin: dict[str, str]) -> str:
    """``preprocessing: 16 px, 3 channels, mean (...), std (...) (all from model.safetensors)``."""
    if not origin:
        return f"preprocessing: {used.describe()} (the data config)"
    by_source: dict[str, list[str]] = {}
    for part in ("size", "channels", "normalisation"):
        by_source.setdefault(origin[part], []).append(part)
    if len(by_source) == 1:
        where = f"all from {next(iter(by_source))}"
    else:
        where = "; ".join(f"{', '.join(parts)} from {src}" for src, parts in by_source.items())
    return f"preprocessing: {used.describe()} ({where})"


def evaluate_run(run_dir: Path) -> dict:
    """Re-evaluate a finished (or interrupted) run from its folder: config + latest checkpoint
    (its EMA where it kept one, as its training run's final evaluation was)."""
    folder = RunFolder(run_dir)
    folder.require(checkpoint=True, results=False)
    ckpt = load_checkpoint(folder.path)
    assert ckpt is not None  # require() checked it
    return evaluate_config(read_run_config(folder.config), evaluated_weights(ckpt), folder.path)
