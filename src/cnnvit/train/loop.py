"""One epoch of training and one pass of validation, as plain functions."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
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
from cnnvit.train.distributed import unwrap

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


# Called at a pause inside an epoch with the global step and the stats since the last pause;
# returns True to stop training there (early stopping).
PauseFn = Callable[[int, "EpochStats"], bool]


@dataclass
class Tally:
    """Running loss, correct predictions, images and training time of a stretch of steps (sums
    on the device); a stretch may span epochs (a small training set scored every few epochs),
    and its clock runs only inside :func:`train_one_epoch`.

    With several processes, ``all_reduce`` sums a tensor over them in place: the figures read
    back (:meth:`totals`, :meth:`stats`) are then the whole run's, every process reads them at the
    same steps, and the clock is this process's (the processes step in lockstep)."""

    device: torch.device
    all_reduce: Callable[[torch.Tensor], None] | None = None

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device, dtype=torch.long)
        self.seen = 0
        self.seconds = 0.0
        self.started = time.perf_counter()

    def start_clock(self) -> None:
        self.started = time.perf_counter()

    def stop_clock(self) -> None:
        _synchronize(self.device)
        self.seconds += time.perf_counter() - self.started
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += loss.detach() * len(labels)
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.seen += len(labels)

    def totals(self) -> tuple[float, int, int]:
        """(loss sum, correct predictions, images) of the stretch, over every process."""
        seen = torch.tensor(float(self.seen), dtype=torch.float64, device=self.device)
        sums = torch.stack([self.loss_sum.double(), self.correct.double(), seen])  # (3,)
        if self.all_reduce is not None:
            self.all_reduce(sums)
        loss_sum, correct, images = sums.tolist()
        return loss_sum, int(correct), int(images)

    def stats(self) -> EpochStats:
        """The stretch so far; the clock must be stopped."""
        loss_sum, correct, images = self.totals()
        n = max(images, 1)
        return EpochStats(loss_sum / n, correct / n, images, self.seconds)


def train_one_epoch(
    step: TrainingStep,
    loader: Loader,
    transform: BatchTransform,
    *,
    generator: torch.Generator,
    first_step: int,
    progress: Progress | None = None,
    label: str = "train",
    stop_at: int | None = None,
    pause_at: Collection[int] = (),
    on_pause: PauseFn | None = None,
    tally: Tally | None = None,
) -> EpochStats:
    """Train for one pass over ``loader``; raise DivergedError on a non-finite loss.

    With ``step.mix``, each batch is mixed after augmentation and the loss takes soft targets;
    the train accuracy then counts a prediction as right when it is the dominant (larger-weight)
    original label of the mixed image. With ``step.ema``, the EMA is updated after every
    optimizer step, with the global step so that a warmup schedule continues across a resume.

    The pass ends early at global step ``stop_at``. After each global step in ``pause_at``,
    ``on_pause(step, stats since the last pause)`` runs (it may score the model; the model is
    put back in training mode after it) and ends the pass by returning True. The stats (passed
    to ``on_pause`` and returned) cover the steps since the last pause, counted in ``tally``,
    which carries over from the previous epoch when given.
    """
    model, runtime = step.model, step.runtime
    model.train()
    tally = tally if tally is not None else Tally(runtime.device)
    tally.start_clock()  # the time between epochs (checkpoints, scores) is not training time
    last = first_step + len(loader) if stop_at is None else min(stop_at, first_step + len(loader))
    task = progress.add_task(label, total=last - first_step, rate="") if progress else None
    for i, (images, labels) in enumerate(loader):
        global_step = first_step + i + 1
        logits, loss, labels = _one_step(step, images, labels, transform, generator, global_step)
        tally.add(loss, logits, labels)
        if (i + 1) % SYNC_EVERY == 0 or global_step == last or global_step in pause_at:
            loss_sum, _, images = tally.totals()
            _check_finite(loss_sum, global_step)
            _show_rate(progress, task, i + 1, loss_sum, images, tally)
        if global_step in pause_at and on_pause is not None:
            tally.stop_clock()
            stop = on_pause(global_step, tally.stats())
            model.train()
            tally.reset()
            if stop:
                break
        if global_step >= last:
            break
    tally.stop_clock()
    if progress is not None:
        progress.remove_task(task)
    return tally.stats()


def _one_step(
    step: TrainingStep,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: BatchTransform,
    generator: torch.Generator,
    global_step: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimiser step; returns the logits (B, C), the loss and the labels accuracy counts."""
    step.scheduler.step_update(global_step)
    if step.mix is None:
        x = _to_input(images, transform, step.runtime, generator)
        targets = labels  # (B,)
    else:
        # labels becomes the dominant label of each mixed image: accuracy is counted on it.
        x, targets, labels = _mixed_input(
            images, labels, transform, step.mix, step.runtime, generator
        )
    with step.runtime.autocast_context():
        logits = step.model(x)  # (B, num_classes)
    loss = step.loss_fn(logits, targets)
    step.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if step.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(step.model.parameters(), step.grad_clip)
    step.optimizer.step()
    if step.ema is not None:
        step.ema.update(unwrap(step.model), step=global_step)
    return logits, loss, labels


def _show_rate(
    progress: Progress | None, task, done: int, loss_sum: float, images: int, tally: Tally
) -> None:
    if progress is None:
        return
    rate = images / max(tally.seconds + time.perf_counter() - tally.started, 1e-9)
    loss = loss_sum / max(images, 1)
    progress.update(task, completed=done, rate=f"{rate:,.0f} img/s  loss {loss:.3f}")


def _check_finite(loss_sum: float, step: int) -> None:
    """Raise :class:`DivergedError` on a non-finite loss (summed over every process, so that
    they all stop at the same step)."""
    if not math.isfinite(loss_sum):
        raise DivergedError(f"training loss became {loss_sum} at step {step}")


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
