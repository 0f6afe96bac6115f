"""The efficiency profile as data: what ``profile.json`` holds, read and written, and shown as a
table. Torch-free, so the report reads profiles without importing torch; the measuring is in
:mod:`cnnvit.profile.profiler`.

Units: latency in ms, throughput in images/s, memory in MiB (2**20 bytes), disk in MB (10**6
bytes), times in s.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

__all__ = [
    "FLOP_COUNTER_NOTE",
    "Cost",
    "Deployment",
    "MemoryPeak",
    "ModelProfile",
    "OrtTiming",
    "SizePoint",
    "Spread",
    "deployment_table",
    "profile_rows",
    "profile_table",
    "read_profiles_json",
    "write_profiles_json",
]

JSON_FORMAT = "cnnvit-profile/1"
FLOP_COUNTER_NOTE = (
    "torch.utils.flop_counter.FlopCounterMode, batch 1, eval mode: convolutions, matrix "
    "products and attention counted (2 FLOPs per multiply-add, MACs = FLOPs / 2); "
    "normalisation, activations, softmax, pooling and additions not counted"
)


@dataclass(frozen=True)
class Cost:
    params_total: int
    params_trainable: int
    disk_bytes: int  # safetensors file of the state dict
    image_size: int
    in_chans: int
    flops: int  # forward, one image
    macs: int  # flops / 2 (every counted op is a multiply-add)
    flops_by_op: dict[str, int]

    @property
    def disk_mb(self) -> float:
        return self.disk_bytes / 1e6

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "disk_mb": self.disk_mb,
            "gmacs": self.gmacs,
            "gflops": self.gflops,
            "counted_ops": sorted(self.flops_by_op),
            "flop_counter": FLOP_COUNTER_NOTE,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Cost:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Spread:
    """Summary of repeated measurements (same unit as the values)."""

    median: float
    p95: float
    q1: float
    q3: float
    mean: float
    std: float  # sample standard deviation (0 for one value)
    min: float
    max: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @classmethod
    def of(cls, values: list[float] | np.ndarray) -> Spread:
        v = np.asarray(values, dtype=float)
        if v.size == 0:
            raise ValueError("no values to summarise")
        q1, median, q3, p95 = np.percentile(v, [25, 50, 75, 95])
        return cls(
            median=float(median),
            p95=float(p95),
            q1=float(q1),
            q3=float(q3),
            mean=float(v.mean()),
            std=float(v.std(ddof=1)) if v.size > 1 else 0.0,
            min=float(v.min()),
            max=float(v.max()),
            n=int(v.size),
        )

    def scaled(self, factor: float) -> Spread:
        """The same summary in another unit (``factor`` > 0): seconds -> ms is 1000."""
        if factor <= 0:
            raise ValueError("factor must be > 0")
        d = asdict(self)
        return Spread(**{k: (v if k == "n" else v * factor) for k, v in d.items()})

    def to_dict(self) -> dict:
        return {**asdict(self), "iqr": self.iqr}

    @classmethod
    def from_dict(cls, d: dict) -> Spread:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class MemoryPeak:
    """Peak memory of one measured interval, MiB (2**20 bytes)."""

    peak_mib: float  # CUDA: max allocated; CPU: peak resident set of the process
    increase_mib: float  # the peak above what was in use when the interval began
    reserved_mib: float | None  # CUDA: max reserved by the caching allocator; CPU: None
    source: str  # what was read
    resettable: bool  # False: a CPU peak since process start (no /proc/self/clear_refs)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MemoryPeak:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class OrtTiming:
    """One ONNX file in ONNX Runtime: its size, batch-1 latency (ms) and batch-N throughput
    (images/s), timed as the eager figures are (warm-up, then the planned repeats)."""

    file_bytes: int
    latency_ms: Spread
    throughput: Spread
    ops: list[str] = field(default_factory=list)  # integer op types in the graph (int8's)

    @property
    def file_mb(self) -> float:
        return self.file_bytes / 1e6

    def to_dict(self) -> dict:
        return {
            "file_bytes": self.file_bytes,
            "file_mb": self.file_mb,
            "latency_ms": self.latency_ms.to_dict(),
            "throughput": self.throughput.to_dict(),
            "ops": list(self.ops),
        }

    @classmethod
    def from_dict(cls, d: dict) -> OrtTiming:
        return cls(
            file_bytes=d["file_bytes"],
            latency_ms=Spread.from_dict(d["latency_ms"]),
            throughput=Spread.from_dict(d["throughput"]),
            ops=list(d.get("ops", [])),
        )


@dataclass(frozen=True)
class Deployment:
    """The model exported to ONNX and run in ONNX Runtime on the CPU, in fp32 and after dynamic
    int8 quantisation (``onnxruntime.quantization.quantize_dynamic``), with the test split's
    top-1 of each where the model is a trained run's (fractions in [0, 1])."""

    runtime: str  # "onnxruntime 1.x.y"
    provider: str  # CPUExecutionProvider
    intra_op_threads: int
    opset: int
    fused: bool  # a GResNet's split normalisation folded into its convs before export
    fp32: OrtTiming
    int8: OrtTiming | None = None  # None: not asked for, or quantisation failed (see error)
    int8_error: str | None = None
    test_top1_fp32: float | None = None  # the fp32 ONNX on the run's test split
    test_top1_int8: float | None = None
    test_images: int | None = None

    @property
    def top1_change(self) -> float | None:
        """int8 minus fp32 test top-1 (a fraction; negative: quantisation lost accuracy)."""
        if self.test_top1_fp32 is None or self.test_top1_int8 is None:
            return None
        return self.test_top1_int8 - self.test_top1_fp32

    def to_dict(self) -> dict:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["fp32"] = self.fp32.to_dict()
        d["int8"] = self.int8.to_dict() if self.int8 else None
        d["top1_change"] = self.top1_change
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Deployment:
        plain = {k: d.get(k) for k in cls.__dataclass_fields__ if k not in {"fp32", "int8"}}
        return cls(
            **plain,
            fp32=OrtTiming.from_dict(d["fp32"]),
            int8=OrtTiming.from_dict(d["int8"]) if d.get("int8") else None,
        )


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
    deployment: Deployment | None = None  # ONNX Runtime and int8 (profile.runtimes); None: not run

    def to_dict(self) -> dict:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["cost"] = self.cost.to_dict()
        d["deployment"] = self.deployment.to_dict() if self.deployment else None
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
                "deployment",
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
            deployment=opt("deployment", Deployment),  # absent from older profile.json
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


def deployment_table(profiles: Sequence[ModelProfile]) -> Table | None:
    """ONNX Runtime (fp32, int8) next to eager PyTorch, one row per model that has it."""
    rows = [p for p in profiles if p.deployment is not None]
    if not rows:
        return None
    table = Table(title="Deployment profile: ONNX Runtime on the CPU")
    for col in (
        "model",
        "eager b1 ms",
        "ORT b1 ms median / p95",
        "ORT img/s",
        "int8 b1 ms median / p95",
        "int8 img/s",
        "ONNX MB fp32 -> int8",
        "int8 ops",
        "test top-1 fp32 -> int8",
    ):
        table.add_column(col, justify="left" if col in ("model", "int8 ops") else "right")
    for p in rows:
        d = p.deployment
        assert d is not None
        q = d.int8
        table.add_row(
            p.model,
            f"{p.latency_ms.median:.2f}",
            f"{d.fp32.latency_ms.median:.2f} / {d.fp32.latency_ms.p95:.2f}",
            _median_iqr(d.fp32.throughput),
            "-" if q is None else f"{q.latency_ms.median:.2f} / {q.latency_ms.p95:.2f}",
            _median_iqr(q.throughput if q else None),
            f"{d.fp32.file_mb:.2f} -> {q.file_mb:.2f}" if q else f"{d.fp32.file_mb:.2f} -> -",
            ", ".join(q.ops) if q else (d.int8_error or "-"),
            _top1_change(d),
        )
    first = rows[0].deployment
    assert first is not None
    table.caption = (
        f"{first.runtime}, {first.provider}, {first.intra_op_threads} intra-op threads (the eager "
        "figures' own), fp32 and dynamic int8 (quantize_dynamic, int8 weights); latency batch 1, "
        "img/s median (interquartile range) at the profile's batch"
    )
    return table


def _top1_change(d: Deployment) -> str:
    if d.test_top1_fp32 is None:
        return "-"
    fp32 = f"{100 * d.test_top1_fp32:.2f} %"
    if d.top1_change is None:
        return fp32
    return f"{fp32} -> {100 * (d.test_top1_int8 or 0):.2f} % ({100 * d.top1_change:+.2f} pt)"


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
                **_deployment_row(p.deployment),
            }
        )
    return rows


def _deployment_row(d: Deployment | None) -> dict[str, Any]:
    """The ONNX Runtime and int8 columns of a profile that has them; none for one without."""
    if d is None:
        return {}
    q = d.int8
    return {
        "ort_latency_b1_median_ms": d.fp32.latency_ms.median,
        "ort_latency_b1_p95_ms": d.fp32.latency_ms.p95,
        "ort_throughput_img_s": d.fp32.throughput.median,
        "onnx_fp32_mb": d.fp32.file_mb,
        "int8_latency_b1_median_ms": q.latency_ms.median if q else None,
        "int8_latency_b1_p95_ms": q.latency_ms.p95 if q else None,
        "int8_throughput_img_s": q.throughput.median if q else None,
        "onnx_int8_mb": q.file_mb if q else None,
        "test_top1_onnx_fp32": d.test_top1_fp32,
        "test_top1_onnx_int8": d.test_top1_int8,
        "test_top1_change_int8": d.top1_change,
        "ort_threads": d.intra_op_threads,
    }
