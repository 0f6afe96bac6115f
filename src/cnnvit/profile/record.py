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
    "MemoryPeak",
    "ModelProfile",
    "SizePoint",
    "Spread",
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
