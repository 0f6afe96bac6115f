"""Numbers as people read them, one way everywhere: percentages, mean ± spread, counts.

Torch-free; used by the report, the analyses' report sections and the terminal summaries.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["as_number", "count", "is_missing", "json_number", "pct", "pm"]

MISSING = "—"


def is_missing(x: object) -> bool:
    """None, NaN, pandas' NA (which no float can be made of), or anything not a number."""
    if x is None or isinstance(x, bool):
        return x is None
    try:
        return not math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True


def as_number(x: Any) -> float:
    """``x`` as a float; NaN for None, text and other things that are not numbers."""
    if isinstance(x, bool):
        return math.nan
    try:
        return math.nan if x is None else float(x)
    except (TypeError, ValueError):
        return math.nan


def json_number(x: object) -> float:
    """A number an analysis wrote to JSON, or NaN: text ("0.8"), booleans and nulls are not
    measurements."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def pct(x: object, digits: int = 1, *, sep: str = " ", missing: str = MISSING) -> str:
    """A share as a percentage: ``pct(0.8617, 2)`` is ``86.17 %``; ``missing`` for no number."""
    if is_missing(x):
        return missing
    return f"{100 * float(x):.{digits}f}{sep}%"  # type: ignore[arg-type]


def pm(mean: object, std: object, digits: int = 2, *, missing: str = MISSING) -> str:
    """``mean ± std`` as percentages (``86.17 ± 0.18 %``); the mean alone without a spread."""
    if is_missing(mean):
        return missing
    if is_missing(std):
        return pct(mean, digits)
    return f"{100 * float(mean):.{digits}f} ± {100 * float(std):.{digits}f} %"  # type: ignore[arg-type]


def count(x: object, *, missing: str = MISSING) -> str:
    """A whole number with thousands separators: ``12,000``."""
    return missing if is_missing(x) else f"{int(float(x)):,}"  # type: ignore[arg-type]
