"""One run on two processes (DistributedDataParallel, gloo on the CPU) against one process.

The model is ``vit_mini``: LayerNorm only. With BatchNorm each process would normalise its own
share of the batch, which one process does not do (and SyncBatchNorm, which would, runs on CUDA
only); with LayerNorm, no dropout and augmentation off, the two runs compute the same function
of the same batches, and differ only in the order of floating-point sums.

Two processes are started two ways: forked from this test process with torchrun's variables
set (no second start-up of torch, so these runs take seconds), and through
``cnnvit train --nproc 2``, which starts torchrun itself (marked slow).
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cnnvit.config import load_run_config
from cnnvit.data.loaders import InMemoryLoader
from cnnvit.data.types import ArraySource
from cnnvit.train import run as run_module
from cnnvit.train.checkpoint import latest_checkpoint_dir, load_checkpoint
from cnnvit.train.distributed import DistributedError, ShardedLoader
from cnnvit.train.run import resume, train

DATA = "synthetic:train_size=600,val_size=100,image_size=16"
# 600 images: 60 held out for selection, 540 train: 8 batches of 64 and one of 28 (14 each).
SETTINGS = [
    f"data.spec={DATA}",
    "model.name=vit_mini",
    "train.epochs=2",
    "train.batch_size=64",
    "optim.name=sgd",
    "optim.lr=0.05",
    "train.device=cpu",
    "train.threads=1",
    "train.progress=false",
    "data.augment.crop_padding=0",
    "data.augment.hflip=false",
]
TIMING = {"seconds", "images_per_second", "peak_memory_mb"}
# Weights after one epoch (9 SGD steps) of two processes against one, fp32: measured 1.2e-7.
# SGD, not AdamW: Adam divides a gradient by its own running size, so a gradient that is zero
# but for rounding (the attention's key bias: softmax ignores it) moves its weight by up to the
# learning rate in a direction set by the rounding, and the two runs' roundings differ (3e-5
# after one epoch of AdamW at lr 2e-3, all of it in qkv.bias).
ONE_EPOCH_ATOL = 1e-6


def _cfg(out: Path, *extra: str):
    return load_run_config(None, [*SETTINGS, f"output.dir={out}", *extra])


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "epochs.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(latest_checkpoint_dir(run_dir) / "model.safetensors")


def _files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# --- two processes forked from this one -------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_rank(rank: int, size: int, port: int, start: Callable[[], object]) -> None:
    """The body of a forked process: torchrun's variables, then ``start()``; exit status 130
    for an interruption, 1 for anything else."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        start()
    except KeyboardInterrupt:
        os._exit(130)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _on_two_processes(start: Callable[[], object], timeout: float = 120) -> list[int]:
    """Run ``start()`` in two forked processes, as torchrun would run them; their exit codes."""
    fork = multiprocessing.get_context("fork")
    port = _free_port()
    processes = [fork.Process(target=_as_rank, args=(r, 2, port, start)) for r in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout)
    for p in processes:
        if p.is_alive():
            p.kill()
            p.join()
    return [p.exitcode for p in processes]


def _interrupted_in_second_epoch(start: Callable[[], object]) -> Callable[[], object]:
    """``start`` with a KeyboardInterrupt at the start of epoch 2 (after epoch 1's checkpoint)."""

    def interrupted() -> object:
        real = run_module.train_one_epoch
        calls = {"n": 0}

        def crash_in_second_epoch(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(run_module, "train_one_epoch", crash_in_second_epoch)
            return start()

    return interrupted


# --- the runs compared ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """One process: interrupted after epoch 1 (its weights kept here), then resumed."""
    out = tmp_path_factory.mktemp("single") / "run"
    with pytest.raises(KeyboardInterrupt):
        _interrupted_in_second_epoch(lambda: train(_cfg(out)))()
    after_one = _weights(out)
    assert resume(out)["status"] == "completed"
    return out, after_one


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Two processes: interrupted after epoch 1 (its weights kept here), then resumed."""
    out = tmp_path_factory.mktemp("two") / "run"
    codes = _on_two_processes(_interrupted_in_second_epoch(lambda: train(_cfg(out))))
    assert codes == [130, 130]
    assert json.loads((out / "results.json").read_text())["status"] == "failed"
    assert load_checkpoint(out).epoch == 1
    after_one = _weights(out)
    assert _on_two_processes(lambda: resume(out)) == [0, 0]
    return out, after_one


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """Two processes, uninterrupted."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert _on_two_processes(lambda: train(_cfg(out))) == [0, 0]
    return out


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``cnnvit train --nproc 2``, uninterrupted, run in an empty folder."""
    cwd = tmp_path_factory.mktemp("launched")
    settings = [arg for s in SETTINGS for arg in ("--set", s)]
    command = [sys.executable, "-m", "cnnvit", "train", "--nproc", "2", "--out", "run"]
    done = subprocess.run(
        [*command, *settings], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    return cwd, done


def test_one_epoch_on_two_processes_equals_one_process(single, two):
    (one_dir, one), (two_dir, two_weights) = single, two
    assert _max_difference(one, two_weights) <= ONE_EPOCH_ATOL
    assert _files(two_dir) == _files(one_dir)  # rank 1 wrote nothing of its own
    row_one, row_two = _rows(one_dir)[0], _rows(two_dir)[0]
    assert row_one["step"] == row_two["step"] == "9"
    for key in ("train_loss", "train_acc", "selection_loss", "selection_acc", "lr"):
        assert float(row_two[key]) == pytest.approx(float(row_one[key]), rel=1e-5, abs=1e-6)


def test_two_processes_resume_as_if_never_stopped(two, straight):
    (resumed, _), uninterrupted = two, straight
    assert _rows(resumed) == _rows(uninterrupted)
    assert _max_difference(_weights(resumed), _weights(uninterrupted)) == 0.0
    a, b = (json.loads((d / "results.json").read_text()) for d in (resumed, uninterrupted))
    assert a["status"] == b["status"] == "completed" and a["test_top1"] == b["test_top1"]


# Four start-ups of Python with torch (the launcher, torchrun, two processes): 95 s on a busy
# two-core machine.
@pytest.mark.slow
def test_nproc_starts_torchrun_and_only_rank_0_writes(single, straight, launched):
    (one_dir, _), (cwd, done) = single, launched
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stderr  # cnnvit's console
    assert "torch.distributed.run --standalone --nproc-per-node=2" in said
    assert said.count("test_top1") == 1  # the launcher's summary; the processes print none
    run_dir = cwd / "run"
    assert load_run_config(run_dir / "config.yaml").train.nproc == 2
    assert os.listdir(cwd) == ["run"]  # nothing beside the run folder
    assert _files(run_dir) == _files(one_dir)  # the files one process writes, and no more
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs_completed"] == 2
    # the log's throughput counts both processes' images: all 540 of an epoch (the last
    # batch, 28, divides in two)
    rows = list(csv.DictReader((run_dir / "epochs.csv").open()))
    for row in rows:
        assert float(row["images_per_second"]) * float(row["seconds"]) == pytest.approx(540)
    # torchrun's processes train as the forked ones do
    assert _rows(run_dir) == _rows(straight)
    assert _max_difference(_weights(run_dir), _weights(straight)) == 0.0


# --- what is refused, before any process starts ------------------------------------------------


def test_a_batch_that_does_not_divide_is_refused_before_launching(tmp_path):
    with pytest.raises(DistributedError, match="multiple of 2"):
        train(_cfg(tmp_path / "run", "train.nproc=2", "train.batch_size=63"))
    assert not (tmp_path / "run").exists()


def test_sync_bn_on_the_cpu_is_refused_before_launching(tmp_path):
    with pytest.raises(DistributedError, match="CUDA"):
        train(_cfg(tmp_path / "run", "train.nproc=2", "train.sync_bn=true"))


# --- the shares of a batch -----------------------------------------------------------------------


def test_shares_are_equal_parts_of_the_same_global_batches():
    n, batch = 20, 6  # batches of 6, 6, 6 and 2: the last one is 1 + 1, or too few for 3
    source = ArraySource(np.zeros((n, 2, 2, 1), dtype=np.uint8), np.arange(n))  # (N, H, W, C)

    def loader() -> InMemoryLoader:
        gen = torch.Generator().manual_seed(3)
        cpu = torch.device("cpu")
        return InMemoryLoader(source, device=cpu, batch_size=batch, shuffle=True, generator=gen)

    whole = [labels.tolist() for _, labels in loader()]
    for size, batches in ((2, 4), (3, 3)):
        shares = [
            [labels.tolist() for _, labels in ShardedLoader(loader(), rank, size)]
            for rank in range(size)
        ]
        assert all(
            len(share) == len(ShardedLoader(loader(), 0, size)) == batches for share in shares
        )
        for k in range(batches):
            assert len({len(share[k]) for share in shares}) == 1  # equal shares
            # rank r holds the r-th contiguous part of the same global batch
            assert [label for share in shares for label in share[k]] == whole[k]
