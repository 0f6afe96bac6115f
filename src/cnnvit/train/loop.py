"""One epoch of training and one pass of validation, as plain functions."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from rich.progress import Progress
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3

from cnnvit.data.augment import BatchTransform
from cnnvit.data.loaders import Loader
from cnnvit.data.mix import BatchMix
from cnnvit.runtime import Runtime

# How often the loop reads the running loss back from the device: every read is a sync, and a
# sync per step costs GPU throughput; divergence is still caught within this many steps.
SYNC_EVERY = 20


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(label_smoothing: float) -> LossFn:
    """Cross-entropy on class indices (B,) with smoothing, or on soft targets (B, num_classes).

    Soft targets come from mixup/cutmix (cnnvit.data.mix), which already folds the smoothing
    into them as timm's ``mixup_target`` does; smoothing them again would smooth twice.
    """

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.is_floating_point():  # (B, num_classes) probabilities
            return F.cross_entropy(logits.float(), labels)
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)

    return loss_fn


def _to_input(
    images: torch.Tensor, transform: BatchTransform, runtime: Runtime, gen: torch.Generator | None
) -> torch.Tensor:
    x = transform(images, gen)  # (B, C, S, S) float32
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _mixed_input(
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: BatchTransform,
    mix: BatchMix,
    runtime: Runtime,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augmented, mixed input; soft targets (B, num_classes); dominant labels (B,)."""
    out = mix(transform(images, gen), labels, gen)
    x = out.images
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, out.targets, out.dominant


@dataclass
class TrainingStep:
    """What one optimiser step needs: the model, its optimiser and schedule, the loss and the
    runtime, and optionally gradient clipping, batch mixing and an EMA of the weights."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    loss_fn: LossFn
    runtime: Runtime
    grad_clip: float | None = None
    mix: BatchMix | None = None
    ema: ModelEmaV3 | None = None


def train_one_epoch(
    step: TrainingStep,
    loader: Loader,
    transform: BatchTransform,
    *,
    generator: torch.Generator,
    first_step: int,
    progress: Progress | None = None,
    label: str = "train",
) -> EpochStats:
    """Train for one pass over ``loader``; raise DivergedError on a non-finite loss.

    With ``step.mix``, each batch is mixed after augmentation and the loss takes soft targets;
    the train accuracy then counts a prediction as right when it is the dominant (larger-weight)
    original label of the mixed image. With ``step.ema``, the EMA is updated after every
    optimizer step, with the global step so that a warmup schedule continues across a resume.
    """
    model, optimizer, runtime, mix, ema = (
        step.model,
        step.optimizer,
        step.runtime,
        step.mix,
        step.ema,
    )
    model.train()
    device = runtime.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    task = progress.add_task(label, total=len(loader), rate="") if progress else None
    start = time.perf_counter()
    for i, (images, labels) in enumerate(loader):
        step.scheduler.step_update(first_step + i + 1)
        if mix is None:
            x = _to_input(images, transform, runtime, generator)
            targets = labels  # (B,)
        else:
            # labels becomes the dominant label of each mixed image: accuracy is counted on it.
            x, targets, labels = _mixed_input(images, labels, transform, mix, runtime, generator)
        with runtime.autocast_context():
            logits = model(x)  # (B, num_classes)
        loss = step.loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if step.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), step.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(getattr(model, "_orig_mod", model), step=first_step + i + 1)
        loss_sum += loss.detach() * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
        if (i + 1) % SYNC_EVERY == 0 or i + 1 == len(loader):
            _check_finite(loss_sum, first_step + i + 1)
            if progress is not None:
                rate = seen / (time.perf_counter() - start)
                progress.update(
                    task,
                    completed=i + 1,
                    rate=f"{rate:,.0f} img/s  loss {loss_sum.item() / seen:.3f}",
                )
    _synchronize(device)
    seconds = time.perf_counter() - start
    if progress is not None:
        progress.remove_task(task)
    return EpochStats(loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1), seen, seconds)


def _check_finite(loss_sum: torch.Tensor, step: int) -> None:
    value = loss_sum.item()
    if not math.isfinite(value):
        raise DivergedError(f"training loss became {value} at step {step}")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    loader: Loader,
    transform: BatchTransform,
    *,
    runtime: Runtime,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, num_classes) float32 and labels (N,) of every image in ``loader``, on the CPU."""
    model.eval()
    all_logits, all_labels = [], []
    task = progress.add_task("eval", total=len(loader), rate="") if progress else None
    for images, labels in loader:
        x = _to_input(images, transform, runtime, None)
        with runtime.autocast_context():
            logits = model(x)  # (B, num_classes)
        all_logits.append(logits.float().cpu())
        all_labels.append(labels.cpu())
        if progress is not None:
            progress.advance(task)
    if progress is not None:
        progress.remove_task(task)
    return torch.cat(all_logits), torch.cat(all_labels)


def validate(
    model: torch.nn.Module,
    loader: Loader,
    transform: BatchTransform,
    *,
    loss_fn: LossFn,
    runtime: Runtime,
    progress: Progress | None = None,
) -> tuple[float, float]:
    """Mean loss and top-1 accuracy over the validation loader."""
    logits, labels = predict_logits(model, loader, transform, runtime=runtime, progress=progress)
    loss = loss_fn(logits, labels).item()
    return loss, (logits.argmax(1) == labels).float().mean().item()
