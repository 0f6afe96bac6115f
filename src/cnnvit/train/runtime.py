"""Where and how a run executes: device, dtype, memory layout, threads, and the record of it."""

from __future__ import annotations

import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from cnnvit.config import TrainConfig


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype  # autocast dtype; float32 means no autocast
    channels_last: bool

    @property
    def autocast(self) -> bool:
        return self.dtype != torch.float32

    def autocast_context(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but no CUDA GPU is visible; use train.device=cpu")
    return device


def resolve_runtime(cfg: TrainConfig) -> Runtime:
    """Pick device, dtype and layout: bf16 autocast + channels_last on CUDA, fp32 elsewhere."""
    device = resolve_device(cfg.device)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    cuda = device.type == "cuda"
    if cfg.precision == "bf16":
        if not cuda:
            raise RuntimeError("train.precision=bf16 is supported on CUDA only; use fp32 on CPU")
        dtype = torch.bfloat16
    elif cfg.precision == "auto" and cuda and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    else:
        dtype = torch.float32
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and cuda)
    if cuda:
        # TF32 matmuls for any fp32 work left outside autocast (Ampere and newer).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return Runtime(device=device, dtype=dtype, channels_last=channels_last)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{_cpu_model()} ({torch.get_num_threads()} threads)"
    return device.type


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} CPU"


def git_revision(path: Path | None = None) -> str | None:
    """The git commit of the working directory (+dirty if it has changes); None outside git."""
    try:
        cwd = path or Path.cwd()
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


@dataclass(frozen=True)
class Environment:
    python: str
    torch: str
    torchvision: str
    timm: str
    cnnvit: str
    platform: str
    device: str
    device_name: str
    dtype: str
    channels_last: bool
    threads: int
    git_revision: str | None
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def capture_environment(runtime: Runtime, seed: int) -> Environment:
    import timm
    import torchvision

    from cnnvit import __version__

    return Environment(
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        timm=timm.__version__,
        cnnvit=__version__,
        platform=platform.platform(),
        device=str(runtime.device),
        device_name=device_name(runtime.device),
        dtype=str(runtime.dtype).removeprefix("torch."),
        channels_last=runtime.channels_last,
        threads=torch.get_num_threads(),
        git_revision=git_revision(),
        seed=seed,
    )
