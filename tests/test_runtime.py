"""One runtime policy: the same config words resolve the same way for training, evaluation,
profiling and the analyses."""

from __future__ import annotations

import pytest
import torch

import cnnvit.runtime as runtime_module
from cnnvit.config import InferenceConfig, ProfileConfig, RuntimeConfig, TrainConfig
from cnnvit.runtime import RuntimeSettingError, num_threads, resolve_runtime

CONFIGS = [RuntimeConfig, TrainConfig, ProfileConfig, InferenceConfig]


@pytest.mark.parametrize("config", CONFIGS)
def test_auto_means_the_same_everywhere_on_the_cpu(config):
    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU here")
    got = resolve_runtime(config(device="auto", precision="auto", channels_last="auto"))
    assert (got.device.type, got.dtype, got.channels_last) == ("cpu", torch.float32, False)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("has_bf16", [True, False])
def test_bf16_on_the_cpu_exactly_where_the_cpu_has_it(config, has_bf16, monkeypatch):
    monkeypatch.setattr(runtime_module, "cpu_supports_bf16", lambda: has_bf16)
    words = config(device="cpu", precision="bf16")
    if has_bf16:
        got = resolve_runtime(words)
        assert got.dtype == torch.bfloat16 and got.autocast and got.precision == "bf16"
    else:
        with pytest.raises(RuntimeSettingError, match=r"has no bf16 arithmetic.*use fp32"):
            resolve_runtime(words)


def test_settings_the_machine_cannot_give_are_refused_with_what_to_use():
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeSettingError, match="no CUDA GPU is visible; use cpu"):
            resolve_runtime(RuntimeConfig(device="cuda"))
    with pytest.raises(RuntimeSettingError, match="unknown device 'gpu0'"):
        resolve_runtime(RuntimeConfig(device="gpu0"))


def test_channels_last_and_threads_are_applied_and_given_back():
    got = resolve_runtime(RuntimeConfig(device="cpu", channels_last="on", threads=1))
    assert got.channels_last and got.threads == 1
    before = torch.get_num_threads()
    with got.threads_applied():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with num_threads(None):  # None: as set
        assert torch.get_num_threads() == before
