"""Timing: every clock read follows a synchronisation; summaries; repeats; peak memory."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch
from profile_fakes import AsyncLinear, FakeAsyncDevice

from cnnvit.profile.speed import (
    Clock,
    RepeatPlan,
    Spread,
    measure_latency,
    measure_memory,
    measure_throughput,
    measure_training,
    time_repeats,
)
from cnnvit.runtime import PeakMemory, Runtime

CPU = Runtime(device=torch.device("cpu"), dtype=torch.float32, channels_last=False)


def _reads_follow_syncs(log: list[str]) -> bool:
    """Every 'now' comes right after a 'sync', with no work launched in between."""
    return all(i > 0 and log[i - 1] == "sync" for i, e in enumerate(log) if e == "now")


# --- the clock seam -----------------------------------------------------------------------------


def test_asynchronous_work_is_timed_only_because_the_clock_synchronises(
    fake_device: FakeAsyncDevice,
) -> None:
    timing = time_repeats(
        lambda: fake_device.launch(0.005), fake_device.clock(), RepeatPlan(warmup=2, repeats=7)
    )
    assert timing.seconds == [pytest.approx(0.005)] * 7
    assert timing.warmup_seconds == [pytest.approx(0.005)] * 2
    assert _reads_follow_syncs(fake_device.log)
    assert fake_device.log.count("now") == 2 * (2 + 7)
    # the same loop with a clock that does not synchronise times the launches: nothing
    unsynced = FakeAsyncDevice()
    blind = Clock(synchronize=lambda: None, now=unsynced.now)
    assert (
        time_repeats(lambda: unsynced.launch(0.005), blind, RepeatPlan(1, 3)).seconds == [0.0] * 3
    )


def test_latency_throughput_and_training_read_the_clock_after_synchronising(
    fake_device: FakeAsyncDevice,
) -> None:
    model = AsyncLinear(fake_device, per_image_s=0.002, in_features=3 * 8 * 8, classes=5)
    clock, plan = fake_device.clock(), RepeatPlan(warmup=1, repeats=4)
    latency = measure_latency(model, CPU, image_size=8, clock=clock, plan=plan)
    assert latency.spread.median == pytest.approx(0.002)  # one image
    infer, _ = measure_throughput(model, CPU, batch_size=6, image_size=8, clock=clock, plan=plan)
    assert infer.spread.median == pytest.approx(0.012)
    assert infer.rate(6).median == pytest.approx(500.0)  # 1 / 0.002 images per second
    train, _ = measure_training(
        model, CPU, batch_size=6, image_size=8, num_classes=5, clock=clock, plan=plan
    )
    assert train.rate(6).median == pytest.approx(500.0)
    assert fake_device.log.count("launch") == 3 * (1 + 4)
    assert _reads_follow_syncs(fake_device.log)


def test_device_clocks() -> None:
    cpu = Clock.for_device(torch.device("cpu"))
    assert cpu.read() <= cpu.read()
    if torch.cuda.is_available():  # pragma: no cover - GPU machines only
        calls = []
        real = torch.cuda.synchronize
        try:
            torch.cuda.synchronize = lambda *a: calls.append(a)  # type: ignore[assignment]
            Clock.for_device(torch.device("cuda")).read()
        finally:
            torch.cuda.synchronize = real
        assert calls


# --- repeats and summaries ----------------------------------------------------------------------


def test_spread_matches_numpy_and_statistics() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0]
    s = Spread.of(values)
    assert s.median == statistics.median(values)
    assert s.p95 == pytest.approx(np.percentile(values, 95))
    assert (s.q1, s.q3) == (np.percentile(values, 25), np.percentile(values, 75))
    assert s.iqr == pytest.approx(np.percentile(values, 75) - np.percentile(values, 25))
    assert s.std == pytest.approx(statistics.stdev(values))
    assert s.mean == pytest.approx(statistics.mean(values))
    assert (s.min, s.max, s.n) == (1.0, 9.0, 11)
    ms = s.scaled(1000)
    assert ms.median == 1000 * s.median and ms.n == 11
    assert Spread.from_dict(s.to_dict()) == s
    assert Spread.of([2.5]).std == 0.0
    with pytest.raises(ValueError, match="no values"):
        Spread.of([])


def test_repeats_by_time_are_clamped() -> None:
    plan = RepeatPlan(target_s=1.0, min_repeats=5, max_repeats=50)
    assert plan.count(0.1) == 10
    assert plan.count(1.0) == 5  # at least min_repeats, for a spread
    assert plan.count(0.001) == 50
    assert plan.count(None) == 5
    assert RepeatPlan(repeats=3).count(0.001) == 3
    with pytest.raises(ValueError, match="repeats"):
        RepeatPlan(repeats=0)


def test_repeats_chosen_from_the_last_warmup_call(fake_device: FakeAsyncDevice) -> None:
    durations = iter([0.5, 0.125] + [0.125] * 100)  # the first warm-up is slow (compilation)
    timing = time_repeats(
        lambda: fake_device.launch(next(durations)),
        fake_device.clock(),
        RepeatPlan(warmup=2, target_s=1.0),
    )
    assert timing.warmup_seconds == [0.5, 0.125]
    assert len(timing.seconds) == 8  # 1 s / 0.125 s


def test_inputs_follow_the_memory_layout(fake_device: FakeAsyncDevice) -> None:
    model = AsyncLinear(fake_device, per_image_s=0.001, in_features=3 * 8 * 8, classes=5)
    layout = Runtime(device=torch.device("cpu"), dtype=torch.float32, channels_last=True)
    measure_latency(model, layout, image_size=8, plan=RepeatPlan(1, 2))
    assert model.channels_last_inputs == [True] * 3


def test_training_changes_only_trainable_weights_and_needs_some() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4), torch.nn.Linear(4, 3))
    model[1].requires_grad_(False)
    frozen, trained = model[1].weight.clone(), model[2].weight.clone()
    measure_training(model, CPU, batch_size=4, image_size=2, num_classes=3, plan=RepeatPlan(1, 2))
    assert torch.equal(model[1].weight, frozen)
    assert not torch.equal(model[2].weight, trained)
    assert not model.training  # left in eval mode
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        measure_training(model, CPU, batch_size=4, image_size=2, num_classes=3)


# --- memory -------------------------------------------------------------------------------------


def _resettable() -> bool:
    peak = PeakMemory(torch.device("cpu"))
    peak.reset()
    return peak.resettable


@pytest.mark.skipif(not _resettable(), reason="no /proc/self/clear_refs: CPU peak not resettable")
def test_cpu_peak_belongs_to_the_measured_work() -> None:
    cpu = torch.device("cpu")
    mib = 2**20
    big = torch.ones(384 * mib // 4)  # 384 MiB, touched
    del big  # freed: the resident set drops, but the process high-water mark stays up
    before = PeakMemory(cpu)
    high_water = before.peak_mb()

    def small() -> float:
        return torch.ones(64 * mib // 4).sum().item()  # 64 MiB

    _, small_peak = measure_memory(cpu, small)
    assert small_peak.resettable
    assert 56 <= small_peak.increase_mib <= 140
    assert small_peak.peak_mib < high_water - 200  # the earlier 384 MiB is not in the figure
    _, big_peak = measure_memory(cpu, lambda: torch.ones(256 * mib // 4).sum().item())
    assert 240 <= big_peak.increase_mib <= 330
    assert big_peak.reserved_mib is None and "VmHWM" in big_peak.source
