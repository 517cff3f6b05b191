"""The figure type every runbook plot returns.

Plots are built on ``matplotlib.figure.Figure`` directly, not pyplot: no global registry to leak
figures across a long scheduled run, no dependence on the backend. And they display themselves
as PNG, wherever they are shown (a kernel with or without matplotlib's inline support).
"""
from __future__ import annotations

import io

from matplotlib.figure import Figure as _Figure


class Figure(_Figure):
    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()


def empty_figure(message: str, *, size: tuple[float, float] = (8, 2)) -> Figure:
    """A figure that says why there is nothing to plot, instead of an empty frame."""
    fig = Figure(figsize=size)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#555555")
    ax.set_axis_off()
    return fig
