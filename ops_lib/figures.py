"""The figure type every runbook plot returns.

Plots are built on ``matplotlib.figure.Figure`` directly, not pyplot: no global registry to leak
figures across a long scheduled run, no dependence on the backend. And they display themselves
as PNG, wherever they are shown (a kernel with or without matplotlib's inline support).

Labels carry target text (statement texts, plan names, organisation ids), so a figure draws all
its text literally: a ``$`` is a dollar sign, never the start of mathtext or TeX.
"""
from __future__ import annotations

import io
from contextlib import contextmanager
from typing import Any, Iterator

import matplotlib as mpl
from matplotlib.figure import Figure as _Figure
from matplotlib.text import Text

from .literal import one_line

_LITERAL_RC = {"text.parse_math": False, "text.usetex": False}


class Figure(_Figure):
    def draw(self, renderer) -> None:
        with _literal_text(self):
            super().draw(renderer)

    def get_tightbbox(self, renderer=None, **kwargs):
        # measured before drawing when saved with bbox_inches="tight" (IPython's inline display)
        with _literal_text(self):
            return super().get_tightbbox(renderer, **kwargs)

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()


@contextmanager
def _literal_text(fig: _Figure) -> Iterator[None]:
    """Every text of ``fig`` unparsed, and any made while drawing (tick labels) too.

    A Text reads ``text.parse_math`` when it is created, so the texts already there are switched
    off one by one and the rc setting covers those the draw creates.
    """
    with mpl.rc_context(_LITERAL_RC):
        for text in fig.findobj(Text):
            text.set_parse_math(False)
            text.set_usetex(False)
        yield


def label(value: Any, *, limit: int = 60) -> str:
    """Target text for a label: one line, control characters as escapes, at most ``limit`` characters."""
    return one_line(value, limit=limit)


def empty_figure(message: str, *, size: tuple[float, float] = (8, 2)) -> Figure:
    """A figure that says why there is nothing to plot, instead of an empty frame."""
    fig = Figure(figsize=size)
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#555555")
    ax.set_axis_off()
    return fig
