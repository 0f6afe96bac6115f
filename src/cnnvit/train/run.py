"""``cnnvit train``: one model, one dataset, one run folder.

The run folder (:class:`cnnvit.folders.RunFolder`) is the interface to every later stage: the
resolved config, the environment, the epoch log, the checkpoints, results.json (status and
summary figures, the model's family, and ``evaluated_weights``: whether validation and the final
evaluation used the live weights or their EMA), the skipped files and the final evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3

from cnnvit.config import RunConfig, read_run_config
from cnnvit.data.mix import BatchMix
from cnnvit.data.pipeline import PreparedData
from cnnvit.folders import RunFolder, RunFolderError
from cnnvit.metrics import write_evaluation
from cnnvit.models import count_parameters, model_family
from cnnvit.runtime import PeakMemory, Runtime, capture_environment, num_threads
from cnnvit.train.assemble import assemble
from cnnvit.train.checkpoint import load_checkpoint, save_checkpoint
from cnnvit.train.loop import (
    DivergedError,
    TrainingStep,
    make_loss,
    predict_logits,
    train_one_epoch,
)
from cnnvit.train.optim import build_optimizer, build_scheduler, current_lr
from cnnvit.ui import console, progress_bar

EPOCH_COLUMNS = [
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "epoch_seconds",
    "images_per_second",
    "peak_memory_mb",
]


@dataclass
class Session:
    """The live objects of one run."""

    cfg: RunConfig
    folder: RunFolder
    runtime: Runtime
    data: PreparedData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    ema: ModelEmaV3 | None = None  # EMA of the weights; validated instead of the model
    start_epoch: int = 1
    history: list[dict] = field(default_factory=list)
    last_val: tuple[torch.Tensor, torch.Tensor] | None = None  # logits (N, C), labels (N,)


# --- public entry points ------------------------------------------------------------------


def train(cfg: RunConfig) -> dict:
    """Train a new run into ``cfg.output.dir``; returns the content of results.json."""
    if cfg.output.dir is None:
        cfg = cfg.model_copy(deep=True)
        cfg.output.dir = default_run_dir(cfg)
    folder = RunFolder(cfg.output.dir)
    if folder.holds_run():
        raise RunFolderError(
            f"{folder.path} already holds a run; continue it with `cnnvit train --resume "
            f"{folder.path}` or choose another --out"
        )
    return _run(cfg, folder, resume=False)


def resume(run_dir: Path) -> dict:
    """Continue an interrupted run from its last complete epoch, with its saved config."""
    folder = RunFolder(run_dir)
    folder.require(results=False)
    return _run(read_run_config(folder.config), folder, resume=True)


def default_run_dir(cfg: RunConfig) -> Path:
    """runs/<model>-<dataset>-<YYYYmmdd-HHMMSS>, so that runs never collide by default."""
    dataset = cfg.data.spec.split(":", 1)[0]
    return Path("runs") / f"{cfg.model.name}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


# --- the run ------------------------------------------------------------------------------------


def _run(cfg: RunConfig, folder: RunFolder, *, resume: bool) -> dict:
    with num_threads(cfg.train.threads):
        return _run_session(cfg, folder, resume=resume)


def _run_session(cfg: RunConfig, folder: RunFolder, *, resume: bool) -> dict:
    session = _open_session(cfg, folder, resume=resume)
    results = _base_results(session)
    try:
        _train_epochs(session, results)
    except DivergedError as err:
        results.update(status="diverged", error=str(err))
        console.print(f"[red]diverged:[/] {err}; the last good checkpoint is kept in {folder.path}")
        return _finish(session, results)
    except BaseException as err:
        results.update(status="failed", error=f"{type(err).__name__}: {err}")
        _finish(session, results)
        raise
    metrics = _final_evaluation(session)
    results.update(
        status="completed",
        final_top1=metrics["top1"],
        final_top5=metrics["top5"],
        macro_f1=metrics["macro"]["f1"],
    )
    return _finish(session, results)


def _open_session(cfg: RunConfig, folder: RunFolder, *, resume: bool) -> Session:
    parts = assemble(cfg)
    runtime, data, model, generator = parts.runtime, parts.data, parts.model, parts.generator
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(
        optimizer, cfg.optim, steps_per_epoch=len(data.train), epochs=cfg.train.epochs
    )
    session = Session(cfg, folder, runtime, data, model, optimizer, scheduler, generator)
    if cfg.train.ema_decay is not None:
        # Built from the uncompiled model (compile wraps it below); same device and dtype.
        session.ema = ModelEmaV3(model, decay=cfg.train.ema_decay, use_warmup=cfg.train.ema_warmup)
    # Only now, with data and model known to be good, does the run folder appear.
    folder.path.mkdir(parents=True, exist_ok=True)
    console.print(f"run folder: {folder.path}")
    if resume:
        _restore(session)
    else:
        folder.write_config_data(cfg.model_dump(mode="json"))
        folder.write_environment(capture_environment(runtime, cfg.train.seed).to_dict())
    session.model = runtime.compiled(model)
    return session


def _restore(session: Session) -> None:
    folder = session.folder
    ckpt = load_checkpoint(folder.path)
    rows = folder.read_epochs()
    if ckpt is None:
        console.print(f"no checkpoint in {folder.path}: starting from epoch 1")
        folder.write_epochs(EPOCH_COLUMNS, [])
        return
    session.model.load_state_dict(ckpt.weights)
    if session.ema is not None:
        if ckpt.ema_weights is None:
            raise RunFolderError(f"{folder.path}: the config keeps an EMA, the checkpoint not")
        session.ema.module.load_state_dict(ckpt.ema_weights)
    session.optimizer.load_state_dict(ckpt.state["optimizer"])
    session.scheduler.load_state_dict(ckpt.state["scheduler"])
    session.generator.set_state(ckpt.state["generator"])
    torch.set_rng_state(ckpt.state["torch_rng"])
    if "cuda_rng" in ckpt.state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt.state["cuda_rng"])
    # Rows written after the checkpoint (a crash between the two) are dropped and re-run.
    session.history = [r for r in rows if int(r["epoch"]) <= ckpt.epoch]
    folder.write_epochs(EPOCH_COLUMNS, session.history)
    session.start_epoch = ckpt.epoch + 1
    console.print(f"resuming {folder.path} after epoch {ckpt.epoch}")


def _train_epochs(s: Session, results: dict) -> None:
    cfg = s.cfg
    loss_fn, val_loss_fn = make_loss(cfg.optim.label_smoothing), make_loss(0.0)
    mix = BatchMix.from_config(
        s.data.train_transform.augment, s.data.num_classes, cfg.optim.label_smoothing
    )
    step = TrainingStep(
        s.model, s.optimizer, s.scheduler, loss_fn, s.runtime, cfg.optim.grad_clip, mix, s.ema
    )
    peak = PeakMemory(s.runtime.device)
    steps = len(s.data.train)
    s.folder.write_results(results)
    for epoch in range(s.start_epoch, cfg.train.epochs + 1):
        peak.reset()
        with progress_bar(cfg.train.progress) as progress:
            stats = train_one_epoch(
                step,
                s.data.train,
                s.data.train_transform,
                generator=s.generator,
                first_step=(epoch - 1) * steps,
                progress=progress,
                label=f"epoch {epoch}/{cfg.train.epochs}",
            )
            logits, labels = _validate(s, progress)
        row = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_acc": stats.accuracy,
            "val_loss": val_loss_fn(logits, labels).item(),
            "val_acc": (logits.argmax(1) == labels).float().mean().item(),
            "lr": current_lr(s.optimizer),
            "epoch_seconds": stats.seconds,
            "images_per_second": stats.images_per_second,
            "peak_memory_mb": peak.peak_mb(),
        }
        s.history.append(row)
        s.last_val = (logits, labels)
        s.folder.write_epochs(EPOCH_COLUMNS, s.history)
        if cfg.output.checkpoint:
            ema_model = s.ema.module if s.ema is not None else None
            save_checkpoint(s.folder.path, epoch, s.model, _training_state(s, epoch), ema_model)
        _print_epoch(row, cfg.train.epochs)
        results.update(_summary(s))
        s.folder.write_results(results)


def _training_state(s: Session, epoch: int) -> dict:
    state = {
        "epoch": epoch,
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict(),
        "generator": s.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    if s.runtime.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _final_evaluation(s: Session) -> dict:
    """Metrics of the final weights: the last epoch's validation pass, or a new one on resume."""
    if s.last_val is not None:
        logits, labels = s.last_val
    else:
        with progress_bar(s.cfg.train.progress) as progress:
            logits, labels = _validate(s, progress)
    probs = torch.softmax(logits.float(), dim=1).numpy()  # (N, C)
    return write_evaluation(s.folder.path, probs, labels.numpy(), s.data.classes)


def _validate(s: Session, progress) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) and labels (N,) of the validation split, with the evaluated weights."""
    return predict_logits(
        _evaluated(s), s.data.val, s.data.eval_transform, runtime=s.runtime, progress=progress
    )


def _evaluated(s: Session) -> torch.nn.Module:
    """The weights that validation and the final evaluation use: the EMA when there is one."""
    return s.ema.module if s.ema is not None else s.model


# --- results and logs ---------------------------------------------------------------------------


def _base_results(s: Session) -> dict:
    total, trainable = count_parameters(s.model)
    return {
        "status": "running",
        "model": s.cfg.model.name,
        "family": model_family(s.model),
        "data": s.cfg.data.spec,
        "train_fraction": s.cfg.data.train_fraction,
        "trainable_blocks": s.cfg.model.freeze.trainable_blocks,
        "seed": s.cfg.train.seed,
        "num_classes": s.data.num_classes,
        "num_train_images": s.data.train.num_images,
        "num_val_images": s.data.val.num_images,
        "image_size": s.data.image_size,
        "in_memory": s.data.in_memory,
        "params_total": total,
        "params_trainable": trainable,
        "epochs_planned": s.cfg.train.epochs,
        "evaluated_weights": "ema" if s.ema is not None else "model",
        **_summary(s),
    }


def _summary(s: Session) -> dict:
    h = s.history
    skipped = s.data.all_skipped()
    s.folder.write_skipped([(f.path, f.reason) for f in skipped])
    if not h:
        return {"epochs_completed": 0, "skipped_files": len(skipped)}
    best = max(h, key=lambda r: float(r["val_acc"]))
    seconds = [float(r["epoch_seconds"]) for r in h]
    return {
        "epochs_completed": int(h[-1]["epoch"]),
        "best_val_acc": float(best["val_acc"]),
        "best_epoch": int(best["epoch"]),
        "final_val_acc": float(h[-1]["val_acc"]),
        "mean_epoch_seconds": sum(seconds) / len(seconds),
        "train_seconds": sum(seconds),
        "peak_memory_mb": max(float(r["peak_memory_mb"]) for r in h),
        "skipped_files": len(skipped),
    }


def _finish(s: Session, results: dict) -> dict:
    results.update(finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    s.folder.write_results(results)
    return results


def _print_epoch(row: dict, epochs: int) -> None:
    console.print(
        f"epoch {row['epoch']}/{epochs}"
        f"  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
        f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  lr {row['lr']:.2e}"
        f"  {row['epoch_seconds']:.1f}s  {row['images_per_second']:,.0f} img/s"
        f"  peak {row['peak_memory_mb']:,.0f} MB",
        soft_wrap=True,
    )
