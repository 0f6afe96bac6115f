"""Model-test set-up: offline hub, built-ins registered, a fixed seed."""

from __future__ import annotations

import os

# The root conftest sets this too; repeat it so `pytest tests/models` alone is offline as well.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import cnnvit.models  # noqa: F401  (registers the built-ins)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
