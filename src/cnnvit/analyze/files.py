"""File names for an analysis's per-model outputs, derived from the models' labels."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["file_stems"]


def file_stems(labels: Sequence[str]) -> list[str]:
    """File-name-safe, distinct stems for model labels, in order: anything but letters, digits
    and ``._+-`` becomes ``_`` (``a/b`` -> ``a_b``); labels that sanitise alike are numbered
    (``a_b``, ``a_b-2``)."""
    stems: list[str] = []
    for label in labels:
        stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(label)).strip("._") or "model"
        base, n = stem, 2
        while stem in stems:
            stem, n = f"{base}-{n}", n + 1
        stems.append(stem)
    return stems
