"""One run on several processes: torchrun starts them, DistributedDataParallel trains.

``torchrun --nproc-per-node N -m cnnvit train ...`` starts N copies of ``cnnvit train`` with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; ``cnnvit train --nproc N`` (``train.nproc``)
starts that command itself (:func:`launch`). Inside, :func:`joined` gives each process its
:class:`World` and initialises the process group (nccl on ``cuda:LOCAL_RANK``, gloo on the CPU).

What the processes share, and how:

* Data: every process holds the whole in-memory training set and draws the same global order
  from the run's seed; each takes its contiguous share of every global batch
  (:class:`ShardedLoader`, ``train.batch_size / N`` images). The shares are equal, so the mean of
  the processes' mean gradients, which DDP computes, is the global batch's mean gradient, as one
  process computes it.
* Weights: DDP broadcasts rank 0's at the start and averages gradients every step, so every
  process holds the same weights, optimiser state and EMA.
* BatchNorm: each process normalises with its own share's statistics (the running buffers are
  rank 0's, broadcast before every forward); ``train.sync_bn`` computes them over the global
  batch instead (SyncBatchNorm, CUDA only).
* Randomness: augmentation, mixing and dropout draw from streams of each process's own (seeded by
  the run's seed and the rank), so the shares are not augmented alike; the checkpoint keeps every
  process's streams, so a resumed run continues each one.
* Writing: rank 0 alone holds the run folder's lock, scores the selection and test splits and
  writes everything; the others wait for its decisions (early stopping) in a collective.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from timm.layers import convert_sync_batchnorm
from torch.nn.parallel import DistributedDataParallel

from cnnvit.config import RESUME_MAY_CHANGE, RunConfig, dump_yaml
from cnnvit.data.loaders import InMemoryLoader
from cnnvit.data.pipeline import PreparedData
from cnnvit.errors import UserError
from cnnvit.folders import RunFolder, RunFolderError
from cnnvit.locks import writing
from cnnvit.runtime import resolve_device
from cnnvit.ui import console

__all__ = [
    "DistributedError",
    "ShardedLoader",
    "World",
    "check_processes",
    "joined",
    "launch",
    "launch_run",
    "launched_worker",
    "launches",
    "one_writer",
    "torchrun_processes",
    "under_torchrun",
    "unwrap",
]

_T = TypeVar("_T")

# What torchrun sets in each process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Set by launch() in the processes it starts: the launcher reports the run, not they.
LAUNCHED = "CNNVIT_LAUNCHED"


class DistributedError(UserError):
    """A setting several processes cannot train with, or processes that ended without a run."""


# --- where this process stands ----------------------------------------------------------------


def under_torchrun() -> bool:
    """Whether torchrun started this process (its rank variables are set)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def launches(nproc: int) -> bool:
    """Whether a run of ``nproc`` processes has to start torchrun first: more than one asked
    for, and this process is not already one of torchrun's."""
    return nproc > 1 and not under_torchrun()


def torchrun_processes() -> int | None:
    """How many processes torchrun started (``WORLD_SIZE``), where it started this one."""
    return int(os.environ["WORLD_SIZE"]) if under_torchrun() else None


def check_processes(nproc: int, batch_size: int, *, sync_bn: bool, device: torch.device) -> None:
    """Refuse what ``nproc`` processes on ``device`` cannot train; the launcher checks before
    any process starts, each process again (torchrun may start them directly)."""
    if batch_size % nproc:
        raise DistributedError(
            f"train.batch_size {batch_size} is the global batch and must divide among {nproc} "
            f"processes; use a multiple of {nproc}"
        )
    if sync_bn and device.type != "cuda":
        raise DistributedError(
            "train.sync_bn needs CUDA GPUs (torch's SyncBatchNorm runs on them only); on the CPU "
            "leave it off: each process then normalises its share of the batch"
        )


def launched_worker() -> bool:
    """Whether this process is one of those :func:`launch` started (the launcher reports)."""
    return under_torchrun() and os.environ.get(LAUNCHED) == "1"


@dataclass(frozen=True)
class World:
    """This process among the run's processes; ``World()`` is a run of one.

    ``broadcast``, ``gather``, ``sum_`` and ``barrier`` are collectives where the run has several
    processes: every process calls them, in the same order. With one, each returns its input."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device | None = None  # cuda:LOCAL_RANK or cpu; None: the config decides

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that scores, writes and holds the lock."""
        return self.rank == 0

    def broadcast(self, obj: _T) -> _T:
        """Rank 0's ``obj`` (any picklable object), on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: _T) -> list[_T] | None:
        """Every process's ``obj`` in rank order, on rank 0; None on the others."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] | None = [None] * self.size if self.is_main else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered

    def sum_(self, tensor: torch.Tensor) -> None:
        """``tensor`` summed over the processes, in place."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    # --- the run's parts, made distributed -------------------------------------------------

    def shard(self, data: PreparedData) -> PreparedData:
        """``data`` with its training loader cut into this process's shares of each batch
        (:func:`check_processes` has checked that the batch divides)."""
        if not self.distributed:
            return data
        if not isinstance(data.train, InMemoryLoader):
            raise DistributedError(
                "several processes share in-memory data only; set data.in_memory=always (or "
                "raise data.max_memory_mb) for this dataset, or train with train.nproc=1"
            )
        return replace(data, train=ShardedLoader(data.train, self.rank, self.size))

    def batchnorm(self, model: torch.nn.Module, sync: bool) -> torch.nn.Module:
        """``model`` with its BatchNorm layers synchronised across the processes when ``sync``
        (timm's converter, which also knows timm's BatchNormAct2d; CUDA only, which
        :func:`check_processes` has checked)."""
        if not (self.distributed and sync):
            return model
        return convert_sync_batchnorm(model)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel (it broadcasts rank 0's weights and buffers)."""
        if not self.distributed:
            return model
        assert self.device is not None
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def own_generator(self, seed: int, shared: torch.Generator) -> torch.Generator:
        """The generator of this process's augmentation and mixing: ``shared`` (the data
        order's) in a run of one; else a stream of its own, and torch's global generator
        (dropout, drop-path) reseeded the same way, from the run's seed and the rank."""
        if not self.distributed:
            return shared
        own = int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])
        torch.manual_seed(own)
        return torch.Generator().manual_seed(own)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``torch.compile`` and DistributedDataParallel: its state dict has the
    model's own keys."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return model


@contextmanager
def joined(device: str) -> Iterator[World]:
    """This process's :class:`World` while the block runs.

    Outside torchrun (or with one process) a run of one, nothing initialised. Inside, the
    process group is initialised on ``train.device`` (``auto`` or ``cuda``: nccl on
    ``cuda:LOCAL_RANK``; ``cpu``: gloo), the console is quiet on every rank but 0, and both are
    undone when the block ends."""
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        yield World()
        return
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    own = _process_device(device, local_rank)
    world = World(rank, size, local_rank, own)
    cuda = own.type == "cuda"
    if cuda:
        torch.cuda.set_device(own)
    dist.init_process_group("nccl" if cuda else "gloo", device_id=own if cuda else None)
    quiet = console.quiet
    console.quiet = not world.is_main
    try:
        yield world
    finally:
        console.quiet = quiet
        dist.destroy_process_group()


def _process_device(name: str, local_rank: int) -> torch.device:
    """The device of process ``local_rank`` on its machine: its own GPU, or the CPU."""
    device = resolve_device(name)
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise DistributedError(
            f"several processes train on CUDA GPUs (nccl) or on the CPU (gloo), not on "
            f"{device.type}; set train.device=cpu or train.nproc=1"
        )
    if device.index is not None:
        raise DistributedError(
            f"train.device={name}: with several processes each takes the GPU of its LOCAL_RANK; "
            "set train.device=cuda (choose GPUs with CUDA_VISIBLE_DEVICES)"
        )
    visible = torch.cuda.device_count()
    if local_rank >= visible:
        raise DistributedError(
            f"process {local_rank} on this machine has no GPU of its own: {visible} "
            f"visible; start at most {visible} processes per machine"
        )
    return torch.device("cuda", local_rank)


@contextmanager
def one_writer(folder: RunFolder, world: World, *, new: bool) -> Iterator[None]:
    """Rank 0 holds the run folder's lock while the block runs.

    Rank 0 alone writes, and a lock held by the writer itself is stale exactly when the writer
    is gone; a launcher's lock would outlive its processes or die before them, and torchrun may
    be started without a launcher. The other processes learn from rank 0 whether it got the lock
    (and, for a ``new`` run, whether the folder is free) and stop alike where it did not."""
    with ExitStack() as held:
        refusal: Exception | None = None
        if world.is_main:
            try:
                held.enter_context(writing(folder.path, folder.lock))
                if new and folder.holds_run():
                    raise RunFolderError(
                        f"{folder.path} already holds a run; continue it with `cnnvit train "
                        f"--resume {folder.path}` or choose another --out"
                    )
            except (UserError, OSError) as err:
                refusal = err
        refusal = world.broadcast(refusal)
        if refusal is not None:
            raise refusal
        yield


# --- the data ---------------------------------------------------------------------------------


class ShardedLoader:
    """This process's share of every global batch of an :class:`InMemoryLoader`.

    Every process draws the same order from the loader's generator (the run's seed), exactly as
    the loader itself would, and takes the ``rank``-th of ``size`` equal, contiguous parts of each
    batch. The last, partial batch is cut to a multiple of ``size`` (at most ``size - 1`` images
    left out per epoch) so that the shares stay equal; where it holds fewer than ``size`` images
    it is left out."""

    def __init__(self, loader: InMemoryLoader, rank: int, size: int) -> None:
        if loader.generator is None:
            raise ValueError("a sharded loader shuffles: the loader needs a torch.Generator")
        self.loader, self.rank, self.size = loader, rank, size
        self.batch_size = loader.batch_size  # the global batch

    def __len__(self) -> int:
        full, rest = divmod(self.loader.num_images, self.batch_size)
        return full + (rest >= self.size)

    @property
    def num_images(self) -> int:
        return self.loader.num_images

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.loader.images, self.loader.labels  # (N, C, H, W) uint8, (N,)
        n = len(labels)
        # The global order, drawn as InMemoryLoader draws it: the same on every process.
        order = torch.randperm(n, generator=self.loader.generator).to(labels.device)  # (N,)
        for start in range(0, n, self.batch_size):
            batch = order[start : start + self.batch_size]  # (B,), B = global batch (or less)
            share = len(batch) // self.size  # B / size images per process
            if share == 0:
                break
            mine = batch[self.rank * share : (self.rank + 1) * share]  # (B / size,)
            yield images[mine], labels[mine]  # (B / size, C, H, W), (B / size,)


# --- the launcher -----------------------------------------------------------------------------


def launch_run(cfg: RunConfig, folder: RunFolder, *, new: bool) -> dict:
    """Train ``cfg`` into ``folder`` (``new``) or resume it there on ``train.nproc`` processes
    under torchrun; returns results.json as rank 0 left it.

    What would stop the processes at once stops the launcher before they start: settings they
    cannot train with, a folder another process writes, a new run's folder that holds one."""
    nproc = cfg.train.nproc
    device = resolve_device(cfg.train.device)
    check_processes(nproc, cfg.train.batch_size, sync_bn=cfg.train.sync_bn, device=device)
    with one_writer(folder, World(), new=new):
        pass  # released at once: rank 0 takes it again for the run
    with tempfile.TemporaryDirectory(prefix="cnnvit-launch-") as tmp:
        if new:
            config = Path(tmp) / "config.yaml"
            dump_yaml(cfg, config)
            arguments = ["train", "--config", str(config)]
        else:  # the saved recipe, with what a resume may change
            shown = cfg.model_dump(mode="json")
            arguments = ["train", "--resume", str(folder.path)]
            for key in RESUME_MAY_CHANGE:
                section, name = key.split(".")
                arguments += ["--set", f"{key}={json.dumps(shown[section][name])}"]
        status = launch(arguments, nproc)
    results = folder.read_results() or {}
    if status == 0 and results.get("status") in ("completed", "diverged"):
        return results
    why = f" ({results['error']})" if results.get("error") else ""
    kept = folder.latest_checkpoint() is not None
    more = f"; `cnnvit train --resume {folder.path}` continues it" if kept else ""
    raise DistributedError(
        f"the {nproc} processes under torchrun ended with status {status}{why}; their output "
        f"above says why{more}"
    )


def launch(arguments: list[str], nproc: int) -> int:
    """Run ``cnnvit ARGUMENTS`` as ``nproc`` processes under torchrun on this machine
    (``python -m torch.distributed.run --standalone``); returns torchrun's exit status.

    Each process gets ``OMP_NUM_THREADS`` = its share of the cores unless it is set. Stopping
    the launcher (Ctrl-C) stops torchrun, which stops its processes."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "cnnvit",
        *arguments,
    ]
    env = {**os.environ, LAUNCHED: "1"}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    console.print(f"starting {nproc} processes: {shlex.join(command)}", soft_wrap=True)
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except BaseException:
        process.terminate()  # torchrun passes SIGTERM on to its processes
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
