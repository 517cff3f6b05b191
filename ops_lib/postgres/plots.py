"""Figures for the slow_queries notebook.

Figures are ``ops_lib.figures.Figure``: no pyplot state, and they display themselves as PNG.
"""
from __future__ import annotations

import textwrap

from ..figures import Figure, empty_figure, label


_STATE_COLOURS = {
    "active": "#1565c0",
    "idle": "#9e9e9e",
    "idle in transaction": "#ef6c00",
    "idle in transaction (aborted)": "#c62828",
    "fastpath function call": "#6a1b9a",
    "disabled": "#455a64",
}


def _label(row: dict, width: int = 60) -> str:
    text = " ".join(str(row.get("query") or "").split())
    text = textwrap.shorten(text, width=width, placeholder="…") if text else "(no text)"
    return label(f"{row.get('queryid', '')}  {text}".strip(), limit=width + 30)


def plot_top_statements(rows: list[dict], *, value: str = "total_ms", title: str | None = None) -> Figure:
    """Horizontal bars of total execution time (or ``value``) per statement, biggest on top."""
    rows = [r for r in rows if r.get(value) is not None]
    if not rows:
        return empty_figure("No statements recorded (pg_stat_statements empty or not available)")
    rows = sorted(rows, key=lambda r: r[value])
    fig = Figure(figsize=(10, max(2.0, 0.45 * len(rows) + 1)), layout="constrained")
    ax = fig.add_subplot()
    seconds = value.endswith("_ms") and max(r[value] for r in rows) >= 10_000
    values = [r[value] / 1000 if seconds else r[value] for r in rows]
    ax.barh(range(len(rows)), values, color="#1565c0")
    ax.set_yticks(range(len(rows)), [_label(r) for r in rows], fontsize=8, family="monospace")
    unit = "s" if seconds else ("ms" if value.endswith("_ms") else "")
    ax.set_xlabel(f"{value.replace('_ms', '').replace('_', ' ')} time ({unit})" if unit else value)
    ax.set_title(title or "Top statements by total execution time")
    for y, (row, v) in enumerate(zip(rows, values)):
        share = row.get("share_pct")
        ax.annotate(f" {v:,.1f}" + (f" ({share:.0f}%)" if share is not None else ""), (v, y),
                    va="center", fontsize=8)
    ax.margins(x=0.15)
    return fig


def plot_connections_by_state(rows: list[dict], max_connections: int | None = None, *,
                              usable: int | None = None) -> Figure:
    """One stacked bar of client connections by state, against max_connections (and the limit
    for ordinary roles, ``usable``, when given)."""
    rows = [r for r in rows if r.get("connections")]
    if not rows:
        return empty_figure("No client connections")
    fig = Figure(figsize=(10, 2.6), layout="constrained")
    ax = fig.add_subplot()
    left = 0
    for row in rows:
        state = row.get("state") or "unknown"
        ax.barh(0, row["connections"], left=left, color=_STATE_COLOURS.get(state, "#78909c"),
                label=f"{label(state)} ({row['connections']})", height=0.5)
        left += row["connections"]
    if max_connections:
        ax.axvline(max_connections, color="#c62828", linestyle="--", linewidth=1.5)
        ax.annotate(f"max_connections {max_connections}", (max_connections, 0.3), ha="right", fontsize=8,
                    color="#c62828")
    if usable and usable != max_connections:
        ax.axvline(usable, color="#ef6c00", linestyle=":", linewidth=1.5)
        ax.annotate(f"usable {usable}", (usable, -0.35), ha="right", fontsize=8, color="#ef6c00")
    ax.set_xlim(0, max(left, max_connections or 0) * 1.05 or 1)
    ax.set_ylim(-0.5, 0.5)
    ax.set_yticks([])
    ax.set_xlabel("client connections")
    ax.set_title(f"Connections by state: {left}" + (f" of {max_connections}" if max_connections else ""))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=min(len(rows), 4), fontsize=8, frameon=False)
    return fig
