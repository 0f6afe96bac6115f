"""Profile-test set-up: offline hub, built-ins registered, a fixed seed, a fake device."""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from profile_fakes import FakeAsyncDevice

import cnnvit.models  # noqa: F401  (registers the built-ins)


@pytest.fixture
def fake_device() -> FakeAsyncDevice:
    return FakeAsyncDevice()


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine two threads stall each other (a forward of
    3 ms takes hundreds when another process holds a core); the tests check figures, not speed."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
