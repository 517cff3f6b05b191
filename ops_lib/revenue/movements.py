"""MRR movements per month and per customer, and the identity they must satisfy.

Between two moments (a month's first instant and its last, or the period's start and now),
each customer's MRR in each currency moves in one of five ways:

* **new** — from nothing, for a customer who never had MRR before;
* **reactivation** — from nothing, for a customer who had MRR before (a churned customer returning);
* **expansion** — up (an upgrade, more seats, a discount ending; or a first subscription in a
  second currency while the customer already pays in another);
* **contraction** — down (a downgrade, fewer seats, a cancelled subscription while another stays);
* **churn** — to nothing, and only when the customer has no other paying subscription left
  (in any currency); otherwise the loss is a contraction.

Per currency, *start + new + expansion + reactivation − contraction − churn = end*: the
``mrr_identity_broken`` check holds every month to it, and to the history's last point being the
current MRR. Snapshots are taken at month boundaries (ChartMogul's monthly view), each in the
last second before the boundary, so a change effective at 00:00 on the 1st belongs to the month it
opens; a customer who churns and returns within one month shows only the net change.
"""
from __future__ import annotations

from collections.abc import Mapping as AbcMapping
from fractions import Fraction
from operator import itemgetter
from typing import Iterable, Sequence

import numpy as np

from ..findings import Metrics
from . import money
from .data import record_columns
from .mrr import ZERO, MRRBook, customer_columns
from .period import Period, history_buckets

MOVEMENTS = ("new", "expansion", "reactivation", "contraction", "churn")
SIGN = {"new": 1, "expansion": 1, "reactivation": 1, "contraction": -1, "churn": -1}


def classify(before: Fraction, after: Fraction, *, other_before: bool, other_after: bool,
             had_mrr_before: bool) -> str | None:
    """The movement of one customer's MRR in one currency; None when it did not move.

    ``other_before``/``other_after``: the customer had MRR in another currency at the start/end;
    ``had_mrr_before``: the customer had MRR at some time before the start.
    """
    if before == after:
        return None
    if before == 0:
        if other_before:
            return "expansion"
        return "reactivation" if had_mrr_before else "new"
    if after == 0:
        return "contraction" if other_after else "churn"
    return "expansion" if after > before else "contraction"


def _classified(book: MRRBook, start: int, end: int) -> tuple[dict, list, np.ndarray, np.ndarray, np.ndarray]:
    """``book.moves_closing(start, end)``, the distinct cases among them (before, after, the three
    flags, currency) each with its movement (``classify``), which case each pair is and how many
    pairs each case has: a month's hundred thousand moves are a few thousand cases."""
    moves = book.moves_closing(start, end)
    cases = np.stack([moves[k].astype(np.int64) for k in ("before", "after", "other_before", "other_after",
                                                          "had_mrr_before", "currency")], axis=1)
    distinct, which, times = distinct_rows(cases, len(moves["values"]), len(moves["currencies"]))
    values = moves["values"]
    kinds = [classify(values[before] if before >= 0 else ZERO, values[after] if after >= 0 else ZERO,
                      other_before=bool(ob), other_after=bool(oa), had_mrr_before=bool(had))
             for before, after, ob, oa, had, _ in distinct.tolist()]
    return moves, kinds, distinct, which.reshape(-1), times


def distinct_rows(cases: np.ndarray, values: int, currencies: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(cases, axis=0, return_inverse=True, return_counts=True)`` for ``_classified``'s
    cases (before and after: an index in ``values`` or -1; three flags; a currency): each row as
    one number, in the rows' order (a row-wise unique sorts rows as bytes, several times slower)."""
    span = values + 1
    if not cases.size or span * span * 8 * max(currencies, 1) >= 2 ** 62:
        distinct, which, times = np.unique(cases, axis=0, return_inverse=True, return_counts=True)
        return distinct, which, times
    before, after, other_before, other_after, had, currency = cases.T
    code = ((((before + 1) * span + after + 1) * 2 + other_before) * 2 + other_after) * 2 + had
    code = code * max(currencies, 1) + currency
    _, first, which, times = np.unique(code, return_index=True, return_inverse=True, return_counts=True)
    return cases[first], which, times


def customer_movements(book: MRRBook, start: int, end: int) -> list[dict]:
    """Each customer whose MRR moved in [start, end), per currency (exact, minor units): MRR as of
    the last second before ``start`` against the last second before ``end``."""
    moves, kinds, _, which, _ = _classified(book, start, end)
    customers, currencies, values = moves["customer_ids"], moves["currencies"], moves["values"]
    rows = []
    for customer, currency, before, after, case, paying_before, paying_after in zip(
            moves["customer"].tolist(), moves["currency"].tolist(), moves["before"].tolist(), moves["after"].tolist(),
            which.tolist(), moves["paying_before"].tolist(), moves["paying_after"].tolist()):
        s, e = (values[before] if before >= 0 else ZERO), (values[after] if after >= 0 else ZERO)
        rows.append({"customer": customers[customer], "currency": currencies[currency], "movement": kinds[case],
                     "start": s, "end": e, "change": e - s, "paying_before": paying_before, "paying_after": paying_after})
    rows.sort(key=lambda r: (r["customer"], r["currency"]))
    return rows


def summarise(book: MRRBook, label: str, start: int, end: int, currencies: Iterable[str] = ()) -> list[dict]:
    """One row per currency for [start, end): start, each movement, end (exact, minor units)."""
    moves, kinds, distinct, _, times = _classified(book, start, end)
    start_totals, end_totals = book.totals_closing(start), book.totals_closing(end)  # (per currency: MRR, customers)
    moved = {moves["currencies"][cur] for cur in distinct[:, 5].tolist()}
    seen = set(start_totals) | set(end_totals) | moved | set(currencies)
    sums = {cur: {key: money.ExactSum() for key in MOVEMENTS} for cur in seen}
    values = moves["values"]
    for (before, after, *_, cur), kind, n in zip(distinct.tolist(), kinds, times.tolist()):
        change = (values[after] if after >= 0 else ZERO) - (values[before] if before >= 0 else ZERO)
        sums[moves["currencies"][cur]][kind].add(abs(change) * n)
    rows = []
    for currency in sorted(seen):
        t = sums[currency]
        row = {"currency": currency, "month": label, "from": start, "to": end,
               "start": start_totals.get(currency, (ZERO, 0))[0]}
        for movement in MOVEMENTS:
            row[movement] = t[movement].value()
        row["end"] = end_totals.get(currency, (ZERO, 0))[0]
        row["customers_start"] = start_totals.get(currency, (ZERO, 0))[1]
        row["customers_end"] = end_totals.get(currency, (ZERO, 0))[1]
        rows.append(row)
    return rows


def history(book: MRRBook, period: Period, months: int = 12) -> list[dict]:
    """The monthly movements of the chart's months, every currency present in any of them.

    Month by month, so that the book holds only the snapshots of the months at hand (consecutive
    months share a boundary); a currency absent from a month gets that month's row of zeros."""
    buckets = history_buckets(period, months)
    rows = []
    for label, start, end in buckets:
        rows.extend(summarise(book, label, start, end))
    currencies = {r["currency"] for r in rows}
    for label, start, end in buckets:
        present = {r["currency"] for r in rows if r["from"] == start and r["to"] == end and r["month"] == label}
        for currency in sorted(currencies - present):
            rows.append(_zero_row(currency, label, start, end))
    return sorted(rows, key=lambda r: (r["currency"], r["from"]))


def _zero_row(currency: str, label: str, start: int, end: int) -> dict:
    """What ``summarise`` gives a currency nobody paid in at either end of the month."""
    row = {"currency": currency, "month": label, "from": start, "to": end, "start": ZERO}
    for movement in MOVEMENTS:
        row[movement] = ZERO
    row.update({"end": ZERO, "customers_start": 0, "customers_end": 0})
    return row


def movement_metrics(book: MRRBook, period: Period) -> Metrics:
    """The period's MRR movements per currency, for the run's JSON: ``mrr_<movement>_<currency>``.

    ``opening`` (MRR just before the period starts), ``new``, ``expansion``, ``reactivation``,
    ``contraction``, ``churn`` and ``closing`` (MRR at the period's end: ``mrr_<currency>``), each in
    the currency's major unit like every revenue metric (29.0 for $29; ¥4,900 is 4900), contraction
    and churn as amounts lost (positive), so that
    opening + new + expansion + reactivation − contraction − churn = closing, up to each figure's
    own rounding to the currency's smallest unit.
    """
    out = {}
    for row in summarise(book, period.label, period.start_ts, period.until_ts):
        cur = row["currency"]
        out[f"mrr_opening_{cur}"] = money.major(row["start"], cur)
        for movement in MOVEMENTS:
            out[f"mrr_{movement}_{cur}"] = money.major(row[movement], cur)
        out[f"mrr_closing_{cur}"] = money.major(row["end"], cur)
    return Metrics(out)


def identity_gap(row: dict) -> Fraction:
    """end − (start + new + expansion + reactivation − contraction − churn): zero when the movements add up."""
    expected = row["start"] + sum(SIGN[m] * row[m] for m in MOVEMENTS)
    return Fraction(row["end"]) - Fraction(expected)


# --------------------------------------------------------------------------- display


def history_table(rows: Sequence[dict]) -> list[dict]:
    """The monthly movements in major units, with the identity's residue shown."""
    out = []
    for row in rows:
        cur = row["currency"]
        shown = {"currency": cur, "month": row["month"], "start_mrr": money.major(row["start"], cur)}
        for movement in MOVEMENTS:
            shown[movement] = money.major(SIGN[movement] * row[movement], cur)
        shown["end_mrr"] = money.major(row["end"], cur)
        shown["net_change"] = money.major(row["end"] - row["start"], cur)
        shown["identity_residue"] = money.major(identity_gap(row), cur)
        shown["customers_end"] = row["customers_end"]
        out.append(shown)
    return out


def customer_table(rows: Sequence[dict], book: MRRBook | None = None) -> list[dict]:
    names = _customer_names({row["customer"] for row in rows}, book) if book is not None else {}
    order = {m: i for i, m in enumerate(MOVEMENTS)}
    # Largest change first: each distinct size's rank, so that the sort compares ints, not Fractions
    sizes = [abs(row["change"]) for row in rows]
    rank = {size: i for i, size in enumerate(sorted(set(sizes), reverse=True))}
    keys = [(row["currency"], order[row["movement"]], rank[size], row["customer"]) for row, size in zip(rows, sizes)]
    out = []
    major = _majors()
    for _, row in sorted(zip(keys, rows), key=itemgetter(0)):
        cur = row["currency"]
        out.append({
            "customer": row["customer"], "name": names.get(row["customer"]), "currency": cur,
            "movement": row["movement"], "mrr_before": major(row["start"], cur),
            "mrr_after": major(row["end"], cur), "change": major(row["change"], cur),
        })
    return out


def _customer_names(wanted: set, book: MRRBook) -> dict:
    """The names of the ``wanted`` customers, from the book's subscriptions whose customer was
    expanded (the last one read wins), read as columns (``mrr.customer_columns``)."""
    customers = record_columns(book.subscriptions, "customer")[0]
    expanded = {kind for kind in set(map(type, customers)) if kind is not str and issubclass(kind, AbcMapping)}
    names = {}
    for customer, customer_id, name in zip(customers, *customer_columns(customers)):
        if type(customer) in expanded and customer_id in wanted:
            names[customer_id] = name
    return names


def _majors():
    """``money.major``, once per amount and currency (a month's movements repeat a few amounts;
    equal amounts show the same, whatever their type)."""
    found: dict[tuple, float | None] = {}

    def major(amount, currency: str) -> float | None:
        key = (amount, currency)
        value = found.get(key)
        if value is None and key not in found:
            value = found[key] = money.major(amount, currency)
        return value
    return major

