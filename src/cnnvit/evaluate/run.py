"""Evaluate a model on a run's test split and write ``metrics.json`` and ``predictions.parquet``."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnvit.config import RunConfig, read_run_config
from cnnvit.folders import RunFolder
from cnnvit.metrics import write_evaluation
from cnnvit.runtime import num_threads
from cnnvit.train.assemble import assemble
from cnnvit.train.checkpoint import evaluated_weights, load_checkpoint
from cnnvit.train.loop import predict_logits
from cnnvit.ui import progress_bar


def evaluate_config(cfg: RunConfig, weights: dict[str, torch.Tensor] | None, out_dir: Path) -> dict:
    """Build the model and test split that ``cfg`` describes, load ``weights``, evaluate."""
    with num_threads(cfg.train.threads):
        return _evaluate(cfg, weights, Path(out_dir))


def _evaluate(cfg: RunConfig, weights: dict[str, torch.Tensor] | None, out_dir: Path) -> dict:
    parts = assemble(cfg)
    runtime, data, model = parts.runtime, parts.data, parts.model
    if weights is not None:
        model.load_state_dict(weights)
    with progress_bar(cfg.train.progress) as progress:
        logits, labels = predict_logits(
            model, data.open_test(), data.eval_transform, runtime=runtime, progress=progress
        )
    probs = torch.softmax(logits.float(), dim=1).numpy()  # (N, C)
    return write_evaluation(out_dir, probs, labels.numpy(), data.classes)


def evaluate_run(run_dir: Path) -> dict:
    """Re-evaluate a finished (or interrupted) run from its folder: config + latest checkpoint
    (its EMA where it kept one, as its training run's final evaluation was)."""
    folder = RunFolder(run_dir)
    folder.require(checkpoint=True, results=False)
    ckpt = load_checkpoint(folder.path)
    assert ckpt is not None  # require() checked it
    return evaluate_config(read_run_config(folder.config), evaluated_weights(ckpt), folder.path)
