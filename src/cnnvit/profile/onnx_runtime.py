"""The deployment profile: a model exported to ONNX, timed in ONNX Runtime on the CPU in fp32
and after dynamic int8 quantisation, and (for a trained run) scored on its test split.

Timing follows the eager profiler's rules (:mod:`cnnvit.profile.speed`): ``warmup`` untimed
calls, then the planned repeats between clock reads, summarised as a
:class:`~cnnvit.profile.record.Spread`; batch-1 latency on one fixed noise image, throughput at
the profile's batch size. ONNX Runtime runs on ``CPUExecutionProvider`` with
``intra_op_num_threads`` set to the threads the eager figures used, one inter-op thread
(sequential execution), so the two runtimes get the same cores.

Quantisation: ``onnxruntime.quantization.quant_pre_process`` (shape inference and graph
optimisation, which the dynamo exporter's graphs need before quantising), then
``quantize_dynamic`` with int8 weights: MatMul/Gemm become ``MatMulInteger`` / ``DynamicQuantize
MatMul`` and Conv becomes ``ConvInteger``, activations quantised at run time. Which ops it
converted is recorded (the integer op types in the graph): what changed is measured, not
assumed. Accuracy: both ONNX files classify the run's test split through the data pipeline
``cnnvit evaluate`` uses (the run's eval transform with the weights' preprocessing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from cnnvit.config import ProfileConfig, read_run_config
from cnnvit.folders import RunFolder
from cnnvit.models.weights import Preprocessing
from cnnvit.profile.export import DEFAULT_OPSET, Exportable, export_model, require_onnx
from cnnvit.profile.record import Deployment, OrtTiming, Spread
from cnnvit.profile.speed import RepeatPlan, time_repeats
from cnnvit.runtime import Clock
from cnnvit.train.assemble import assemble
from cnnvit.train.loop import predict_logits

__all__ = [
    "PROVIDER",
    "measure_deployment",
    "ort_session",
    "quantize_int8",
    "session_top1",
    "time_session",
]

PROVIDER = "CPUExecutionProvider"
_INTEGER_OPS = ("Integer", "Quantize", "QLinear", "MatMulNBits")


def ort_session(path: str | Path, threads: int):  # -> onnxruntime.InferenceSession
    """A CPU session with ``threads`` intra-op threads and sequential execution."""
    ort = require_onnx("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: its shape-merge warnings are noise here
    return ort.InferenceSession(str(path), options, providers=[PROVIDER])


def _runner(session, x: np.ndarray) -> Callable[[], object]:
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


def time_session(
    session,
    prep: Preprocessing,
    *,
    batch_size: int,
    clock: Clock,
    plan: RepeatPlan,
) -> tuple[Spread, Spread]:
    """Batch-1 latency (ms) and batch-``batch_size`` throughput (images/s) of ``session``."""
    gen = np.random.default_rng(0)
    one = gen.standard_normal((1, *prep.input_size), dtype=np.float32)  # (1, C, S, S)
    many = gen.standard_normal((batch_size, *prep.input_size), dtype=np.float32)
    latency = time_repeats(_runner(session, one), clock, plan)
    throughput = time_repeats(_runner(session, many), clock, plan)
    return latency.spread.scaled(1000.0), throughput.rate(batch_size)


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """Dynamic int8 quantisation of ``src`` (weights int8, activations at run time) to ``dst``."""
    require_onnx("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = Path(dst)
    prepared = dst.with_name(dst.stem + ".pre.onnx")
    quant_pre_process(str(src), str(prepared))
    quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8)
    prepared.unlink(missing_ok=True)
    return dst


def integer_ops(path: str | Path) -> list[str]:
    """The quantised op types in an ONNX graph (empty for a float model)."""
    onnx = require_onnx("onnx")
    graph = onnx.load(str(path)).graph
    return sorted({n.op_type for n in graph.node if any(k in n.op_type for k in _INTEGER_OPS)})


def _timed_file(path: Path, prep: Preprocessing, config: ProfileConfig, threads: int, clock: Clock):
    plan = RepeatPlan(warmup=config.warmup, repeats=config.repeats, target_s=config.target_s)
    session = ort_session(path, threads)
    latency, throughput = time_session(
        session, prep, batch_size=config.batch_size, clock=clock, plan=plan
    )
    return OrtTiming(path.stat().st_size, latency, throughput, integer_ops(path))


def measure_deployment(
    target: Exportable,
    config: ProfileConfig,
    workdir: Path,
    *,
    threads: int,
    clock: Clock | None = None,
    test_run: str | Path | None = None,
) -> Deployment:
    """Export ``target`` to ONNX in ``workdir``, time it in ONNX Runtime, quantise it (where
    ``config.int8``) and time that; with ``test_run``, score both on that run's test split."""
    ort = require_onnx("onnxruntime")
    clock = clock or Clock.for_device(torch.device("cpu"))
    prep = target.preprocessing
    fp32_path = export_model(target, workdir / "model.onnx", "onnx")
    fp32 = _timed_file(fp32_path, prep, config, threads, clock)
    int8, int8_path, error = None, None, None
    if config.int8:
        try:
            int8_path = quantize_int8(fp32_path, workdir / "model.int8.onnx")
            int8 = _timed_file(int8_path, prep, config, threads, clock)
        except Exception as exc:  # an op quantize_dynamic cannot take: recorded, not fatal
            error, int8_path = f"{type(exc).__name__}: {exc}", None
    scores: dict[str, float] = {}
    images = None
    if test_run is not None:
        files = {"fp32": fp32_path, **({"int8": int8_path} if int8_path else {})}
        sessions = {k: ort_session(p, threads) for k, p in files.items()}
        scores, images = session_top1(test_run, sessions, prep)
    return Deployment(
        runtime=f"onnxruntime {ort.__version__}",
        provider=PROVIDER,
        intra_op_threads=threads,
        opset=DEFAULT_OPSET,
        fused=target.fused,
        fp32=fp32,
        int8=int8,
        int8_error=error,
        test_top1_fp32=scores.get("fp32"),
        test_top1_int8=scores.get("int8"),
        test_images=images,
    )


class _SessionModule(nn.Module):
    """An ONNX Runtime session behind a module's call, for :func:`predict_logits`:
    (B, C, S, S) float32 in, (B, num_classes) float32 logits out, on the CPU."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session
        self.input = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input: x})[0])


def session_top1(
    run_dir: str | Path, sessions: Mapping[str, object], prep: Preprocessing
) -> tuple[dict[str, float], int]:
    """Top-1 (a fraction) of each ONNX Runtime session on the run's test split, the images
    prepared as ``cnnvit evaluate`` prepares them for these weights (the run's eval transform at
    the weights' size and channels, normalised with their mean/std); and the image count."""
    folder = RunFolder(run_dir)
    cfg = read_run_config(folder.config)
    size_and_channels = {"image_size": prep.image_size, "channels": prep.channels}
    data_cfg = cfg.data.model_copy(update=size_and_channels)
    cfg = cfg.model_copy(update={"data": data_cfg})
    parts = assemble(cfg, device=torch.device("cpu"))
    transform = replace(parts.data.eval_transform, mean=prep.mean, std=prep.std)
    scores, count = {}, 0
    for key, session in sessions.items():
        logits, labels = predict_logits(
            _SessionModule(session), parts.data.open_test(), transform, runtime=parts.runtime
        )
        scores[key] = float((logits.argmax(1) == labels).float().mean())
        count = int(labels.numel())
    return scores, count
