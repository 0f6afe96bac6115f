"""profile_model / profile_run / profile_sizes: figures, conditions, JSON, table, figure, errors."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from profile_fakes import AsyncLinear, FakeAsyncDevice
from rich.console import Console

from cnnvit.config import (
    ConfigError,
    DataConfig,
    FreezeConfig,
    ModelConfig,
    ProfileConfig,
    RunConfig,
    dump_yaml,
    validate_config,
)
from cnnvit.models.registry import UnknownModelError, create_model
from cnnvit.models.surgery import count_parameters, freeze_all_but_last_blocks
from cnnvit.profile.cost import count_flops
from cnnvit.profile.plot import sweep_figure
from cnnvit.profile.profiler import profile_model, profile_run, profile_sizes
from cnnvit.profile.record import (
    ModelProfile,
    _num,
    profile_rows,
    profile_table,
    read_profiles_json,
    write_profiles_json,
)
from cnnvit.runtime import device_name
from cnnvit.train.checkpoint import save_checkpoint
from cnnvit.ui import progress_bar

# One thread: see conftest; the module-scoped profiles are taken before its fixture runs.
FAST = dict(repeats=3, warmup=1, device="cpu", threads=1)


def fast(**settings) -> ProfileConfig:
    """A quick profile on one CPU thread, with ``settings`` on top."""
    return ProfileConfig(**{**FAST, **settings})


@pytest.fixture(scope="module")
def mini_profiles() -> list[ModelProfile]:
    """resnet_mini and vit_mini at 32 px, batch 4, with a two-size sweep."""
    return [
        profile_model(
            name, fast(image_size=32, batch_size=4, sizes=[16, 32]), num_classes=10, progress=False
        )
        for name in ("resnet_mini", "vit_mini")
    ]


def test_the_profile_reports_independently_recomputed_costs(mini_profiles) -> None:
    for p in mini_profiles:
        reference = create_model(p.model, num_classes=10, img_size=32)
        assert p.cost.params_total == sum(x.numel() for x in reference.parameters())
        assert p.cost.params_trainable == p.cost.params_total
        assert p.cost.macs == count_flops(reference, 32).macs
        assert p.cost.disk_bytes > 4 * p.cost.params_total  # fp32 tensors + header
        for point in p.sweep:
            at_size = create_model(p.model, num_classes=10, img_size=point.image_size)
            assert point.macs == count_flops(at_size, point.image_size).macs
            assert point.latency_ms is not None and point.latency_ms.n == 3
            assert point.memory is not None and point.memory.resettable
        assert p.sweep[1].macs > p.sweep[0].macs


def test_the_profile_records_its_conditions_and_repeats(mini_profiles) -> None:
    p = mini_profiles[0]
    assert p.device == "cpu" and p.device_name == device_name(torch.device("cpu"))  # 1 thread
    assert p.torch_version == torch.__version__ and p.threads == 1
    assert p.device_name.endswith("(1 threads)")
    assert (p.dtype, p.channels_last, p.compiled) == ("fp32", False, False)
    assert (p.batch_size, p.image_size, p.in_chans, p.num_classes) == (4, 32, 3, 10)
    assert p.repeats == {"latency": 3, "throughput": 3, "train": 3}
    assert p.latency_ms.n == p.throughput.n == p.train_throughput.n == 3
    assert p.latency_ms.min <= p.latency_ms.median <= p.latency_ms.p95 <= p.latency_ms.max
    assert p.load_s is not None and 0 < p.load_s < 30
    assert p.compile_s is None
    assert p.memory_infer.peak_mib >= p.memory_infer.increase_mib > 0
    assert p.memory_train is not None and p.memory_train.increase_mib > 0


def test_a_fake_asynchronous_model_gives_exact_figures(fake_device: FakeAsyncDevice) -> None:
    """End to end through profile_model: the figures are the fake device's work, exactly."""
    model = AsyncLinear(fake_device, per_image_s=0.004, in_features=3 * 8 * 8, classes=7)
    p = profile_model(
        None,
        fast(image_size=8, batch_size=5, channels_last="on"),
        model=model,
        clock=fake_device.clock(),
        progress=False,
    )
    assert p.latency_ms.median == pytest.approx(4.0)
    assert p.latency_ms.iqr == pytest.approx(0.0, abs=1e-9)
    assert p.throughput.median == pytest.approx(250.0)
    assert p.train_throughput is not None and p.train_throughput.median == pytest.approx(250.0)
    assert p.num_classes == 7  # from the model
    assert p.cost.macs == 3 * 8 * 8 * 7  # one linear layer
    assert p.load_s is None and "no load time" in p.notes[0]
    assert model.channels_last_inputs == []  # the caller's module is copied, never run
    assert all(f == "now" or f == "sync" or f == "launch" for f in fake_device.log)
    reads = [i for i, e in enumerate(fake_device.log) if e == "now"]
    assert reads and all(fake_device.log[i - 1] == "sync" for i in reads)


def test_compile_time_is_the_first_call(fake_device: FakeAsyncDevice) -> None:
    p = profile_model(
        "resnet_mini",
        fast(image_size=16, batch_size=2, compile="eager", train=False),
        num_classes=10,
        progress=False,
    )
    assert p.compiled == "eager"
    assert p.compile_s is not None and p.compile_s > 0
    assert p.train_throughput is None and "train" not in p.repeats
    with pytest.raises(ValueError, match="warmup >= 1"):
        profile_model("resnet_mini", ProfileConfig(compile=True, warmup=0), progress=False)


def test_json_round_trip(mini_profiles, tmp_path) -> None:
    path = write_profiles_json(mini_profiles, tmp_path / "sub" / "profile.json")
    data = json.loads(path.read_text())
    assert data["format"] == "cnnvit-profile/1"
    first = data["profiles"][0]
    p = mini_profiles[0]
    assert first["model"] == "resnet_mini"
    assert first["cost"]["macs"] == p.cost.macs and first["cost"]["flops"] == p.cost.flops
    assert first["cost"]["disk_mb"] == p.cost.disk_bytes / 1e6
    assert set(first["cost"]["counted_ops"]) == set(p.cost.flops_by_op)
    assert first["latency_ms"]["median"] == p.latency_ms.median
    assert first["latency_ms"]["iqr"] == pytest.approx(p.latency_ms.q3 - p.latency_ms.q1)
    assert first["throughput"]["median"] == p.throughput.median
    assert first["memory_infer"]["peak_mib"] == p.memory_infer.peak_mib
    assert [s["image_size"] for s in first["sweep"]] == [16, 32]
    assert first["sweep"][1]["gmacs"] == p.sweep[1].macs / 1e9
    assert (first["device_name"], first["batch_size"], first["dtype"]) == (
        p.device_name,
        4,
        "fp32",
    )
    assert read_profiles_json(path) == mini_profiles
    (tmp_path / "other.json").write_text(json.dumps({"profiles": []}))
    with pytest.raises(ValueError, match="not a cnnvit profile file"):
        read_profiles_json(tmp_path / "other.json")


def test_table_and_rows_show_the_figures(mini_profiles) -> None:
    console = Console(record=True, width=400)
    console.print(profile_table(mini_profiles))
    text = console.export_text()
    for p in mini_profiles:
        assert p.model in text
        assert f"{p.cost.gmacs:.3f}" in text
        assert f"{p.latency_ms.median:.2f} / {p.latency_ms.p95:.2f}" in text
        t = p.throughput
        assert f"{_num(t.median)} ({_num(t.q1)}-{_num(t.q3)})" in text
    assert [_num(x) for x in (1234.5, 123.4, 12.345, 1.2345, 0.012345)] == [
        "1,234",
        "123",
        "12.3",
        "1.23",
        "0.0123",
    ]
    assert "GMACs" in text and "compile s" in text and "interquartile" in text
    rows = profile_rows(mini_profiles)
    assert [r["model"] for r in rows] == ["resnet_mini", "vit_mini"]
    assert rows[1]["gmacs"] == mini_profiles[1].cost.gmacs
    assert rows[0]["train_img_s"] == mini_profiles[0].train_throughput.median


def test_sweep_figure_draws_each_models_points(mini_profiles) -> None:
    fig = sweep_figure(mini_profiles)
    axes = fig.get_axes()
    assert len(axes) == 3
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in axes)
    macs_lines = axes[0].get_lines()
    assert [line.get_label() for line in macs_lines] == ["resnet_mini", "vit_mini"]
    for line, p in zip(macs_lines, mini_profiles, strict=True):
        assert list(line.get_xdata()) == [16, 32]
        assert list(line.get_ydata()) == [pt.macs / 1e9 for pt in p.sweep]
    latency = axes[1].get_lines()[1]
    assert list(latency.get_ydata()) == [pt.latency_ms.median for pt in mini_profiles[1].sweep]


def test_sweep_reports_sizes_a_model_cannot_take() -> None:
    points = profile_sizes("vit_mini", [16, 30], fast(), num_classes=10, progress=False)
    assert points[0].error is None and points[0].macs is not None
    assert points[1].macs is None and "not a multiple of patch_size 4" in points[1].error
    with pytest.raises(UnknownModelError, match="unknown model 'vit_mni'"):
        profile_sizes("vit_mni", [16], fast(), progress=False)


def test_errors_name_the_problem() -> None:
    with pytest.raises(UnknownModelError, match=r"unknown model 'resnet5000'.*resnet50"):
        profile_model("resnet5000", fast(), progress=False)
    with pytest.raises(ConfigError, match=r"'precision'.*'auto', 'fp32' or 'bf16' \(got 'fp16'\)"):
        validate_config(ProfileConfig, {"precision": "fp16"})
    with pytest.raises(ValueError, match="a model name or a model"):
        profile_model(progress=False)
    with pytest.raises(ValueError, match="not with model="):
        profile_model(model=torch.nn.Linear(2, 2), weights="w.safetensors", progress=False)
    with pytest.raises(ValueError, match="sweep needs the model's architecture name"):
        profile_model(None, ProfileConfig(sizes=[8]), model=torch.nn.Linear(2, 2), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible; use cpu"):
            profile_model("resnet_mini", ProfileConfig(device="cuda"), progress=False)


def test_bf16_autocast_runs_inside_a_callers_progress_display() -> None:
    with progress_bar() as bar:
        p = profile_model(
            "resnet_mini",
            fast(image_size=16, batch_size=2, precision="bf16", train=False),
            num_classes=10,
        )
        assert bar is not None and bar.tasks == []  # its task is gone once it has finished
    assert p.dtype == "bf16"
    assert p.cost.macs == count_flops(create_model("resnet_mini", num_classes=10), 16).macs


def test_run_folder_profile_uses_the_runs_model_and_weights(tmp_path) -> None:
    cfg = RunConfig(
        model=ModelConfig(name="resnet_mini", freeze=FreezeConfig(trainable_blocks=1)),
        data=DataConfig(spec="fashion-mnist", channels=1),
    )
    run = tmp_path / "run-a"
    run.mkdir()
    dump_yaml(cfg, run / "config.yaml")
    (run / "results.json").write_text(json.dumps({"num_classes": 6, "image_size": 20}))
    trained = timm.create_model("resnet_mini", num_classes=6, in_chans=1)
    save_checkpoint(run, 3, trained, {"epoch": 3})
    p = profile_run(run, fast(batch_size=2, train=False), progress=False)
    assert p.model == "resnet_mini (run-a)" and p.architecture == "resnet_mini"
    assert p.weights is not None and p.weights.endswith("epoch-0003/model.safetensors")
    assert (p.num_classes, p.in_chans, p.image_size) == (6, 1, 20)
    freeze_all_but_last_blocks(trained, 1)
    assert (p.cost.params_total, p.cost.params_trainable) == count_parameters(trained)
    assert p.cost.params_trainable < p.cost.params_total
    assert p.cost.macs == count_flops(trained, 20, in_chans=1).macs
    again = profile_run(run, fast(image_size=24, batch_size=2, train=False), progress=False)
    assert again.image_size == 24
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        profile_run(tmp_path)
