"""Shared helpers for the training tests."""

from collections.abc import Callable

import pytest

from cnnvit.train import run as run_module


@pytest.fixture
def interrupt_in_second_epoch(monkeypatch) -> Callable[[Callable[[], object]], None]:
    """Run ``start()`` (a train call) with a KeyboardInterrupt at the start of epoch 2."""

    def interrupt(start: Callable[[], object]) -> None:
        real = run_module.train_one_epoch
        calls = {"n": 0}

        def crash_in_second_epoch(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(run_module, "train_one_epoch", crash_in_second_epoch)
        try:
            with pytest.raises(KeyboardInterrupt):
                start()
        finally:
            monkeypatch.setattr(run_module, "train_one_epoch", real)

    return interrupt
