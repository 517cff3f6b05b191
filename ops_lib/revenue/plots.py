"""Figures for the revenue report: MRR with its movements, revenue by plan, payment success over time.

One panel per currency: amounts in different currencies are never drawn on one axis. Figures
are ``ops_lib.figures.Figure``: no pyplot state, and they display themselves as PNG.
"""
from __future__ import annotations

from typing import Sequence

from matplotlib.ticker import FuncFormatter, MaxNLocator

from ..figures import Figure, empty_figure, label
from . import money
from .movements import MOVEMENTS, SIGN

_COLOURS = {"new": "#2e7d32", "expansion": "#66bb6a", "reactivation": "#1565c0",
            "contraction": "#ef6c00", "churn": "#c62828", "mrr": "#212121",
            "succeeded": "#2e7d32", "failed": "#c62828", "gross": "#1565c0", "net": "#2e7d32",
            "fees": "#ef6c00", "refunded": "#c62828", "disputed": "#6a1b9a"}


def _money_axis(ax, currency: str) -> None:
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_ylabel(label(currency.upper(), limit=10))


def plot_mrr_history(history: Sequence[dict]) -> Figure:
    """Per currency: MRR at each month's end (line) over its movements (bars, losses below zero).

    ``history`` is ``movements.history`` (exact rows) or ``movements.history_table`` (display rows).
    """
    if not history:
        return empty_figure("No MRR in the history's months")
    currencies = sorted({r["currency"] for r in history})
    fig = Figure(figsize=(10, 3.4 * len(currencies)), layout="constrained")
    axes = fig.subplots(len(currencies), 1, squeeze=False)[:, 0]
    for ax, currency in zip(axes, currencies):
        rows = [r for r in history if r["currency"] == currency]
        months = [r["month"] for r in rows]
        x = list(range(len(rows)))

        def value(row, key):
            if "end_mrr" in row:  # a display row: already signed, in major units
                return row[key] or 0
            return money.major(SIGN.get(key, 1) * row[key], currency) or 0

        up = [0.0] * len(rows)
        down = [0.0] * len(rows)
        for movement in MOVEMENTS:
            values = [value(r, movement) for r in rows]
            if not any(values):
                continue
            if SIGN[movement] > 0:
                ax.bar(x, values, bottom=up, color=_COLOURS[movement], label=movement, width=0.7)
                up = [u + v for u, v in zip(up, values)]
            else:
                ax.bar(x, values, bottom=down, color=_COLOURS[movement], label=movement, width=0.7)
                down = [d + v for d, v in zip(down, values)]
        ax.use_sticky_edges = False  # a zero-height bar stacked on a tall one must not pin the axis to its top
        ax.autoscale_view()
        ends = [r["end_mrr"] if "end_mrr" in r else money.major(r["end"], currency) for r in rows]
        twin = ax.twinx()
        twin.plot(x, ends, color=_COLOURS["mrr"], marker="o", label="MRR at month end")
        twin.set_ylim(bottom=0)
        _money_axis(twin, currency)
        twin.set_ylabel(f"MRR ({label(currency.upper(), limit=10)})")
        ax.axhline(0, color="#9e9e9e", linewidth=0.8)
        ax.set_xticks(x, [label(m, limit=20) for m in months], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"movements ({label(currency.upper(), limit=10)})")
        ax.set_title(f"MRR and its movements per month — {label(currency.upper(), limit=10)}")
        handles, labels = ax.get_legend_handles_labels()
        h2, l2 = twin.get_legend_handles_labels()
        ax.legend(handles + h2, labels + l2, fontsize=8, loc="upper left")
    return fig


def plot_revenue_by_plan(rows: Sequence[dict]) -> Figure:
    """Per currency, per plan: gross, refunds, disputes, fees and net (``revenue.revenue_table`` rows)."""
    rows = [r for r in rows if r.get("plan") != "TOTAL"]
    if not rows:
        return empty_figure("No revenue in the period")
    currencies = sorted({r["currency"] for r in rows})
    fig = Figure(figsize=(10, 0.6 + 1.1 * max(3, len(rows))), layout="constrained")
    axes = fig.subplots(len(currencies), 1, squeeze=False)[:, 0]
    keys = ("gross", "refunded", "disputed", "fees", "net")
    for ax, currency in zip(axes, currencies):
        mine = [r for r in rows if r["currency"] == currency]
        plans = [r["plan"] for r in mine]
        height = 0.8 / len(keys)
        for k, key in enumerate(keys):
            values = [r[key] or 0 for r in mine]
            ax.barh([i + k * height for i in range(len(mine))], values, height=height, color=_COLOURS[key], label=key)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(mine))], [label(p, limit=30) for p in plans])
        ax.invert_yaxis()
        ax.set_xlabel(label(currency.upper(), limit=10))
        ax.set_title(f"Revenue by plan in the period — {label(currency.upper(), limit=10)}")
        ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_success_rate(rows: Sequence[dict], *, threshold_pct: float = 99.0) -> Figure:
    """Charges per day (bars: succeeded, failed) and the success rate (line) against the threshold."""
    if not rows or not any(r["succeeded"] or r["failed"] for r in rows):
        return empty_figure("No charge succeeded or failed in the period")
    labels = [r["day"].strftime("%m-%d") for r in rows]
    x = list(range(len(rows)))
    fig = Figure(figsize=(10, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ok = [r["succeeded"] for r in rows]
    bad = [r["failed"] for r in rows]
    ax.bar(x, ok, color=_COLOURS["succeeded"], label="succeeded", width=0.8)
    ax.bar(x, bad, bottom=ok, color=_COLOURS["failed"], label="failed", width=0.8)
    ax.use_sticky_edges = False
    ax.autoscale_view()
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("charges")
    rate = ax.twinx()
    rate.plot([i for i, r in zip(x, rows) if r["success_rate_pct"] is not None],
              [r["success_rate_pct"] for r in rows if r["success_rate_pct"] is not None],
              color="#212121", marker="o", markersize=3, label="success rate")
    rate.axhline(threshold_pct, color=_COLOURS["failed"], linestyle="--", linewidth=1, label=f"threshold {threshold_pct:g} %")
    rate.set_ylim(min([threshold_pct - 5] + [r["success_rate_pct"] - 2 for r in rows if r["success_rate_pct"] is not None]), 100.5)
    rate.set_ylabel("success rate (%)")
    step = max(1, len(rows) // 16)
    ax.set_xticks(x[::step], labels[::step], rotation=45, ha="right", fontsize=8)
    ax.set_title("Charges and payment success rate (UTC days; pending charges left out)")
    handles, names = ax.get_legend_handles_labels()
    h2, n2 = rate.get_legend_handles_labels()
    ax.legend(handles + h2, names + n2, fontsize=8, loc="lower left")
    return fig
