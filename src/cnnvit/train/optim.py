"""Optimiser and learning-rate schedule from an OptimConfig, through timm's factories.

timm's ``create_optimizer_v2`` already keeps weight decay off biases, norms and the parameters a
model lists in ``no_weight_decay()`` (ViT position embeddings, class token), and skips frozen
parameters; its schedulers step per update and carry their state in ``state_dict``.
"""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from timm.scheduler.scheduler import Scheduler

from cnnvit.config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    kwargs: dict = {}
    if cfg.name == "sgd":
        kwargs = {"momentum": cfg.momentum, "nesterov": cfg.nesterov}
    else:
        kwargs = {"betas": cfg.betas}
    return create_optimizer_v2(
        model,
        opt=cfg.name,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        filter_bias_and_bn=True,
        **kwargs,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, *, steps_per_epoch: int, total_steps: int
) -> Scheduler:
    """A per-step schedule over ``total_steps``: linear warmup from 0 (``warmup_steps``, else
    ``warmup_epochs`` epochs), then cosine to ``min_lr_ratio * lr`` or flat."""
    total = max(1, total_steps)
    if cfg.warmup_steps is not None:
        warmup = min(cfg.warmup_steps, total - 1)
    else:
        warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    if cfg.schedule == "cosine":
        return CosineLRScheduler(
            optimizer,
            t_initial=total - warmup,
            lr_min=cfg.lr * cfg.min_lr_ratio,
            warmup_t=warmup,
            warmup_lr_init=0.0,
            warmup_prefix=True,
            t_in_epochs=False,
        )
    # A step schedule with decay 1.0 is a constant rate after the same warmup.
    return StepLRScheduler(
        optimizer,
        decay_t=total,
        decay_rate=1.0,
        warmup_t=warmup,
        warmup_lr_init=0.0,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
