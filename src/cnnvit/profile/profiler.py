"""The efficiency profile of a model: cost, speed, memory, load and compile time, size sweep.

:func:`profile_model` measures one model (by name, from a weights file, or a module given);
:func:`profile_run` one run folder's trained model; :func:`profile_sizes` how cost grows with the
image size. :func:`profile_table` prints profiles side by side, :func:`write_profiles_json`
keeps them, :func:`read_profiles_json` reads them back.

Order of the measurements on one model: load (construct + load weights + move to the device,
timed), cost (parameters, size on disk, FLOPs at batch 1), compile (the first call of the
compiled model), latency at batch 1, inference throughput at batch N with its peak memory, a
training step at batch N with its peak memory, then the image-size sweep, which builds a fresh
model of the same architecture (random weights: cost does not depend on their values) at each
size and runs it eager (compiling once per size would take minutes).
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from rich.table import Table

from cnnvit.config import read_run_config
from cnnvit.folders import RunFolder
from cnnvit.models.registry import ModelError, create_model
from cnnvit.models.surgery import freeze_all_but_last_blocks
from cnnvit.profile.cost import Cost, count_flops, measure_cost, save_weights
from cnnvit.profile.speed import (
    Clock,
    MemoryPeak,
    RepeatPlan,
    Spread,
    forward_step,
    measure_latency,
    measure_memory,
    measure_throughput,
    measure_training,
    random_batch,
    time_repeats,
)
from cnnvit.runtime import Runtime, device_name, release_cached_memory, resolve_device
from cnnvit.ui import console, progress_bar

__all__ = [
    "DEFAULT_SIZES",
    "ModelProfile",
    "SizePoint",
    "profile_model",
    "profile_rows",
    "profile_run",
    "profile_sizes",
    "profile_table",
    "read_profiles_json",
    "resolve_profile_runtime",
    "write_profiles_json",
]

DEFAULT_SIZES = (32, 64, 128, 224, 384)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16"}
JSON_FORMAT = "cnnvit-profile/1"


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizePoint:
    """One image size of the sweep: MACs, batch-1 latency and its peak memory."""

    image_size: int
    macs: int | None = None
    flops: int | None = None
    latency_ms: Spread | None = None  # batch 1
    memory: MemoryPeak | None = None  # over the batch-1 latency measurement
    error: str | None = None  # why this size could not be measured

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "macs": self.macs,
            "gmacs": self.macs / 1e9 if self.macs is not None else None,
            "flops": self.flops,
            "latency_ms": self.latency_ms.to_dict() if self.latency_ms else None,
            "memory": self.memory.to_dict() if self.memory else None,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: dict) -> SizePoint:
        return cls(
            image_size=d["image_size"],
            macs=d.get("macs"),
            flops=d.get("flops"),
            latency_ms=Spread.from_dict(d["latency_ms"]) if d.get("latency_ms") else None,
            memory=MemoryPeak.from_dict(d["memory"]) if d.get("memory") else None,
            error=d.get("error"),
        )


@dataclass(frozen=True)
class ModelProfile:
    """Everything measured on one model, with the conditions it was measured under.

    Units: latency in ms, throughput in images/s, memory in MiB (2**20 bytes), disk in MB
    (10**6 bytes, in ``cost``), times in s. ``repeats``: the timed calls behind each figure.
    """

    model: str  # what the user named: a model name, or a run folder
    architecture: str | None  # the timm / cnnvit name, when known
    weights: str | None  # the weights file or folder loaded, if any
    device: str
    device_name: str
    torch_version: str
    dtype: str  # fp32, or bf16 (autocast)
    channels_last: bool
    compiled: bool | str  # False, True (inductor) or the backend name
    batch_size: int
    image_size: int
    in_chans: int
    num_classes: int
    threads: int
    cost: Cost
    latency_ms: Spread  # batch 1, inference
    throughput: Spread  # images/s at batch_size, inference
    train_throughput: Spread | None  # images/s at batch_size, training step
    memory_infer: MemoryPeak  # over the batch-N inference measurement
    memory_train: MemoryPeak | None  # over the batch-N training measurement
    load_s: float | None  # construct + load weights + move to device; None: model given
    compile_s: float | None  # first call of the compiled model (compilation + one forward)
    repeats: dict[str, int]  # timed calls per measurement
    warmup: int  # untimed calls before each measurement
    sweep: list[SizePoint] = field(default_factory=list)
    measured_at: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["cost"] = self.cost.to_dict()
        d["latency_ms"] = self.latency_ms.to_dict()
        d["throughput"] = self.throughput.to_dict()
        d["train_throughput"] = self.train_throughput.to_dict() if self.train_throughput else None
        d["memory_infer"] = self.memory_infer.to_dict()
        d["memory_train"] = self.memory_train.to_dict() if self.memory_train else None
        d["sweep"] = [p.to_dict() for p in self.sweep]
        d["repeats"] = dict(self.repeats)
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelProfile:
        def opt(key: str, kind: Any) -> Any:
            return kind.from_dict(d[key]) if d.get(key) else None

        plain = {
            k: d[k]
            for k in cls.__dataclass_fields__
            if k
            not in {
                "cost",
                "latency_ms",
                "throughput",
                "train_throughput",
                "memory_infer",
                "memory_train",
                "sweep",
            }
        }
        return cls(
            **plain,
            cost=Cost.from_dict(d["cost"]),
            latency_ms=Spread.from_dict(d["latency_ms"]),
            throughput=Spread.from_dict(d["throughput"]),
            train_throughput=opt("train_throughput", Spread),
            memory_infer=MemoryPeak.from_dict(d["memory_infer"]),
            memory_train=opt("memory_train", MemoryPeak),
            sweep=[SizePoint.from_dict(p) for p in d.get("sweep", [])],
        )


# --- options ------------------------------------------------------------------------------------


def resolve_profile_runtime(
    device: str | torch.device = "auto", dtype: str = "fp32", channels_last: bool = False
) -> Runtime:
    """Device (``auto``: CUDA, then MPS, then CPU), autocast dtype and memory layout.

    Raises:
        ValueError: an unknown dtype, or a CUDA device asked for where none is visible.
    """
    key = _DTYPE_ALIASES.get(dtype, dtype)
    if key not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if isinstance(device, str) and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device} but no CUDA GPU is visible; use device=cpu")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return Runtime(device=dev, dtype=DTYPES[key], channels_last=channels_last)


def _dtype_name(runtime: Runtime) -> str:
    return next(k for k, v in DTYPES.items() if v == runtime.dtype)


def _plan(repeats: int | None, warmup: int, target_s: float) -> RepeatPlan:
    return RepeatPlan(warmup=warmup, repeats=repeats, target_s=target_s)


# --- one model ----------------------------------------------------------------------------------


def profile_model(
    name: str | None = None,
    *,
    model: nn.Module | None = None,
    weights: str | Path | None = None,
    label: str | None = None,
    num_classes: int = 1000,
    in_chans: int = 3,
    image_size: int = 224,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    dtype: str = "fp32",
    channels_last: bool = False,
    compile: bool | str = False,
    sizes: Sequence[int] | None = None,
    repeats: int | None = None,
    warmup: int = 2,
    target_s: float = 1.0,
    train: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    trainable_blocks: int | None = None,
    also_trainable: Sequence[str] = (),
    threads: int | None = None,
    progress: bool = True,
    clock: Clock | None = None,
) -> ModelProfile:
    """Measure one model; see the module docstring for what and in which order.

    Args:
        name: a timm model name or cnnvit built-in, created through
            :func:`cnnvit.models.registry.create_model` (unknown names raise its
            :class:`~cnnvit.models.registry.UnknownModelError`). Optional when ``model`` is
            given (then it names the architecture for the sweep; by default the model's
            ``pretrained_cfg['architecture']``).
        model: a module to measure instead of creating one; it is copied, never changed. No
            load time is measured for it; its ``num_classes`` attribute (timm models have one)
            overrides ``num_classes``.
        weights: a weights file (or Hugging Face ViT folder) to load into ``name``; without it
            the model's random initial weights are written to a temporary safetensors file and
            loaded back, so that the load time is always construct + read + load.
        label: the name shown in tables (default: ``name``).
        num_classes, in_chans, image_size: the model's head, input channels and input side.
        batch_size: the batch of the throughput and training measurements.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``, or a torch device.
        dtype: ``fp32``, or ``bf16`` (autocast; weights stay fp32).
        channels_last: model and inputs in channels_last memory format.
        compile: ``True`` for ``torch.compile`` (inductor), or a backend name.
        sizes: image sizes of the sweep (None: no sweep); e.g. :data:`DEFAULT_SIZES`.
        repeats: timed calls per measurement; None: as many as take ``target_s`` seconds, at
            least 5 and at most 200 (the sweep uses half of ``target_s`` per size).
        warmup: untimed calls before each measurement (at least 1 when compiling).
        train: also time a training step (forward, backward, AdamW) at ``batch_size``.
        model_kwargs: extra constructor arguments (``drop_path_rate``...).
        trainable_blocks, also_trainable: freeze all but the last blocks, as a run does
            (:func:`cnnvit.models.surgery.freeze_all_but_last_blocks`).
        threads: torch's CPU threads during the profile (default: as set); restored after.
        progress: show a progress bar.
        clock: the timer (default: :meth:`Clock.for_device`); tests inject a fake one.
    """
    if model is None and name is None:
        raise ValueError("profile_model needs a model name or a model")
    if model is not None and weights is not None:
        raise ValueError("weights= loads into a model created by name; not with model=")
    runtime = resolve_profile_runtime(device, dtype, channels_last)
    clock = clock or Clock.for_device(runtime.device)
    if compile and warmup < 1:
        raise ValueError("compiling needs warmup >= 1 (the first call compiles)")
    architecture = name or _architecture(model)
    if sizes and architecture is None:
        raise ValueError("the image-size sweep needs the model's architecture name: pass name=")
    label = label or architecture or type(model).__name__
    kwargs = dict(model_kwargs or {})
    plan = _plan(repeats, warmup, target_s)
    steps = 5 + bool(compile) + len(sizes or ())
    notes: list[str] = []
    with (
        _num_threads(threads),
        progress_bar(progress) as bar,
        tempfile.TemporaryDirectory(prefix="cnnvit-prof-") as tmp,
    ):
        threads_used, where = torch.get_num_threads(), device_name(runtime.device)
        task = bar.add_task(label, total=steps, rate="load") if bar else None

        def advance(next_phase: str) -> None:
            if bar is not None and task is not None:
                bar.update(task, advance=1, rate=next_phase)

        file = Path(tmp) / "model.safetensors"
        if model is not None:
            net = copy.deepcopy(model).to(runtime.device)
            num_classes = int(getattr(model, "num_classes", num_classes))
            load_s, disk = None, None
            notes.append("model given as a module: no load time")
        else:
            assert name is not None
            net, load_s, disk = _load(
                name, weights, file, runtime, clock, num_classes, in_chans, image_size, kwargs
            )
        if trainable_blocks is not None or also_trainable:
            freeze_all_but_last_blocks(net, trainable_blocks, also_trainable=also_trainable)
        if runtime.channels_last:
            net = net.to(memory_format=torch.channels_last)
        advance("cost")
        cost = measure_cost(net, image_size, in_chans, disk_bytes=disk)
        advance("compile" if compile else "latency")
        runner = _compiled(net, compile)
        compile_s = None
        if compile:
            x1 = random_batch(runtime, 1, in_chans, image_size)
            net.eval()
            first = clock.read()
            forward_step(runner, x1, runtime)()
            compile_s = clock.read() - first
            advance("latency")
        latency = measure_latency(
            runner, runtime, image_size=image_size, in_chans=in_chans, clock=clock, plan=plan
        )
        advance("throughput")
        infer, memory_infer = measure_throughput(
            runner,
            runtime,
            batch_size=batch_size,
            image_size=image_size,
            in_chans=in_chans,
            clock=clock,
            plan=plan,
        )
        advance("train")
        train_timing, memory_train = None, None
        if train:
            try:
                train_timing, memory_train = measure_training(
                    runner,
                    runtime,
                    batch_size=batch_size,
                    image_size=image_size,
                    num_classes=num_classes,
                    in_chans=in_chans,
                    clock=clock,
                    plan=plan,
                )
            except ValueError as exc:  # nothing trainable
                notes.append(f"no training step: {exc}")
        del runner, net  # the sweep's first memory measurement collects what is left
        advance("sweep")
        sweep: list[SizePoint] = []
        if sizes:
            assert architecture is not None
            sweep = _sweep(
                architecture,
                sizes,
                runtime=runtime,
                num_classes=num_classes,
                in_chans=in_chans,
                model_kwargs=kwargs,
                clock=clock,
                plan=_plan(repeats, warmup, target_s / 2),
                on_size=lambda s: advance(f"size {s}"),
            )
            notes.append("sweep: fresh random-weight models, eager (not compiled), batch 1")
        if bar is not None and task is not None:
            bar.remove_task(task)  # inside a caller's display, finished models do not pile up
    repeat_counts = {"latency": len(latency.seconds), "throughput": len(infer.seconds)}
    if train_timing is not None:
        repeat_counts["train"] = len(train_timing.seconds)
    return ModelProfile(
        model=label,
        architecture=architecture,
        weights=str(weights) if weights is not None else None,
        device=str(runtime.device),
        device_name=where,
        torch_version=torch.__version__,
        dtype=_dtype_name(runtime),
        channels_last=runtime.channels_last,
        compiled=compile,
        batch_size=batch_size,
        image_size=image_size,
        in_chans=in_chans,
        num_classes=num_classes,
        threads=threads_used,
        cost=cost,
        latency_ms=latency.spread.scaled(1000.0),
        throughput=infer.rate(batch_size),
        train_throughput=train_timing.rate(batch_size) if train_timing else None,
        memory_infer=memory_infer,
        memory_train=memory_train,
        load_s=load_s,
        compile_s=compile_s,
        repeats=repeat_counts,
        warmup=warmup,
        sweep=sweep,
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        notes=notes,
    )


def _architecture(model: nn.Module | None) -> str | None:
    cfg = getattr(getattr(model, "_orig_mod", model), "pretrained_cfg", None) or {}
    return cfg.get("architecture")


def _compiled(model: nn.Module, compile: bool | str) -> nn.Module:
    if not compile:
        return model
    backend = compile if isinstance(compile, str) else "inductor"
    return torch.compile(model, backend=backend)  # type: ignore[return-value]


@contextmanager
def _num_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the registry's load-report line (for the temporary file only)."""
    before = console.quiet
    console.quiet = True
    try:
        yield
    finally:
        console.quiet = before


def _load(
    name: str,
    weights: str | Path | None,
    file: Path,
    runtime: Runtime,
    clock: Clock,
    num_classes: int,
    in_chans: int,
    image_size: int,
    kwargs: dict[str, Any],
) -> tuple[nn.Module, float, int]:
    """The model loaded from ``weights`` (or its own random weights, saved to ``file`` first),
    the load time, and the size of its safetensors file."""

    def create(**extra: Any) -> nn.Module:
        return create_model(
            name,
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=image_size,
            **kwargs,
            **extra,
        )

    def timed(source: str | Path) -> tuple[nn.Module, float]:
        start = clock.read()
        net = create(weights=source).to(runtime.device)
        return net, clock.read() - start

    if weights is None:
        torch.manual_seed(0)
        disk = save_weights(create(), file)  # the random model is dropped right away
        release_cached_memory(runtime.device)
        with _quiet():
            net, load_s = timed(file)
    else:
        net, load_s = timed(weights)
        disk = save_weights(net, file)
    return net, load_s, disk


# --- image-size sweep ---------------------------------------------------------------------------


def profile_sizes(
    name: str,
    sizes: Sequence[int] = DEFAULT_SIZES,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    device: str | torch.device = "auto",
    dtype: str = "fp32",
    channels_last: bool = False,
    repeats: int | None = None,
    warmup: int = 2,
    target_s: float = 0.5,
    model_kwargs: dict[str, Any] | None = None,
    threads: int | None = None,
    progress: bool = True,
    clock: Clock | None = None,
) -> list[SizePoint]:
    """MACs, batch-1 latency and its peak memory of ``name`` at each image size.

    Each size gets a fresh model with random weights (``img_size`` reaches the models that take
    it: ViTs size their position embedding from it). A size the model cannot take (patches that
    do not tile it, a feature map shrunk to nothing) gives a point with ``error`` set.
    """
    runtime = resolve_profile_runtime(device, dtype, channels_last)
    with _num_threads(threads), progress_bar(progress) as bar:
        task = bar.add_task(f"{name} sizes", total=len(sizes), rate="") if bar else None
        return _sweep(
            name,
            sizes,
            runtime=runtime,
            num_classes=num_classes,
            in_chans=in_chans,
            model_kwargs=dict(model_kwargs or {}),
            clock=clock or Clock.for_device(runtime.device),
            plan=_plan(repeats, warmup, target_s),
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
    except ModelError:
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


def profile_run(run_dir: str | Path, **options: Any) -> ModelProfile:
    """Profile the trained model of a run folder (its latest checkpoint; the EMA if it kept one).

    The architecture, constructor arguments, frozen blocks and input channels come from the
    run's ``config.yaml``, the classes and image size from its ``results.json``; ``options`` are
    :func:`profile_model`'s (an ``image_size`` given there overrides the run's).

    Raises:
        FileNotFoundError: not a run folder, or no checkpoint in it.
    """
    folder = RunFolder(run_dir)
    folder.require(checkpoint=True)
    cfg = read_run_config(folder.config)
    info = folder.read_results() or {}
    weights = folder.evaluated_weights()
    options.setdefault("image_size", int(info["image_size"]))
    options.setdefault("label", f"{cfg.model.name} ({folder.name})")
    return profile_model(
        cfg.model.name,
        weights=weights,
        num_classes=int(info["num_classes"]),
        in_chans=cfg.data.channels,
        model_kwargs=dict(cfg.model.kwargs),
        trainable_blocks=cfg.model.freeze.trainable_blocks,
        also_trainable=cfg.model.freeze.also_trainable,
        **options,
    )


# --- output -------------------------------------------------------------------------------------


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n:,}"


def _num(x: float) -> str:
    """Three significant figures for rates from 0.01 to 999, whole numbers above."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}" if x >= 0.01 else f"{x:.2g}"


def _median_iqr(s: Spread | None) -> str:
    return "-" if s is None else f"{_num(s.median)} ({_num(s.q1)}-{_num(s.q3)})"


def _mib(m: MemoryPeak | None) -> str:
    return "-" if m is None else f"{m.peak_mib:,.0f}"


def _seconds(s: float | None) -> str:
    return "-" if s is None else f"{s:.2f}"


def profile_table(profiles: Sequence[ModelProfile]) -> Table:
    """The profiles side by side, one row per model; conditions in the caption."""
    table = Table(title="Efficiency profile")
    for col in (
        "model",
        "params",
        "trainable",
        "disk MB",
        "GMACs",
        "GFLOPs",
        "latency b1 ms median / p95",
        "infer img/s",
        "train img/s",
        "peak MiB infer / train",
        "load s",
        "compile s",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    for p in profiles:
        table.add_row(
            p.model,
            _count(p.cost.params_total),
            _count(p.cost.params_trainable),
            f"{p.cost.disk_mb:.1f}",
            f"{p.cost.gmacs:.3f}",
            f"{p.cost.gflops:.3f}",
            f"{p.latency_ms.median:.2f} / {p.latency_ms.p95:.2f}",
            _median_iqr(p.throughput),
            _median_iqr(p.train_throughput),
            f"{_mib(p.memory_infer)} / {_mib(p.memory_train)}",
            _seconds(p.load_s),
            _seconds(p.compile_s),
        )
    table.caption = _caption(profiles)
    return table


def _caption(profiles: Sequence[ModelProfile]) -> str:
    if not profiles:
        return ""
    conditions = sorted(
        {
            f"{p.device_name}, torch {p.torch_version}, {p.dtype}"
            f"{', channels_last' if p.channels_last else ''}"
            f"{', compiled' if p.compiled else ''}, {p.image_size} px, batch {p.batch_size}"
            for p in profiles
        }
    )
    memory = "GPU max allocated" if profiles[0].device.startswith("cuda") else "peak resident set"
    return (
        "; ".join(conditions)
        + f". img/s: median (interquartile range) over timed repeats; peak: {memory}; "
        "MACs from torch's FlopCounterMode (conv, matmul, attention), MACs = FLOPs / 2; "
        "disk MB = 10^6 bytes (safetensors), MiB = 2^20 bytes"
    )


def write_profiles_json(profiles: Sequence[ModelProfile], path: str | Path) -> Path:
    """``{"format": "cnnvit-profile/1", "profiles": [...]}``, each as ``ModelProfile.to_dict``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": JSON_FORMAT, "profiles": [p.to_dict() for p in profiles]}
    path.write_text(json.dumps(data, indent=2))
    return path


def read_profiles_json(path: str | Path) -> list[ModelProfile]:
    """The profiles of a file written by :func:`write_profiles_json`."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != JSON_FORMAT:
        raise ValueError(f"{path} is not a cnnvit profile file (format {data.get('format')!r})")
    return [ModelProfile.from_dict(p) for p in data["profiles"]]


def profile_rows(profiles: Sequence[ModelProfile]) -> list[dict[str, Any]]:
    """Flat rows (one per model) for CSV/Parquet and the report's table."""
    rows = []
    for p in profiles:
        rows.append(
            {
                "model": p.model,
                "params": p.cost.params_total,
                "trainable": p.cost.params_trainable,
                "disk_mb": p.cost.disk_mb,
                "gmacs": p.cost.gmacs,
                "gflops": p.cost.gflops,
                "latency_b1_median_ms": p.latency_ms.median,
                "latency_b1_p95_ms": p.latency_ms.p95,
                "latency_b1_iqr_ms": p.latency_ms.iqr,
                "throughput_img_s": p.throughput.median,
                "throughput_iqr": p.throughput.iqr,
                "train_img_s": p.train_throughput.median if p.train_throughput else None,
                "train_iqr": p.train_throughput.iqr if p.train_throughput else None,
                "peak_infer_mib": p.memory_infer.peak_mib,
                "peak_train_mib": p.memory_train.peak_mib if p.memory_train else None,
                "load_s": p.load_s,
                "compile_s": p.compile_s,
                "device": p.device_name,
                "dtype": p.dtype,
                "batch_size": p.batch_size,
                "image_size": p.image_size,
            }
        )
    return rows
