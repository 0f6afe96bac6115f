"""How cost grows with image size: MACs, batch-1 latency and memory, one line per model.

Log-log axes: a cost proportional to pixels (convolutions) is a straight line of slope 2 against
the image side; attention, quadratic in tokens, bends a ViT's line upwards (towards slope 4) as
the images grow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from cnnvit.profile.record import ModelProfile, SizePoint

__all__ = ["sweep_figure"]

_PANELS: list[tuple[str, Callable[[SizePoint], float | None]]] = [
    ("GMACs (forward, 1 image)", lambda p: p.macs / 1e9 if p.macs else None),
    ("latency, batch 1 (ms, median)", lambda p: p.latency_ms.median if p.latency_ms else None),
    (
        "peak memory above the model at rest (MiB)",
        lambda p: p.memory.increase_mib if p.memory else None,
    ),
]


def _series(
    points: Sequence[SizePoint], value: Callable[[SizePoint], float | None]
) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for p in points:
        y = value(p) if p.error is None else None
        if y is not None and y > 0:  # log axes: a zero cannot be drawn
            xs.append(p.image_size)
            ys.append(y)
    return xs, ys


def _safe(text: object) -> str:
    # A '$' in a model name would start matplotlib's mathtext.
    return str(text).replace("$", r"\$")


def sweep_figure(profiles: Sequence[ModelProfile]) -> Figure:
    """Three panels against the image side (px), log axes: GMACs, latency (ms), memory (MiB).

    Memory is the peak above the model at rest during the batch-1 forward (activations and
    workspace; on the CPU the resident-set increase), so that the weights and the process do not
    flatten it. Profiles without a sweep are left out; sizes that failed are skipped.
    """
    fig = Figure(figsize=(13, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    drawn = [p for p in profiles if p.sweep]
    sizes = sorted({p.image_size for prof in drawn for p in prof.sweep})
    for ax, (title, value) in zip(axes, _PANELS, strict=True):
        for profile in drawn:
            xs, ys = _series(profile.sweep, value)
            if xs:
                ax.plot(xs, ys, marker="o", label=_safe(profile.model))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("image side (px)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if sizes:
            ax.set_xticks(sizes, [str(s) for s in sizes])
            ax.xaxis.set_minor_locator(NullLocator())
    if drawn:
        axes[0].legend(fontsize=8)
        first = drawn[0]
        fig.suptitle(
            _safe(f"Cost against image size ({first.device_name}, {first.dtype}, batch 1)"),
            fontsize=11,
        )
    return fig
