"""Fixtures of the report tests: fabricated study folders (:mod:`fabricate`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fabricate import make_study


@pytest.fixture(scope="session")
def study_factory() -> Callable[..., Path]:
    """``make_study`` as a fixture, so test modules need no import path tricks."""
    return make_study
