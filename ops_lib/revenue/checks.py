"""The revenue report's checks: each takes data already gathered and returns a ``Finding``.

| id                         | severity | a problem when                                                  | items |
|----------------------------|----------|-----------------------------------------------------------------|-------|
| ``payment_success_rate_low`` | warning  | succeeded ÷ (succeeded + failed) charges is below the threshold | the failed charges, oldest first |
| ``revenue_mismatch``         | warning  | the app's payments disagree with Stripe's charges beyond the tolerance | the charges, oldest first |
| ``mrr_identity_broken``      | warning  | start + new + expansion + reactivation − contraction − churn ≠ end, a month's start is not the previous month's end, or the history does not end at the current MRR | ``currency:month`` |
| ``unpriced_items``           | info     | paying subscriptions hold metered or tiered items, left out of MRR | the subscription items |
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..findings import Finding
from ..findings import run_checks as _run_checks
from . import money
from .movements import MOVEMENTS, SIGN, identity_gap
from .mrr import SubscriptionMRR
from .revenue import failed_charge_rows, success_rate


def payment_success_rate_low(charges: Sequence[Mapping], *, threshold_pct: float = 99.0) -> Finding:
    check = "payment_success_rate_low"
    stats = success_rate(charges)
    rate = stats["success_rate_pct"]
    counts = f"{stats['succeeded']} succeeded, {stats['failed']} failed, {stats['pending']} pending (left out)"
    if rate is None:
        return Finding(check, "ok", "No charge succeeded or failed in the period", note=counts)
    if rate >= threshold_pct:
        return Finding(check, "ok", f"Payment success rate {rate:.2f} % (threshold {threshold_pct:g} %)", note=counts)
    rows = failed_charge_rows(charges)
    return Finding(
        check, "warning",
        f"Payment success rate {rate:.2f} % is below {threshold_pct:g} %: {stats['failed']} of "
        f"{stats['succeeded'] + stats['failed']} charges failed",
        items=[r["charge"] for r in rows], rows=rows, note=counts,
        remediation="Look at the failure codes: card_declined and insufficient_funds are the customers' banks "
        "(turn on Smart Retries and the customer emails in Billing → Revenue recovery); expired_card means "
        "card updates are not reaching Stripe; incorrect_cvc or a burst of fraud blocks points at the checkout.",
    )


def revenue_mismatch(rows: Sequence[Mapping], *, tolerance: float = 0.0) -> Finding:
    check = "revenue_mismatch"
    if not rows:
        return Finding(check, "ok", "The app's payments agree with Stripe's charges for the period",
                       note=f"tolerance {tolerance:g} (major units)")
    kinds: dict[str, int] = {}
    for row in rows:
        kind = row["problem"].split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
    return Finding(
        check, "warning", f"{len(rows)} payments disagree between the app and Stripe: {summary}",
        items=[r["charge"] for r in rows], rows=list(rows), note=f"tolerance {tolerance:g} (major units)",
        remediation="For a payment missing in the app, check that invoice.paid / charge.succeeded reached the "
        "app (the webhook_failure runbook) and record it; for a wrong amount, trust Stripe's charge and fix the "
        "app's row; for a payment Stripe does not have, find where the app recorded it from.",
    )


def mrr_identity_broken(history: Sequence[Mapping], current: Iterable[Mapping] = (), *,
                        tolerance_minor: Fraction | float = Fraction(1, 2)) -> Finding:
    """Every month of ``history`` (exact rows of ``movements.history``) must add up, continue from the
    previous month, and the last month must end at ``current`` MRR (rows with ``mrr_minor``)."""
    check = "mrr_identity_broken"
    tolerance = Fraction(tolerance_minor)
    problems: list[dict] = []
    by_currency: dict[str, list[Mapping]] = {}
    for row in history:
        by_currency.setdefault(row["currency"], []).append(row)

    def flag(row: Mapping, what: str, gap: Fraction) -> None:
        cur = row["currency"]
        problems.append({"item": f"{cur}:{row['month']}", "currency": cur, "month": row["month"], "problem": what,
                         "start": money.major(row["start"], cur),
                         **{m: money.major(SIGN[m] * row[m], cur) for m in MOVEMENTS},
                         "end": money.major(row["end"], cur), "gap": money.major(gap, cur)})

    for currency, rows in by_currency.items():
        rows = sorted(rows, key=lambda r: r.get("from", r["month"]))
        previous = None
        for row in rows:
            gap = identity_gap(row)
            if abs(gap) > tolerance:
                flag(row, "start + new + expansion + reactivation − contraction − churn ≠ end", gap)
            elif previous is not None and abs(Fraction(row["start"]) - Fraction(previous["end"])) > tolerance:
                flag(row, "starts where the previous month did not end", Fraction(row["start"]) - Fraction(previous["end"]))
            previous = row
    for total in current:
        rows = by_currency.get(total["currency"])
        if rows:
            last = max(rows, key=lambda r: r.get("from", r["month"]))
            gap = Fraction(total["mrr_minor"]) - Fraction(last["end"])
            if abs(gap) > tolerance and not any(p["item"] == f"{last['currency']}:{last['month']}" for p in problems):
                flag(last, "the history does not end at the current MRR", gap)
    if not problems:
        months = len({r["month"] for r in history})
        return Finding(check, "ok", f"MRR movements add up in every currency for {months} months")
    return Finding(
        check, "warning", f"MRR movements do not add up in {len(problems)} currency-months",
        items=[p["item"] for p in problems], rows=problems,
        remediation="A data problem, not a business one: look for subscriptions whose invoices overlap or "
        "disagree with the subscription (a manual invoice on a subscription, a currency change) before trusting "
        "these movements.",
    )


def unpriced_items(results: Iterable[SubscriptionMRR]) -> Finding:
    """Metered or tiered items on subscriptions that count as MRR: left out, not guessed."""
    check = "unpriced_items"
    rows = []
    for result in results:
        if not result.counted:
            continue
        for item in result.unpriced:
            rows.append({"item": item["item"], "subscription": result.subscription, "customer": result.customer,
                         "currency": result.currency, "price": item["price"], "plan": item["plan"],
                         "quantity": item.get("quantity"), "reason": item["reason"]})
    rows.sort(key=lambda r: (r["subscription"], r["item"] or ""))
    if not rows:
        return Finding(check, "ok", "Every item of the paying subscriptions has a unit amount")
    subs = len({r["subscription"] for r in rows})
    return Finding(
        check, "info", f"{len(rows)} metered or tiered items on {subs} paying subscriptions are left out of MRR",
        items=[r["item"] for r in rows], rows=rows,
        note="MRR counts what a price states per unit; usage-based amounts are only known once invoiced "
        "(their revenue is in the revenue table).",
        remediation="If these items are a material part of recurring revenue, track their average monthly "
        "invoiced amount separately (revenue by plan) rather than folding a guess into MRR.",
    )


#: check id -> function, in the order the runbook reports them.
CHECKS: dict[str, Callable[..., Finding]] = {
    "payment_success_rate_low": payment_success_rate_low,
    "revenue_mismatch": revenue_mismatch,
    "mrr_identity_broken": mrr_identity_broken,
    "unpriced_items": unpriced_items,
}


def run_checks(inputs: Mapping[str, Any], options: Mapping[str, Mapping[str, Any]] | None = None) -> list[Finding]:
    """Every check in ``CHECKS``, in order: ``inputs`` by parameter name (``charges``, ``rows`` — the
    reconciliation —, ``history``, ``current``, ``results``), keyword options from ``options[check_id]``."""
    return _run_checks(CHECKS, inputs, options)
