"""Evaluate a model on a validation split and write ``metrics.json`` and ``predictions.parquet``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cnnvit.assemble import assemble
from cnnvit.config import RunConfig, load_run_config
from cnnvit.evaluate.metrics import classification_metrics, predictions_frame
from cnnvit.train.checkpoint import load_checkpoint
from cnnvit.train.loop import predict_logits
from cnnvit.ui import progress_bar

METRICS = "metrics.json"
PREDICTIONS = "predictions.parquet"


def write_evaluation(
    out_dir: Path, logits: torch.Tensor, labels: torch.Tensor, classes: list[str]
) -> dict:
    """Logits (N, C) and labels (N,) -> ``out_dir``/metrics.json and predictions.parquet."""
    return write_probabilities(out_dir, torch.softmax(logits.float(), dim=1), labels, classes)


def write_probabilities(
    out_dir: Path,
    probs: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    indices: torch.Tensor | None = None,
) -> dict:
    """Softmax probabilities (N, C) and labels (N,) -> metrics.json and predictions.parquet
    (``indices``: each row's position in the evaluated split, when files were skipped)."""
    probs, y = probs.float().numpy(), labels.numpy()
    metrics = classification_metrics(y, probs, classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS).write_text(json.dumps(metrics, indent=2))
    positions = None if indices is None else indices.numpy()
    predictions_frame(y, probs, positions).to_parquet(out_dir / PREDICTIONS, index=False)
    return metrics


def evaluate_config(cfg: RunConfig, weights: dict[str, torch.Tensor] | None, out_dir: Path) -> dict:
    """Build the model and validation data that ``cfg`` describes, load ``weights``, evaluate."""
    parts = assemble(cfg)
    runtime, data, model = parts.runtime, parts.data, parts.model
    if weights is not None:
        model.load_state_dict(weights)
    with progress_bar(cfg.train.progress) as progress:
        logits, labels = predict_logits(
            model, data.val, data.eval_transform, runtime=runtime, progress=progress
        )
    return write_evaluation(out_dir, logits, labels, data.classes)


def evaluate_run(run_dir: Path) -> dict:
    """Re-evaluate a finished (or interrupted) run from its folder: config + latest checkpoint."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir / "config.yaml")
    ckpt = load_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(
            f"{run_dir} has no checkpoint to evaluate (looked in {run_dir}/checkpoints)"
        )
    # A run that keeps an EMA is evaluated on it, as its training run's final evaluation was.
    weights = ckpt.ema_weights if ckpt.ema_weights is not None else ckpt.weights
    return evaluate_config(cfg, weights, run_dir)
