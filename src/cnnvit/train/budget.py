"""How long a run trains and when it scores the selection split: the plan of a budget, and the
early-stopping tracker that keeps the best evaluation's weights.

A budget (:class:`cnnvit.config.BudgetConfig`) becomes a :class:`Plan` once the number of
optimiser steps per epoch is known: the total number of steps, the global steps after which the
selection split is scored, and for early stopping its patience. Checkpoints stay at epoch ends
(and at the last step), so that a resumed run replays a partial epoch exactly; evaluations may
fall inside an epoch, and the log rows after the last checkpoint are replayed on resume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from cnnvit.config import BudgetConfig


@dataclass(frozen=True)
class Plan:
    """A budget resolved against the size of the training set."""

    kind: str  # epochs | steps | early_stopping
    steps_per_epoch: int
    total_steps: int  # the most optimiser steps the run takes
    evaluate_at: tuple[int, ...]  # global steps after which the selection split is scored
    patience: int | None = None  # early stopping only
    min_delta: float = 0.0

    @property
    def epochs(self) -> int:
        """Epochs the run starts (the last may be partial)."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def epoch_steps(self, epoch: int) -> tuple[int, int]:
        """(first global step before, last global step after) epoch ``epoch`` (1-based)."""
        first = (epoch - 1) * self.steps_per_epoch
        return first, min(first + self.steps_per_epoch, self.total_steps)

    def scores_in(self, epoch: int) -> bool:
        """Whether the selection split is scored during epoch ``epoch`` (if it runs to its end)."""
        first, last = self.epoch_steps(epoch)
        return any(first < step <= last for step in self.evaluate_at)

    def describe(self) -> str:
        """One line for the log and the report."""
        n = len(self.evaluate_at)
        if self.kind == "epochs":
            return f"{self.epochs} epochs ({self.total_steps:,} steps), scored after each epoch"
        if self.kind == "steps":
            return f"{self.total_steps:,} steps ({self.epochs} epochs), scored {n} times"
        return (
            f"early stopping after {self.patience} scores without a new best, at most "
            f"{self.total_steps:,} steps ({self.epochs} epochs), scored {n} times"
        )

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "steps_per_epoch": self.steps_per_epoch,
            "steps_planned": self.total_steps,
            "evaluations_planned": len(self.evaluate_at),
            "patience": self.patience,
        }


def plan_budget(budget: BudgetConfig, *, epochs: int, steps_per_epoch: int) -> Plan:
    """The plan of ``budget`` for a training set of ``steps_per_epoch`` batches; ``epochs`` is
    ``train.epochs`` (the budget of ``epochs``, the cap of early stopping without ``steps``)."""
    spe = max(1, steps_per_epoch)
    if budget.kind == "epochs":
        total = epochs * spe
        return Plan("epochs", spe, total, tuple(spe * e for e in range(1, epochs + 1)))
    total = budget.steps if budget.steps is not None else epochs * spe
    evaluations = min(budget.evaluations, total)
    points = sorted({max(1, round(k * total / evaluations)) for k in range(1, evaluations + 1)})
    if budget.kind == "steps":
        return Plan("steps", spe, total, tuple(points))
    return Plan("early_stopping", spe, total, tuple(points), budget.patience, budget.min_delta)


@dataclass
class BestWeights:
    """The best selection score so far and, for early stopping, its weights (on the CPU)."""

    accuracy: float = -math.inf
    step: int = 0
    epoch: int = 0
    weights: dict[str, torch.Tensor] | None = None

    def offer(
        self, accuracy: float, step: int, epoch: int, model: torch.nn.Module | None, delta: float
    ) -> bool:
        """Record a score; keeps ``model``'s weights when it is a new best (by ``delta``)."""
        if accuracy <= self.accuracy + delta and self.step:
            return False
        self.accuracy, self.step, self.epoch = accuracy, step, epoch
        if model is not None:
            self.weights = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }
        return True


def evaluations_since_best(history: Sequence[Mapping], best_step: int) -> int:
    """How many scores came after the best one."""
    return sum(1 for row in history if int(row["step"]) > best_step)


def best_in(history: Sequence[Mapping], delta: float) -> tuple[float, int, int]:
    """(accuracy, step, epoch) of the best score in a log, as :class:`BestWeights` chose it
    (a later score counts only when it beats the best by more than ``delta``)."""
    best = BestWeights()
    for row in history:
        best.offer(float(row["selection_acc"]), int(row["step"]), int(row["epoch"]), None, delta)
    return best.accuracy, best.step, best.epoch
