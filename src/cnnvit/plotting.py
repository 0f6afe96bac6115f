"""Plotting helpers shared by the analyses and the report: one style, one palette, PNG bytes
that are the same for the same figure, and image mosaics.

Figures are built on ``matplotlib.figure.Figure`` directly (not pyplot), so nothing global is
touched: no backend switch, no open-figure registry that leaks memory across a long study. Each
model keeps one colour in every figure (its position in the study), so a reader can follow it.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "PALETTE",
    "STYLE",
    "Cell",
    "format_count",
    "model_colors",
    "mosaic_figure",
    "plain",
    "png_bytes",
    "save_png",
    "shown_columns",
    "style",
    "wrap_name",
]

DPI = 120
# Okabe-Ito: distinguishable with the common colour-vision deficiencies (yellow left out: too
# pale on white).
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
# matplotlib's own defaults differ between versions and user rc files; pin what shows.
STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "svg.hashsalt": "cnnvit",
}


@contextmanager
def style(**overrides: object) -> Iterator[None]:
    """matplotlib's rc settings as :data:`STYLE` (updated by ``overrides``) while open."""
    with mpl.rc_context({**STYLE, **overrides}):
        yield


def model_colors(models: Sequence[str]) -> dict[str, str]:
    """A fixed colour per model, by its position in the study."""
    return {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}


def format_count(n: float) -> str:
    """Short image counts for axis ticks: 600, 3k, 12k, 1.5k, 2M."""
    n = float(n)
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            value = n / scale
            text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
            return text.removesuffix(".0") + unit
    return f"{n:.0f}"


def plain(text: object) -> str:
    """Text from the data, safe for matplotlib: a '$' would start mathtext and may not parse."""
    return str(text).replace("$", r"\$")


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes; identical bytes for identical figures (no software/date tag)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, facecolor="white")
    return buf.getvalue()


def save_png(fig: Figure, path: Path) -> bytes:
    """Write the figure as PNG to ``path``; returns the bytes written."""
    data = png_bytes(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


# --- image mosaics -------------------------------------------------------------------------------

MAX_COLUMNS = 16  # layer columns drawn in a grid; more are subsampled evenly, first and last kept


def shown_columns(count: int, limit: int = MAX_COLUMNS) -> list[int]:
    """Indices of at most ``limit`` of ``count`` layers, evenly spread, first and last kept."""
    if count <= limit:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, limit).round()})


@dataclass
class Cell:
    """One picture of a grid: (h, w, 3) float in [0, 1] or uint8, a title above it."""

    picture: np.ndarray
    title: str = ""
    color: str = "black"


def mosaic_figure(
    rows: Sequence[Sequence[Cell]],
    title: str,
    *,
    cell_inches: float = 1.2,
    fontsize: float = 7,
) -> Figure:
    """A grid of pictures (rows of cells, each ``cell_inches`` wide) with a title over each
    cell, drawn as ONE image (pictures resized, nearest, to the largest side) on one axes."""
    pictures = [[_as_rgb(c.picture) for c in row] for row in rows]
    title_lines = max(c.title.count("\n") + 1 for row in rows for c in row)
    side = max(max(p.shape[0], p.shape[1]) for row in pictures for p in row)
    title_in = fontsize / 72 * 1.25 * title_lines + 0.06  # inches of text above each cell
    header_in, pad_in = 0.35, 0.06
    gap = math.ceil(side * title_in / cell_inches)  # pixels of title room above each cell
    pad = max(1, round(side * pad_in / cell_inches))  # pixels between columns
    n_rows, n_cols = len(pictures), max(len(row) for row in pictures)
    mosaic = np.ones((n_rows * (gap + side), n_cols * (side + pad) - pad, 3), np.float32)
    for r, row in enumerate(pictures):
        for c, picture in enumerate(row):
            top, left = r * (gap + side) + gap, c * (side + pad)
            mosaic[top : top + side, left : left + side] = _resized(picture, side)
    width = mosaic.shape[1] / side * cell_inches
    height = mosaic.shape[0] / side * cell_inches + header_in
    with style(**{"axes.grid": False}):
        fig = Figure(figsize=(width, height))
        ax = fig.add_axes((0.0, 0.0, 1.0, 1 - header_in / height))
        ax.imshow(mosaic, aspect="auto", interpolation="nearest")
        ax.set_axis_off()
        for r, row in enumerate(rows):
            for c, cell in enumerate(row):
                if cell.title:
                    x, y = c * (side + pad) + side / 2, r * (gap + side) + gap - 0.5
                    ax.text(
                        x,
                        y,
                        plain(cell.title),
                        ha="center",
                        va="bottom",
                        fontsize=fontsize,
                        color=cell.color,
                    )
        fig.text(0.5, 1 - 0.5 * header_in / height, plain(title), ha="center", va="center")
    return fig


def wrap_name(name: str, width: int = 16) -> str:
    """A module name broken after dots into lines of about ``width`` characters, so that long
    names (``layer4.0.downsample.0``) stay over their own cell."""
    lines = [""]
    for part in re.split(r"(?<=\.)", name):
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def _as_rgb(picture: np.ndarray) -> np.ndarray:
    """(h, w), (h, w, 1) or (h, w, 3), uint8 or float -> float32 (h, w, 3) in [0, 1]."""
    p = np.asarray(picture)
    p = p.astype(np.float32) / 255 if p.dtype == np.uint8 else p.astype(np.float32)
    if p.ndim == 2:
        p = p[..., None]
    return np.clip(np.repeat(p, 3, axis=2) if p.shape[2] == 1 else p[..., :3], 0, 1)


def _resized(picture: np.ndarray, side: int) -> np.ndarray:
    """(h, w, 3) -> (side, side, 3), nearest: a 4 x 4 map shows as 4 x 4 blocks.

    Source pixel ``floor(i * in / out)`` with the scale in float32, as torch's ``nearest``
    interpolation picks it, so the mosaics look as they did when torch drew them."""
    h, w = picture.shape[:2]
    if (h, w) == (side, side):
        return picture
    rows = np.minimum(np.floor(np.arange(side, dtype=np.float32) * np.float32(h / side)), h - 1)
    cols = np.minimum(np.floor(np.arange(side, dtype=np.float32) * np.float32(w / side)), w - 1)
    return picture[rows.astype(np.int64)][:, cols.astype(np.int64)]
