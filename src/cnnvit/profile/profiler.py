"""The efficiency profile of a model: cost, speed, memory, load and compile time, size sweep.

:func:`profile_model` measures one model (by name, from a weights file, or a module given);
:func:`profile_run` one run folder's trained model; :func:`profile_sizes` how cost grows with the
image size. What to measure and how is one :class:`cnnvit.config.ProfileConfig`; the results are
:mod:`cnnvit.profile.record`'s ``ModelProfile`` (table, JSON).

Order of the measurements on one model: load (construct + load weights + move to the device,
timed), cost (parameters, size on disk, FLOPs at batch 1), compile (the first call of the
compiled model), latency at batch 1, inference throughput at batch N with its peak memory, a
training step at batch N with its peak memory, then the image-size sweep, which builds a fresh
model of the same architecture (random weights: cost does not depend on their values) at each
size and runs it eager (compiling once per size would take minutes).
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from rich.progress import Progress

from cnnvit.config import FreezeConfig, ProfileConfig, read_run_config
from cnnvit.folders import RunFolder
from cnnvit.models.registry import UnknownModelError, create_model
from cnnvit.models.surgery import freeze_all_but_last_blocks
from cnnvit.models.weights import read_preprocessing
from cnnvit.profile.cost import count_flops, measure_cost, save_weights
from cnnvit.profile.export import (
    MissingOnnxError,
    exportable_from_module,
    exportable_from_run,
    require_onnx,
)
from cnnvit.profile.record import Deployment, ModelProfile, SizePoint
from cnnvit.profile.speed import (
    RepeatPlan,
    forward_step,
    measure_latency,
    measure_memory,
    measure_throughput,
    measure_training,
    random_batch,
    time_repeats,
)
from cnnvit.runtime import Clock, Runtime, device_name, release_cached_memory, resolve_runtime
from cnnvit.ui import console, progress_bar

__all__ = [
    "DEFAULT_SIZES",
    "profile_model",
    "profile_run",
    "profile_sizes",
    "require_runtimes",
]

DEFAULT_SIZES = (32, 64, 128, 224, 384)


# --- one model ----------------------------------------------------------------------------------


def profile_model(
    name: str | None = None,
    config: ProfileConfig | None = None,
    *,
    model: nn.Module | None = None,
    weights: str | Path | None = None,
    label: str | None = None,
    num_classes: int = 1000,
    in_chans: int = 3,
    model_kwargs: Mapping[str, Any] | None = None,
    freeze: FreezeConfig | None = None,
    progress: bool = True,
    clock: Clock | None = None,
) -> ModelProfile:
    """Measure one model as ``config`` says (defaults: :class:`cnnvit.config.ProfileConfig`);
    see the module docstring for what and in which order.

    Args:
        name: a timm model name or cnnvit built-in, created through
            :func:`cnnvit.models.create_model` (unknown names raise its
            :class:`~cnnvit.models.UnknownModelError`). Optional when ``model`` is given (then
            it names the architecture for the sweep; by default the model's
            ``pretrained_cfg['architecture']``).
        model: a module to measure instead of creating one; it is copied, never changed. No
            load time is measured for it; its ``num_classes`` attribute (timm models have one)
            overrides ``num_classes``.
        weights: a weights file (or Hugging Face ViT folder) to load into ``name``; without it
            the model's random initial weights are written to a temporary safetensors file and
            loaded back, so that the load time is always construct + read + load.
        label: the name shown in tables (default: ``name``).
        num_classes, in_chans: the model's head and input channels (the input side is the
            config's ``image_size``, 224 when it gives none).
        model_kwargs: extra constructor arguments (``drop_path_rate``...).
        freeze: freeze all but the last blocks, as a run does
            (:func:`cnnvit.models.freeze_all_but_last_blocks`).
        progress: show a progress bar.
        clock: the timer (default: the runtime's); tests inject a fake one.
    """
    config = config or ProfileConfig()
    if model is None and name is None:
        raise ValueError("profile_model needs a model name or a model")
    if model is not None and weights is not None:
        raise ValueError("weights= loads into a model created by name; not with model=")
    if config.compile and config.warmup < 1:
        raise ValueError("compiling needs warmup >= 1 (the first call compiles)")
    architecture = name or _architecture(model)
    if config.sizes and architecture is None:
        raise ValueError("the image-size sweep needs the model's architecture name: pass name=")
    require_runtimes(config)
    runtime = resolve_runtime(config)
    target = _Target(
        name=name,
        model=model,
        weights=weights,
        label=label or architecture or type(model).__name__,
        architecture=architecture,
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=config.image_size or 224,
        model_kwargs=dict(model_kwargs or {}),
        freeze=freeze or FreezeConfig(),
    )
    with runtime.threads_applied(), progress_bar(progress) as bar:
        steps = 5 + bool(config.compile) + len(config.sizes or ())
        steps += "onnxruntime" in config.runtimes
        phases = _Phases(bar, target.label, steps)
        found = _measure(target, config, runtime, clock or runtime.clock(), phases)
        if "onnxruntime" in config.runtimes:
            phases.next("onnxruntime")
            found = _with_deployment(found, lambda: _deployment(target, config, found))
        phases.done()
    return found


def _with_deployment(found: ModelProfile, measure: Callable[[], Deployment]) -> ModelProfile:
    """``found`` with its deployment profile; where export or ONNX Runtime fails (an op the
    exporter cannot take), the eager figures are kept and the failure is a note."""
    try:
        deployment = measure()
    except MissingOnnxError:
        raise
    except Exception as exc:  # the eager figures must not be lost with it
        failed = f"deployment profile failed: {type(exc).__name__}: {str(exc)[:300]}"
        return replace(found, notes=[*found.notes, failed])
    return replace(found, deployment=deployment)


def require_runtimes(config: ProfileConfig) -> None:
    """Refuse before measuring anything when an asked-for runtime is not installed."""
    if "onnxruntime" in config.runtimes:
        for module in ("onnx", "onnxscript", "onnxruntime"):
            require_onnx(module)


def _deployment(target: _Target, config: ProfileConfig, found: ModelProfile) -> Deployment:
    """The model exported to ONNX and measured in ONNX Runtime on the CPU, with the threads the
    eager figures used (:func:`cnnvit.profile.onnx_runtime.measure_deployment`)."""
    from cnnvit.profile.onnx_runtime import measure_deployment  # onnx is an extra

    if target.model is not None:
        net = copy.deepcopy(target.model).cpu()
    else:
        assert target.name is not None
        torch.manual_seed(0)  # the random weights _load measured, where no file is given
        with _quiet():
            net = _create(target, weights=target.weights)
    prep = read_preprocessing(target.weights) if target.weights is not None else None
    exportable = exportable_from_module(
        net,
        image_size=target.image_size,
        in_chans=target.in_chans,
        label=target.label,
        preprocessing=prep,
    )
    with tempfile.TemporaryDirectory(prefix="cnnvit-onnx-") as tmp:
        return measure_deployment(exportable, config, Path(tmp), threads=found.threads)


@dataclass(frozen=True)
class _Target:
    """What a profile measures: a model by name (or a module given), its head and input."""

    name: str | None
    model: nn.Module | None
    weights: str | Path | None
    label: str
    architecture: str | None
    num_classes: int
    in_chans: int
    image_size: int
    model_kwargs: dict[str, Any]
    freeze: FreezeConfig


class _Phases:
    """The progress bar's task for one model: one step per phase measured."""

    def __init__(self, bar: Progress | None, label: str, steps: int) -> None:
        self.bar = bar
        self.task = bar.add_task(label, total=steps, rate="load") if bar else None

    def next(self, phase: str) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, advance=1, rate=phase)

    def done(self) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.remove_task(self.task)  # inside a caller's display, models do not pile up


def _measure(
    target: _Target, config: ProfileConfig, runtime: Runtime, clock: Clock, phases: _Phases
) -> ModelProfile:
    """Load (or copy), cost, compile, latency, throughput, training step, sweep: in order."""
    notes: list[str] = []
    size, chans = target.image_size, target.in_chans
    plan = RepeatPlan(warmup=config.warmup, repeats=config.repeats, target_s=config.target_s)
    threads_used, where = torch.get_num_threads(), device_name(runtime.device)
    with tempfile.TemporaryDirectory(prefix="cnnvit-prof-") as tmp:
        net, load_s, disk, num_classes = _model_on_device(target, runtime, clock, Path(tmp), notes)
    phases.next("cost")
    cost = measure_cost(net, size, chans, disk_bytes=disk)
    phases.next("compile" if config.compile else "latency")
    runner = runtime.compiled(net)
    compile_s = None
    if config.compile:
        net.eval()
        first = clock.read()
        forward_step(runner, random_batch(runtime, 1, chans, size), runtime)()
        compile_s = clock.read() - first
        phases.next("latency")
    latency = measure_latency(
        runner, runtime, image_size=size, in_chans=chans, clock=clock, plan=plan
    )
    phases.next("throughput")
    shape = dict(batch_size=config.batch_size, image_size=size, in_chans=chans)
    infer, memory_infer = measure_throughput(runner, runtime, **shape, clock=clock, plan=plan)
    phases.next("train")
    train_timing, memory_train = None, None
    if config.train:
        try:
            train_timing, memory_train = measure_training(
                runner, runtime, **shape, num_classes=num_classes, clock=clock, plan=plan
            )
        except ValueError as exc:  # nothing trainable
            notes.append(f"no training step: {exc}")
    del runner, net  # the sweep's first memory measurement collects what is left
    phases.next("sweep")
    sweep = _target_sweep(target, config, runtime, clock, num_classes, phases, notes)
    repeats = {"latency": len(latency.seconds), "throughput": len(infer.seconds)}
    if train_timing is not None:
        repeats["train"] = len(train_timing.seconds)
    return ModelProfile(
        model=target.label,
        architecture=target.architecture,
        weights=str(target.weights) if target.weights is not None else None,
        device=str(runtime.device),
        device_name=where,
        torch_version=torch.__version__,
        dtype=runtime.precision,
        channels_last=runtime.channels_last,
        compiled=config.compile,
        batch_size=config.batch_size,
        image_size=size,
        in_chans=chans,
        num_classes=num_classes,
        threads=threads_used,
        cost=cost,
        latency_ms=latency.spread.scaled(1000.0),
        throughput=infer.rate(config.batch_size),
        train_throughput=train_timing.rate(config.batch_size) if train_timing else None,
        memory_infer=memory_infer,
        memory_train=memory_train,
        load_s=load_s,
        compile_s=compile_s,
        repeats=repeats,
        warmup=config.warmup,
        sweep=sweep,
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        notes=notes,
    )


def _model_on_device(
    target: _Target, runtime: Runtime, clock: Clock, tmp: Path, notes: list[str]
) -> tuple[nn.Module, float | None, int | None, int]:
    """The model to measure on the device (frozen and laid out as asked), its load time and
    file size (None for a module given), and its class count."""
    num_classes = target.num_classes
    if target.model is not None:
        net = copy.deepcopy(target.model).to(runtime.device)
        num_classes = int(getattr(target.model, "num_classes", num_classes))
        load_s, disk = None, None
        notes.append("model given as a module: no load time")
    else:
        assert target.name is not None
        net, load_s, disk = _load(target, runtime, clock, tmp / "model.safetensors")
    freeze = target.freeze
    if freeze.trainable_blocks is not None or freeze.also_trainable:
        freeze_all_but_last_blocks(
            net, freeze.trainable_blocks, also_trainable=freeze.also_trainable
        )
    if runtime.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net, load_s, disk, num_classes


def _target_sweep(
    target: _Target,
    config: ProfileConfig,
    runtime: Runtime,
    clock: Clock,
    num_classes: int,
    phases: _Phases,
    notes: list[str],
) -> list[SizePoint]:
    if not config.sizes:
        return []
    assert target.architecture is not None  # profile_model checked it
    notes.append("sweep: fresh random-weight models, eager (not compiled), batch 1")
    plan = RepeatPlan(warmup=config.warmup, repeats=config.repeats, target_s=config.target_s / 2)
    return _sweep(
        target.architecture,
        config.sizes,
        runtime=runtime,
        num_classes=num_classes,
        in_chans=target.in_chans,
        model_kwargs=target.model_kwargs,
        clock=clock,
        plan=plan,
        on_size=lambda s: phases.next(f"size {s}"),
    )


def _architecture(model: nn.Module | None) -> str | None:
    cfg = getattr(getattr(model, "_orig_mod", model), "pretrained_cfg", None) or {}
    return cfg.get("architecture")


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the registry's load-report line (for the temporary file only)."""
    before = console.quiet
    console.quiet = True
    try:
        yield
    finally:
        console.quiet = before


def _create(target: _Target, **extra: Any) -> nn.Module:
    assert target.name is not None
    return create_model(
        target.name,
        num_classes=target.num_classes,
        in_chans=target.in_chans,
        img_size=target.image_size,
        **target.model_kwargs,
        **extra,
    )


def _load(
    target: _Target, runtime: Runtime, clock: Clock, file: Path
) -> tuple[nn.Module, float, int]:
    """The model loaded from its weights (or its own random weights, saved to ``file`` first),
    the load time, and the size of its safetensors file."""
    assert target.name is not None

    def create(**extra: Any) -> nn.Module:
        return _create(target, **extra)

    def timed(source: str | Path) -> tuple[nn.Module, float]:
        start = clock.read()
        net = create(weights=source).to(runtime.device)
        return net, clock.read() - start

    if target.weights is None:
        torch.manual_seed(0)
        disk = save_weights(create(), file)  # the random model is dropped right away
        release_cached_memory(runtime.device)
        with _quiet():
            net, load_s = timed(file)
    else:
        net, load_s = timed(target.weights)
        disk = save_weights(net, file)
    return net, load_s, disk


# --- image-size sweep ---------------------------------------------------------------------------


def profile_sizes(
    name: str,
    sizes: Sequence[int] = DEFAULT_SIZES,
    config: ProfileConfig | None = None,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    model_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    clock: Clock | None = None,
) -> list[SizePoint]:
    """MACs, batch-1 latency and its peak memory of ``name`` at each image size, timed as
    ``config`` says (half its ``target_s`` per size, as in a full profile's sweep).

    Each size gets a fresh model with random weights (``img_size`` reaches the models that take
    it: ViTs size their position embedding from it). A size the model cannot take (patches that
    do not tile it, a feature map shrunk to nothing) gives a point with ``error`` set.
    """
    config = config or ProfileConfig()
    runtime = resolve_runtime(config)
    plan = RepeatPlan(warmup=config.warmup, repeats=config.repeats, target_s=config.target_s / 2)
    with runtime.threads_applied(), progress_bar(progress) as bar:
        task = bar.add_task(f"{name} sizes", total=len(sizes), rate="") if bar else None
        return _sweep(
            name,
            sizes,
            runtime=runtime,
            num_classes=num_classes,
            in_chans=in_chans,
            model_kwargs=dict(model_kwargs or {}),
            clock=clock or runtime.clock(),
            plan=plan,
            on_size=lambda s: bar.update(task, advance=1, rate=f"{s} px") if bar else None,
        )


def _sweep(
    name: str,
    sizes: Sequence[int],
    *,
    runtime: Runtime,
    num_classes: int,
    in_chans: int,
    model_kwargs: dict[str, Any],
    clock: Clock,
    plan: RepeatPlan,
    on_size: Callable[[int], object],
) -> list[SizePoint]:
    points = []
    for size in sizes:
        points.append(
            _size_point(name, int(size), runtime, num_classes, in_chans, model_kwargs, clock, plan)
        )
        on_size(size)
    return points


def _size_point(
    name: str,
    size: int,
    runtime: Runtime,
    num_classes: int,
    in_chans: int,
    model_kwargs: dict[str, Any],
    clock: Clock,
    plan: RepeatPlan,
) -> SizePoint:
    try:
        torch.manual_seed(0)
        net = create_model(
            name, num_classes=num_classes, in_chans=in_chans, img_size=size, **model_kwargs
        ).to(runtime.device)
        if runtime.channels_last:
            net = net.to(memory_format=torch.channels_last)
        net.eval()
        flops = count_flops(net, size, in_chans)
        x = random_batch(runtime, 1, in_chans, size)
        timing, memory = measure_memory(
            runtime.device, lambda: time_repeats(forward_step(net, x, runtime), clock, plan)
        )
    except UnknownModelError:
        raise  # an unknown name is the caller's mistake, not this size's
    except (ValueError, RuntimeError, AssertionError) as exc:
        return SizePoint(image_size=size, error=f"{type(exc).__name__}: {exc}")
    return SizePoint(
        image_size=size,
        macs=flops.macs,
        flops=flops.flops,
        latency_ms=timing.spread.scaled(1000.0),
        memory=memory,
    )


# --- run folders --------------------------------------------------------------------------------


def profile_run(
    run_dir: str | Path,
    config: ProfileConfig | None = None,
    *,
    label: str | None = None,
    progress: bool = True,
    clock: Clock | None = None,
) -> ModelProfile:
    """Profile the trained model of a run folder (its latest checkpoint; the EMA if it kept one).

    The architecture, constructor arguments, frozen blocks and input channels come from the
    run's ``config.yaml``, the classes and image size from its ``results.json`` (an
    ``image_size`` in ``config`` overrides the run's).

    Raises:
        RunFolderError: not a run folder, or no checkpoint in it (a FileNotFoundError).
    """
    folder = RunFolder(run_dir)
    folder.require(checkpoint=True)
    cfg = read_run_config(folder.config)
    info = folder.read_results() or {}
    config = config or ProfileConfig()
    require_runtimes(config)
    if config.image_size is None:
        config = config.model_copy(update={"image_size": int(info["image_size"])})
    eager = [r for r in config.runtimes if r != "onnxruntime"]  # ONNX below, on the test split
    found = profile_model(
        cfg.model.name,
        config.model_copy(update={"runtimes": eager}),
        weights=folder.evaluated_weights(),
        label=label or f"{cfg.model.name} ({folder.name})",
        num_classes=int(info["num_classes"]),
        in_chans=cfg.data.channels,
        model_kwargs=cfg.model.kwargs,
        freeze=cfg.model.freeze,
        progress=progress,
        clock=clock,
    )
    if "onnxruntime" not in config.runtimes:
        return found
    from cnnvit.profile.onnx_runtime import measure_deployment  # onnx is an extra

    def measure() -> Deployment:
        with tempfile.TemporaryDirectory(prefix="cnnvit-onnx-") as tmp:
            return measure_deployment(
                exportable_from_run(folder.path),
                config,
                Path(tmp),
                threads=found.threads,
                test_run=folder.path,
            )

    return _with_deployment(found, measure)
