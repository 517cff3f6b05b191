"""Figures for the webhook_failure notebook.

Built on ``matplotlib.figure.Figure`` directly, not pyplot: no global figure registry to leak
figures across a scheduled run, and no dependence on the backend.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import matplotlib.dates as mdates
from matplotlib.ticker import MaxNLocator

from ..figures import Figure, empty_figure, label
from ..utc import as_utc
from .checks import NOT_PROCESSED, NOT_RECEIVED_RETRIES_OVER, NOT_RECEIVED_RETRYING, PROCESSED

OUTCOMES = (PROCESSED, NOT_RECEIVED_RETRYING, NOT_PROCESSED, NOT_RECEIVED_RETRIES_OVER)
_COLOURS = {PROCESSED: "#2e7d32", NOT_RECEIVED_RETRYING: "#f9a825", NOT_PROCESSED: "#c62828",
            NOT_RECEIVED_RETRIES_OVER: "#6a1b9a"}
_MAX_BARS = 24 * 31


def _hour(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return as_utc(value).replace(minute=0, second=0, microsecond=0)


def plot_events_by_hour(rows: list[dict], *, title: str | None = None) -> Figure:
    """Stacked bars of the window's Stripe events per hour, by outcome (``events_by_hour`` rows)."""
    rows = [r for r in rows if r.get("count")]
    if not rows:
        return empty_figure("No Stripe events in the window")
    counts: dict[datetime, dict[str, int]] = {}
    for row in rows:
        per = counts.setdefault(_hour(row["hour"]), {})
        per[row["outcome"]] = per.get(row["outcome"], 0) + int(row["count"])
    first, last = min(counts), max(counts)
    hours = []
    moment = first
    while moment <= last and len(hours) < _MAX_BARS:  # every hour, so gaps show as gaps
        hours.append(moment)
        moment += timedelta(hours=1)
    outcomes = [o for o in OUTCOMES if any(o in c for c in counts.values())]
    outcomes += sorted({o for c in counts.values() for o in c} - set(outcomes))

    fig = Figure(figsize=(10, 3.5), layout="constrained")
    ax = fig.add_subplot()
    x = mdates.date2num(hours)
    bottom = [0] * len(hours)
    for outcome in outcomes:
        values = [counts.get(h, {}).get(outcome, 0) for h in hours]
        ax.bar(x, values, width=0.9 / 24, bottom=bottom, align="edge", label=label(outcome, limit=30),
               color=_COLOURS.get(outcome, "#9e9e9e"))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.xaxis_date(tz=timezone.utc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator(), tz=timezone.utc))
    ax.set_ylabel("events")
    ax.set_title(title or "Stripe events per hour (UTC), by what became of them in the app")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(loc="outside right upper", fontsize=8)
    return fig
