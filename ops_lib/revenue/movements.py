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

from fractions import Fraction
from typing import Iterable, Mapping, Sequence

from ..findings import Metrics
from . import money
from .mrr import ZERO, MRRBook
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


def customer_movements(book: MRRBook, start: int, end: int) -> list[dict]:
    """Each customer whose MRR moved in [start, end), per currency (exact, minor units): MRR as of
    the last second before ``start`` against the last second before ``end``."""
    before, after = book.snapshot_closing(start), book.snapshot_closing(end)
    # A customer's other currencies are looked up among the few currencies present (a handful of
    # dict probes per customer that moved), not indexed for every customer.
    currencies_before = {cur for _, cur in before}
    currencies_after = {cur for _, cur in after}

    def pays(snapshot, currencies, customer, but=None) -> bool:
        return any((customer, cur) in snapshot for cur in currencies if cur != but)

    rows = []
    moved = [key for key, s in before.items() if (e := after.get(key, ZERO)) is not s and e != s]
    moved += [key for key in after if key not in before]  # (their MRR before was nothing: it moved)
    for customer, currency in sorted(moved):
        s, e = before.get((customer, currency), ZERO), after.get((customer, currency), ZERO)
        first = book.first_positive(customer)
        movement = classify(
            s, e,
            other_before=pays(before, currencies_before, customer, currency),
            other_after=pays(after, currencies_after, customer, currency),
            had_mrr_before=first is not None and first < start,
        )
        if movement is None:
            continue
        rows.append({"customer": customer, "currency": currency, "movement": movement,
                     "start": s, "end": e, "change": e - s,
                     "paying_before": pays(before, currencies_before, customer),
                     "paying_after": pays(after, currencies_after, customer)})
    return rows


def summarise(book: MRRBook, label: str, start: int, end: int, currencies: Iterable[str] = ()) -> list[dict]:
    """One row per currency for [start, end): start, each movement, end (exact, minor units)."""
    moves = customer_movements(book, start, end)
    start_totals, end_totals = book.totals_closing(start), book.totals_closing(end)  # (per currency: MRR, customers)
    seen = set(start_totals) | set(end_totals) | {m["currency"] for m in moves} | set(currencies)
    sums = {cur: {key: money.ExactSum() for key in MOVEMENTS} for cur in seen}
    for m in moves:
        sums[m["currency"]][m["movement"]].add(abs(m["change"]))
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
    names = {}
    if book is not None:
        for sub in book.subscriptions:
            customer = sub.get("customer")
            if isinstance(customer, Mapping):
                names[customer["id"]] = customer.get("name")
    order = {m: i for i, m in enumerate(MOVEMENTS)}
    out = []
    for row in sorted(rows, key=lambda r: (r["currency"], order[r["movement"]], -abs(r["change"]), r["customer"])):
        cur = row["currency"]
        out.append({
            "customer": row["customer"], "name": names.get(row["customer"]), "currency": cur,
            "movement": row["movement"], "mrr_before": money.major(row["start"], cur),
            "mrr_after": money.major(row["end"], cur), "change": money.major(row["change"], cur),
        })
    return out

