"""Seed 003's recipe: model EMA in the loop, stochastic depth, and a run with all of it.

The run combines mixup, cutmix, EMA and label smoothing; it must learn and resume exactly.
"""

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from timm.utils import ModelEmaV3

from cnnvit.config import ModelConfig, OptimConfig, TrainConfig, load_run_config
from cnnvit.data.augment import BatchTransform
from cnnvit.evaluate.run import evaluate_run
from cnnvit.models.build import build_model
from cnnvit.runtime import resolve_runtime
from cnnvit.train.checkpoint import latest_checkpoint_dir, load_checkpoint
from cnnvit.train.loop import TrainingStep, make_loss, train_one_epoch
from cnnvit.train.optim import build_optimizer, build_scheduler
from cnnvit.train.run import resume, train

TIMING = {"seconds", "images_per_second", "peak_memory_mb"}


def _steps(decay: float, steps: int = 6) -> tuple[torch.nn.Module, ModelEmaV3]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    ema = ModelEmaV3(model, decay=decay)
    g = torch.Generator().manual_seed(0)
    loader = [
        (torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8, generator=g), torch.arange(8) % 3)
        for _ in range(steps)
    ]
    optim = OptimConfig(name="sgd", lr=0.5, weight_decay=0.0, warmup_epochs=0)
    optimizer = build_optimizer(model, optim)
    step = TrainingStep(
        model,
        optimizer,
        build_scheduler(optimizer, optim, steps_per_epoch=steps, total_steps=steps),
        loss_fn=make_loss(0.0),
        runtime=resolve_runtime(TrainConfig(device="cpu")),
        ema=ema,
    )
    transform = BatchTransform(size=4, channels=1, mean=(0.5,), std=(0.25,))
    train_one_epoch(step, loader, transform, generator=g, first_step=0)
    return model, ema


def test_ema_lags_the_trained_weights_and_equals_them_at_decay_zero():
    model, ema = _steps(0.9)
    live, avg = model.state_dict(), ema.module.state_dict()
    assert any(not torch.allclose(live[k], avg[k]) for k in live)
    model, ema = _steps(0.0)
    live, avg = model.state_dict(), ema.module.state_dict()
    assert all(torch.equal(live[k], avg[k]) for k in live)


def test_drop_path_rate_reaches_a_timm_model():
    """Stochastic depth is a model kwarg: ``model.kwargs: {drop_path_rate: 0.1}``."""
    from timm.layers import DropPath

    cfg = ModelConfig(name="vit_mini", kwargs={"drop_path_rate": 0.1})
    model = build_model(cfg, num_classes=10, in_chans=3, img_size=32)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    # timm spreads the rate linearly over depth: the last block gets the full 0.1
    assert rates and max(rates) == pytest.approx(0.1) and min(rates) >= 0
    plain = build_model(ModelConfig(name="vit_mini"), num_classes=10, in_chans=3, img_size=32)
    assert not any(isinstance(m, DropPath) for m in plain.modules())


def _cfg(out: Path, *extra: str):
    return load_run_config(
        None,
        [
            "data.spec=synthetic",
            "model.name=resnet_mini",
            f"output.dir={out}",
            "train.epochs=2",
            "train.batch_size=64",
            "optim.lr=3e-3",
            "optim.label_smoothing=0.1",
            "data.augment.mixup_alpha=0.8",
            "data.augment.cutmix_alpha=1.0",
            "train.ema_decay=0.99",
            "train.ema_warmup=true",
            "train.progress=false",
            "train.threads=2",
            *extra,
        ],
    )


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "epochs.csv").open() as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recipe") / "a"
    assert train(_cfg(out))["status"] == "completed"
    return out


def test_recipe_run_learns_and_evaluates_the_ema(recipe_run: Path):
    results = json.loads((recipe_run / "results.json").read_text())
    assert results["evaluated_weights"] == "ema"
    assert results["test_top1"] > 0.5  # chance is 0.1
    folder = latest_checkpoint_dir(recipe_run)
    live, ema = load_file(folder / "model.safetensors"), load_file(folder / "ema.safetensors")
    assert live.keys() == ema.keys()
    assert any(not torch.equal(live[k], ema[k]) for k in live if live[k].is_floating_point())
    # re-evaluating the run folder uses the EMA too, and gives the reported test accuracy
    metrics = evaluate_run(recipe_run)
    assert metrics["top1"] == pytest.approx(results["test_top1"])


def test_resume_with_ema_and_mixing_is_exact(
    recipe_run: Path, tmp_path: Path, interrupt_in_second_epoch
):
    out = tmp_path / "b"
    interrupt_in_second_epoch(lambda: train(_cfg(out)))
    assert load_checkpoint(out).ema_weights is not None
    assert resume(out)["status"] == "completed"
    assert _rows(out) == _rows(recipe_run)
