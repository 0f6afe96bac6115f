"""``cnnvit train``: one model, one dataset, one run folder.

The run folder (:class:`cnnvit.folders.RunFolder`) is the interface to every later stage: the
resolved config, the environment, the log of selection scores, the checkpoints, results.json
(status and summary figures, the model's family, the budget and the steps taken, whether the
run was still improving when it stopped, and ``evaluated_weights``: the live weights, their EMA,
or the best selection score's under early stopping), the skipped files and the final evaluation.

Three splits (:mod:`cnnvit.data.splits`): the model trains on its fraction of the training
pool; the selection split is scored during training (the log, the best score, early stopping);
the test split is read once, by the final evaluation, and gives every reported number.

Several processes (``train.nproc``, or torchrun): :mod:`cnnvit.train.distributed` says what they
share; here, rank 0 alone holds the lock, scores and writes, and the others train their share.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.utils import ModelEmaV3

from cnnvit.config import RunConfig, read_run_config, resumed_config
from cnnvit.data.mix import BatchMix
from cnnvit.data.pipeline import PreparedData
from cnnvit.folders import RunFolder, RunFolderError
from cnnvit.metrics import write_evaluation
from cnnvit.models import count_parameters, model_family
from cnnvit.presets import deep_merge
from cnnvit.runtime import PeakMemory, Runtime, capture_environment, num_threads
from cnnvit.stats.convergence import still_improving
from cnnvit.train.assemble import assemble
from cnnvit.train.budget import BestWeights, Plan, best_in, evaluations_since_best, plan_budget
from cnnvit.train.checkpoint import load_checkpoint, save_checkpoint, weights_metadata
from cnnvit.train.distributed import (
    DistributedError,
    World,
    check_processes,
    joined,
    launch_run,
    launches,
    one_writer,
    torchrun_processes,
    unwrap,
)
from cnnvit.train.loop import (
    DivergedError,
    EpochStats,
    Tally,
    TrainingStep,
    make_loss,
    predict_logits,
    train_one_epoch,
)
from cnnvit.train.optim import build_optimizer, build_scheduler, current_lr
from cnnvit.train.trackers import Trackers, open_trackers, require_trackers
from cnnvit.ui import console, progress_bar

# One row per selection score: after every epoch (budget `epochs`), or at evenly spaced steps.
# The train columns cover the steps since the previous row; `seconds` is their training time.
EPOCH_COLUMNS = [
    "epoch",
    "step",
    "train_loss",
    "train_acc",
    "selection_loss",
    "selection_acc",
    "lr",
    "seconds",
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
    plan: Plan
    ema: ModelEmaV3 | None = None  # EMA of the weights; scored instead of the model
    start_epoch: int = 1
    history: list[dict] = field(default_factory=list)
    best: BestWeights = field(default_factory=BestWeights)
    stopped_early: bool = False
    world: World = field(default_factory=World)  # this process among the run's
    augment: torch.Generator | None = None  # augmentation's and mixing's (this process's own)
    trackers: Trackers = field(default_factory=Trackers)  # output.loggers (rank 0's alone)


# Which split each number of results.json comes from.
SPLITS = {
    "train": "the cell's fraction of the training pool",
    "selection": "held out of the training pool; scored during training (log, best score, early "
    "stopping, tuning)",
    "test": "the dataset's test split (or a hold-out of it where it has none); read once, for "
    "the final numbers",
}


# --- public entry points ------------------------------------------------------------------


def train(cfg: RunConfig) -> dict:
    """Train a new run into ``cfg.output.dir``; returns the content of results.json.

    With ``train.nproc`` > 1 this starts torchrun and returns what its processes wrote; inside
    torchrun, this process trains its share of the run (the others return a short status)."""
    require_trackers(cfg.output.loggers)  # a missing one is refused before anything starts
    if launches(cfg.train.nproc):
        cfg = cfg.model_copy(deep=True)
        cfg.output.dir = cfg.output.dir or default_run_dir(cfg)
        return launch_run(cfg, RunFolder(cfg.output.dir), new=True)
    with joined(cfg.train.device) as world:
        cfg = _as_run_by(cfg, world)
        folder = RunFolder(cfg.output.dir)
        with one_writer(folder, world, new=True):
            return _run(cfg, folder, world, resume=False)


def resume(
    run_dir: Path, overrides: list[str] | None = None, *, values: dict[str, Any] | None = None
) -> dict:
    """Continue an interrupted run from its last complete epoch, with its saved config
    (``overrides``/``values`` may change only how it is shown: :func:`resumed_config`), on as
    many processes as it started with."""
    folder = RunFolder(run_dir)
    folder.require(results=False)
    started = torchrun_processes()
    if started is not None:  # torchrun's processes: the run must have trained with as many
        values = deep_merge(values or {}, {"train": {"nproc": started}})
    cfg = resumed_config(read_run_config(folder.config), overrides, values=values, run_dir=run_dir)
    require_trackers(cfg.output.loggers)
    if launches(cfg.train.nproc):
        return launch_run(cfg, folder, new=False)
    with joined(cfg.train.device) as world, one_writer(folder, world, new=False):
        return _run(cfg, folder, world, resume=True)


def default_run_dir(cfg: RunConfig) -> Path:
    """runs/<model>-<dataset>-<YYYYmmdd-HHMMSS>, so that runs never collide by default."""
    dataset = cfg.data.spec.split(":", 1)[0]
    return Path("runs") / f"{cfg.model.name}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


# --- several processes ----------------------------------------------------------------------


def _as_run_by(cfg: RunConfig, world: World) -> RunConfig:
    """The config as these processes run it: ``train.nproc`` is their number (torchrun's, where
    the config leaves it at 1), the default run folder rank 0's name for it."""
    cfg = cfg.model_copy(deep=True)
    started = torchrun_processes()
    if started is not None:
        if cfg.train.nproc not in (1, started):
            raise DistributedError(
                f"train.nproc is {cfg.train.nproc}, but torchrun started {started} processes; "
                f"leave train.nproc out or set it to {started}"
            )
        cfg.train.nproc = started
    if cfg.output.dir is None:
        cfg.output.dir = world.broadcast(default_run_dir(cfg))
    return cfg


# --- the run ------------------------------------------------------------------------------------


def _run(cfg: RunConfig, folder: RunFolder, world: World, *, resume: bool) -> dict:
    with num_threads(cfg.train.threads):
        return _run_session(cfg, folder, world, resume=resume)


def _run_session(cfg: RunConfig, folder: RunFolder, world: World, *, resume: bool) -> dict:
    session = _open_session(cfg, folder, world, resume=resume)
    if not world.is_main:
        return _train_share(session)
    # A resumed run's trackers drop what was logged after its kept rows (0: all of it).
    last = int(session.history[-1]["step"]) if session.history else 0
    session.trackers = open_trackers(cfg, folder.path, last_step=last if resume else None)
    try:
        return _train_and_evaluate(session)
    finally:
        session.trackers.close("failed")  # where the run ended without _finish (none left else)


def _train_and_evaluate(session: Session) -> dict:
    results = _base_results(session)
    try:
        _train_epochs(session, results)
    except DivergedError as err:
        results.update(status="diverged", error=str(err))
        console.print(
            f"[red]diverged:[/] {err}; the last good checkpoint is kept in {session.folder.path}"
        )
        return _finish(session, results)
    except BaseException as err:
        results.update(status="failed", error=f"{type(err).__name__}: {err}")
        _record_failure(session, results)
        raise
    metrics = _final_evaluation(session)
    results.update(_summary(session))  # the test split's unreadable files are known only now
    results.update(
        status="completed",
        test_top1=metrics["top1"],
        test_top5=metrics["top5"],
        test_macro_f1=metrics["macro"]["f1"],
        test_ece=metrics.get("ece"),
        stopped_early=session.stopped_early,
        convergence=_convergence(session),
    )
    return _finish(session, results)


def _train_share(s: Session) -> dict:
    """A process other than rank 0: it trains its share of every batch, scores and writes
    nothing, and returns how training ended."""
    try:
        _train_epochs(s, None)
    except DivergedError:
        return {"status": "diverged", "rank": s.world.rank}
    return {"status": "completed", "rank": s.world.rank}


def _open_session(cfg: RunConfig, folder: RunFolder, world: World, *, resume: bool) -> Session:
    if world.distributed:
        assert world.device is not None
        check_processes(
            world.size, cfg.train.batch_size, sync_bn=cfg.train.sync_bn, device=world.device
        )
    parts = assemble(cfg, device=world.device)
    runtime, generator = parts.runtime, parts.generator
    data = world.shard(parts.data)  # this process's share of every batch
    model = world.batchnorm(parts.model, cfg.train.sync_bn)
    optimizer = build_optimizer(model, cfg.optim)
    plan = plan_budget(cfg.train.budget, epochs=cfg.train.epochs, steps_per_epoch=len(data.train))
    scheduler = build_scheduler(
        optimizer, cfg.optim, steps_per_epoch=plan.steps_per_epoch, total_steps=plan.total_steps
    )
    session = Session(cfg, folder, runtime, data, model, optimizer, scheduler, generator, plan)
    session.world = world
    session.augment = world.own_generator(cfg.train.seed, generator)
    if cfg.train.ema_decay is not None:
        # Built from the uncompiled model (compile wraps it below); same device and dtype.
        session.ema = ModelEmaV3(model, decay=cfg.train.ema_decay, use_warmup=cfg.train.ema_warmup)
    console.print(f"run folder: {folder.path}")
    console.print(f"budget: {plan.describe()}")
    if world.distributed:
        share = cfg.train.batch_size // world.size
        console.print(f"{world.size} processes on {runtime.device.type}: {share} images each")
    if resume:
        _restore(session)
    elif world.is_main:
        folder.write_config_data(cfg.model_dump(mode="json"))
        folder.write_environment(capture_environment(runtime, cfg.train.seed).to_dict())
    # DDP inside torch.compile, as torch's DDP + compile notes ask.
    session.model = runtime.compiled(world.wrap(model))
    return session


def _restore(session: Session) -> None:
    folder = session.folder
    ckpt = load_checkpoint(folder.path)
    rows = folder.read_epochs()
    if ckpt is None:
        console.print(f"no checkpoint in {folder.path}: starting from epoch 1")
        if session.world.is_main:
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
    if session.world.distributed:
        _restore_process(session, ckpt.state)
    # Rows written after the checkpoint (a crash between the two) are dropped and re-run.
    session.history = [r for r in rows if int(r["epoch"]) <= ckpt.epoch]
    if session.world.is_main:
        folder.write_epochs(EPOCH_COLUMNS, session.history)
    if session.history:
        acc, step, epoch = best_in(session.history, session.plan.min_delta)
        session.best = BestWeights(acc, step, epoch, ckpt.best_weights)
    session.start_epoch = ckpt.epoch + 1
    console.print(f"resuming {folder.path} after epoch {ckpt.epoch}")


def _restore_process(s: Session, state: dict) -> None:
    """This process's own random streams, as the checkpoint kept them for every process."""
    processes = state.get("processes") or []
    if len(processes) != s.world.size:
        raise RunFolderError(
            f"{s.folder.path}: the checkpoint keeps the random streams of {len(processes)} "
            f"processes, not of {s.world.size}"
        )
    mine = processes[s.world.rank]
    assert s.augment is not None
    s.augment.set_state(mine["augment"])
    torch.set_rng_state(mine["torch_rng"])
    if "cuda_rng" in mine and s.runtime.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda_rng"], s.runtime.device)


def _train_epochs(s: Session, results: dict | None) -> None:
    """Train to the end of the plan; rank 0 passes ``results`` and writes them after every
    epoch, the other processes pass None."""
    cfg, plan = s.cfg, s.plan
    loss_fn = make_loss(cfg.optim.label_smoothing)
    mix = BatchMix.from_config(
        s.data.train_transform.augment, s.data.num_classes, cfg.optim.label_smoothing
    )
    step = TrainingStep(
        s.model, s.optimizer, s.scheduler, loss_fn, s.runtime, cfg.optim.grad_clip, mix, s.ema
    )
    peak = PeakMemory(s.runtime.device)
    # The steps since the last score, across epochs (and across the processes).
    tally = Tally(s.runtime.device, s.world.sum_ if s.world.distributed else None)
    if results is not None:
        s.folder.write_results(results)
    s.stopped_early = _patience_spent(s)
    for epoch in range(s.start_epoch, plan.epochs + 1):
        if s.stopped_early:
            break
        first, last = plan.epoch_steps(epoch)
        with progress_bar(_shows_progress(s)) as progress:

            def pause(global_step: int, stats: EpochStats, epoch: int = epoch) -> bool:
                stop = s.world.is_main and _score(s, epoch, global_step, stats, peak, progress)
                s.stopped_early = s.world.broadcast(stop)  # rank 0's decision, everywhere
                return s.stopped_early

            assert s.augment is not None
            train_one_epoch(
                step,
                s.data.train,
                s.data.train_transform,
                generator=s.augment,
                first_step=first,
                progress=progress,
                label=f"epoch {epoch}/{plan.epochs}",
                stop_at=last,
                pause_at=set(plan.evaluate_at),
                on_pause=pause,
                tally=tally,
            )
        # A checkpoint after every epoch that scored (and the last): a small training set runs
        # many epochs between two scores, and a resume replays from the last checkpoint anyway.
        scored = plan.scores_in(epoch)
        if cfg.output.checkpoint and (scored or epoch == plan.epochs or s.stopped_early):
            _save(s, epoch)
        if results is not None:
            results.update(_summary(s))
            s.folder.write_results(results)
    s.world.barrier()  # every process done with its collectives before any leaves


def _score(
    s: Session, epoch: int, global_step: int, stats: EpochStats, peak: PeakMemory, progress
) -> bool:
    """Score the selection split after ``global_step``, log it; True to stop (early stopping)."""
    logits, labels = predict_logits(
        _evaluated(s), s.data.selection, s.data.eval_transform, runtime=s.runtime, progress=progress
    )
    row = {
        "epoch": epoch,
        "step": global_step,
        "train_loss": stats.loss,
        "train_acc": stats.accuracy,
        "selection_loss": make_loss(0.0)(logits, labels).item(),
        "selection_acc": (logits.argmax(1) == labels).float().mean().item(),
        "lr": current_lr(s.optimizer),
        "seconds": stats.seconds,
        "images_per_second": stats.images_per_second,
        "peak_memory_mb": peak.peak_mb(),
    }
    peak.reset()
    s.history.append(row)
    s.folder.write_epochs(EPOCH_COLUMNS, s.history)
    s.trackers.log_row(row)
    keep = _evaluated(s) if s.plan.kind == "early_stopping" else None
    s.best.offer(row["selection_acc"], global_step, epoch, keep, s.plan.min_delta)
    _print_row(row, s.plan)
    s.stopped_early = _patience_spent(s)
    if s.stopped_early:
        console.print(
            f"early stopping at step {global_step:,}: no better selection score in "
            f"{s.plan.patience} scores since step {s.best.step:,}"
        )
    return s.stopped_early


def _patience_spent(s: Session) -> bool:
    if s.plan.patience is None or not s.history:
        return False
    return evaluations_since_best(s.history, s.best.step) >= s.plan.patience


def _save(s: Session, epoch: int) -> None:
    """Rank 0 writes the checkpoint, with every process's random streams where there are
    several (each sends its own: a collective)."""
    processes = s.world.gather(_process_state(s)) if s.world.distributed else None
    if not s.world.is_main:
        return
    ema_model = s.ema.module if s.ema is not None else None
    best = s.best.weights if s.plan.kind == "early_stopping" else None
    meta = weights_metadata(s.cfg.model.name, s.data)  # preprocessing + classes, in the files
    state = _training_state(s, epoch)
    if processes is not None:
        state["processes"] = processes
    save_checkpoint(s.folder.path, epoch, s.model, state, ema_model, best, metadata=meta)


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


def _process_state(s: Session) -> dict:
    """The random streams of this process alone: its augmentation and torch's generators."""
    assert s.augment is not None
    state = {"augment": s.augment.get_state(), "torch_rng": torch.get_rng_state()}
    if s.runtime.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(s.runtime.device)
    return state


def _final_evaluation(s: Session) -> dict:
    """Metrics on the test split (opened here, and only here) of the weights the run reports:
    the best selection score's under early stopping, else the last (their EMA where kept)."""
    model = _evaluated(s)
    if s.plan.kind == "early_stopping" and s.best.weights is not None:
        model.load_state_dict(s.best.weights)
    with progress_bar(_shows_progress(s)) as progress:
        logits, labels = predict_logits(
            model, s.data.open_test(), s.data.eval_transform, runtime=s.runtime, progress=progress
        )
    probs = torch.softmax(logits.float(), dim=1).numpy()  # (N, C)
    return write_evaluation(s.folder.path, probs, labels.numpy(), s.data.classes)


def _evaluated(s: Session) -> torch.nn.Module:
    """The weights that are scored: the EMA when there is one. With several processes, the
    model outside DDP: rank 0 scores alone, and DDP's forward would wait for the others."""
    if s.ema is not None:
        return s.ema.module
    return unwrap(s.model) if s.world.distributed else s.model


def _shows_progress(s: Session) -> bool:
    return s.cfg.train.progress and s.world.is_main


# --- results and logs ---------------------------------------------------------------------------


def _base_results(s: Session) -> dict:
    total, trainable = count_parameters(unwrap(s.model))
    return {
        "status": "running",
        "model": s.cfg.model.name,
        "family": model_family(unwrap(s.model)),
        "data": s.cfg.data.spec,
        "train_fraction": s.cfg.data.train_fraction,
        "trainable_blocks": s.cfg.model.freeze.trainable_blocks,
        "seed": s.cfg.train.seed,
        "num_classes": s.data.num_classes,
        "num_train_images": s.data.train.num_images,
        "num_selection_images": s.data.selection.num_images,
        "num_test_images": s.data.test.num_images,
        "splits": SPLITS,
        "image_size": s.data.image_size,
        "in_memory": s.data.in_memory,
        "params_total": total,
        "params_trainable": trainable,
        "budget": s.plan.to_dict(),
        "epochs_planned": s.plan.epochs,
        "evaluated_weights": _weights_word(s),
        **_summary(s),
    }


def _summary(s: Session) -> dict:
    h = s.history
    skipped = s.data.all_skipped()
    s.folder.write_skipped([(f.path, f.reason) for f in skipped])
    if not h:
        return {"epochs_completed": 0, "steps_completed": 0, "skipped_files": len(skipped)}
    seconds = sum(float(r["seconds"]) for r in h)
    steps = int(h[-1]["step"])
    epochs = steps / s.plan.steps_per_epoch
    return {
        "steps_completed": steps,
        "epochs_completed": round(epochs, 3),
        "best_selection_acc": s.best.accuracy,
        "best_step": s.best.step,
        "best_epoch": s.best.epoch,
        "final_selection_acc": float(h[-1]["selection_acc"]),
        "mean_epoch_seconds": seconds / epochs,
        "train_seconds": seconds,
        "peak_memory_mb": max(float(r["peak_memory_mb"]) for r in h),
        "skipped_files": len(skipped),
    }


def _convergence(s: Session) -> dict:
    """Whether the selection score was still rising when training stopped (the last quarter's
    gain against its noise; :mod:`cnnvit.stats.convergence`)."""
    steps = [float(r["step"]) for r in s.history]
    accuracy = [float(r["selection_acc"]) for r in s.history]
    return asdict(still_improving(steps, accuracy, s.data.selection.num_images))


def _weights_word(s: Session) -> str:
    if s.plan.kind == "early_stopping":
        return "best_ema" if s.ema is not None else "best"
    return "ema" if s.ema is not None else "model"


def _finish(s: Session, results: dict) -> dict:
    results.update(finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    s.folder.write_results(results)
    step = int(s.history[-1]["step"]) if s.history else 0
    s.trackers.finish(results, s.folder.path, step)
    return results


def _record_failure(s: Session, results: dict) -> None:
    """results.json says ``failed`` and why, where the disk still takes it (a full disk may
    not: the error itself still reaches the user, and the last checkpoint is intact)."""
    try:
        _finish(s, results)
    except OSError as err:
        console.print(f"[red]could not record the failure in {s.folder.results}:[/] {err}")


def _print_row(row: dict, plan: Plan) -> None:
    console.print(
        f"epoch {row['epoch']}/{plan.epochs} step {row['step']:,}/{plan.total_steps:,}"
        f"  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
        f"  selection loss {row['selection_loss']:.4f} acc {row['selection_acc']:.4f}"
        f"  lr {row['lr']:.2e}  {row['seconds']:.1f}s  {row['images_per_second']:,.0f} img/s"
        f"  peak {row['peak_memory_mb']:,.0f} MB",
        soft_wrap=True,
    )
