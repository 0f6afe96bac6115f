"""Config overrides as keyword arguments: ``recipe__train__epochs=2`` -> nested values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnnvit.config import ConfigError, nested

__all__ = ["SEPARATOR", "nested_values"]

SEPARATOR = "__"  # stands for the dot of a config key: a keyword argument cannot hold one


def nested_values(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"recipe__train__epochs": 2}`` -> ``{"recipe": {"train": {"epochs": 2}}}``.

    Raises:
        ConfigError: one keyword sets a section that another sets a key inside.
    """
    keys = {keyword: tuple(keyword.split(SEPARATOR)) for keyword in overrides}
    for keyword, parts in keys.items():
        inside = [k for k, p in keys.items() if len(p) > len(parts) and p[: len(parts)] == parts]
        if inside:
            raise ConfigError(f"{keyword} and {inside[0]} both set {inside[0]}; set it once")
    return nested(overrides, SEPARATOR)
