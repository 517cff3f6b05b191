"""Figures for the quota_audit notebook: usage against the limit per plan, customers by plan.

Built on ``matplotlib.figure.Figure`` directly (no pyplot): nothing global leaks across a
scheduled run, and nothing depends on the backend. Each figure renders itself as PNG when a
notebook displays it (IPython registers matplotlib's formatter only once pyplot is imported).
"""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
from matplotlib.ticker import MaxNLocator, PercentFormatter

from ..figures import Figure, empty_figure, label
from .accounts import Accounts
from .scan import usage_table
from .table import integers

_OK, _NEAR, _OVER = "#2e7d32", "#ef6c00", "#c62828"
_STRIPE_COLOURS = {"paying": "#1565c0", "past due": "#f9a825", "no live subscription": "#9e9e9e",
                   "plan differs": "#c62828"}


# Dots drawn per plan below the near-limit line; beyond it, an even sample of them (seeded: the
# same picture for the same data). Every organisation at or above the line is drawn and named.
# A million dots take seconds to draw and look like a thousand.
MAX_DOTS_PER_PLAN = 2_000


def usage_against_limit(usage: list[dict], *, near_limit_pct: float = 80.0) -> Figure:
    """Each organisation's usage as a share of its plan's limit, one column per plan.

    Dots above the 100 % line used more than their plan allows; between the dashed line and
    100 % they are near it. Plans without a limit are listed in the title, not drawn. Under
    the dashed line, a plan with more than ``MAX_DOTS_PER_PLAN`` organisations is drawn as a
    sample of them, and its label says so.
    """
    usage = usage_table(usage)  # (read by column: a million organisations)
    ids, plan_of = usage.column("organisation_id"), usage.values("plan")
    used, _ = integers(usage.column("used"))
    limit, has_limit = integers(usage.column("usage_limit"))
    limited = has_limit & (limit != 0)
    codes: dict = {}
    code_of = np.fromiter((codes.setdefault(plan, len(codes)) for plan in plan_of), dtype=np.int64, count=len(plan_of))
    plan_named = list(codes)
    unlimited = {plan_named[c] for c in np.unique(code_of[~limited]).tolist()}
    by_plan: dict = {}  # plan -> the positions of its organisations, in the order of their first one
    for c in sorted(np.unique(code_of[limited]).tolist(), key=lambda c: int(np.argmax(limited & (code_of == c)))):
        by_plan[plan_named[c]] = np.flatnonzero(limited & (code_of == c))
    if not by_plan:
        return empty_figure("No organisation is on a plan with a usage limit")
    plans = sorted(by_plan, key=lambda p: int(limit[by_plan[p]].min()))
    jitter = random.Random(0)  # the same picture for the same data
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax = fig.add_subplot()
    top = 100.0
    tick_labels = []
    for x, plan in enumerate(plans):
        rows = by_plan[plan]
        pcts = 100.0 * used[rows] / limit[rows]
        below = np.flatnonzero(pcts < near_limit_pct).tolist()
        drawn = np.ones(len(rows), dtype=bool)
        if len(below) > MAX_DOTS_PER_PLAN:
            drawn[below] = False
            drawn[jitter.sample(below, MAX_DOTS_PER_PLAN)] = True
        order = np.flatnonzero(drawn).tolist()
        xs = [x + jitter.uniform(-0.28, 0.28) for _ in order]
        ys = pcts[order].tolist()
        colours = [_OVER if y > 100 else _NEAR if y >= near_limit_pct else _OK for y in ys]
        ax.scatter(xs, ys, c=colours, s=22, alpha=0.85, edgecolors="none")
        for xi, yi, i in zip(xs, ys, order):
            if yi >= near_limit_pct:
                ax.annotate(f" {label(ids[int(rows[i])], limit=30)}", (xi, yi), fontsize=8, va="center")
        top = max(top, *ys)
        limits = sorted(set(limit[rows].tolist()))
        sampled = f"\n{MAX_DOTS_PER_PLAN:,} of {len(below):,} under {near_limit_pct:g} % drawn" \
            if len(below) > MAX_DOTS_PER_PLAN else ""
        tick_labels.append(f"{label(plan, limit=30)}\nlimit {', '.join(f'{v:,}' for v in limits)}\n"
                           f"{len(rows):,} org(s){sampled}")
    ax.axhline(100, color=_OVER, linewidth=1)
    ax.axhline(near_limit_pct, color=_NEAR, linewidth=1, linestyle="--")
    ax.set_xticks(range(len(plans)), tick_labels)
    ax.set_xlim(-0.6, len(plans) - 0.4)
    ax.set_ylim(0, top * 1.1)
    ax.yaxis.set_major_formatter(PercentFormatter())
    ax.set_ylabel("usage this period, % of the plan's limit")
    title = "Usage against the plan's limit, this billing period"
    if unlimited:
        title += f" (unlimited, not drawn: {label(', '.join(str(p) for p in sorted(unlimited, key=str)), limit=80)})"
    ax.set_title(title)
    return fig


def customers_by_plan(accounts: Accounts) -> Figure:
    """Organisations per plan in the app, split by what Stripe says about them."""
    orgs = accounts.organisations
    if not orgs:
        return empty_figure("No organisations")
    counts: dict[str, dict[str, int]] = {}
    for (stripe_plan, app_plan, status), n in Counter(zip(
            orgs.values("stripe_plan"), orgs.values("app_plan"), orgs.values("stripe_status"))).items():
        if stripe_plan is not None and stripe_plan != app_plan:
            kind = "plan differs"
        elif status in ("active", "trialing"):
            kind = "paying"
        elif status == "past_due":
            kind = "past due"
        else:
            kind = "no live subscription"
        per = counts.setdefault(str(app_plan), {})
        per[kind] = per.get(kind, 0) + n
    plans = sorted(counts, key=lambda p: (-sum(counts[p].values()), p))
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax = fig.add_subplot()
    left = [0] * len(plans)
    for kind, colour in _STRIPE_COLOURS.items():
        values = [counts[p].get(kind, 0) for p in plans]
        if not any(values):
            continue
        ax.barh(range(len(plans)), values, left=left, color=colour, label=kind)
        left = [a + b for a, b in zip(left, values)]
    for y, total in enumerate(left):
        ax.annotate(f" {total}", (total, y), va="center", fontsize=9)
    ax.set_yticks(range(len(plans)), [label(p, limit=30) for p in plans])
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("organisations")
    ax.set_title("Organisations by plan in the app, and what Stripe says")
    ax.legend(loc="lower right", fontsize=8)
    ax.margins(x=0.1)
    return fig
