"""``revenue.revenue_by_plan`` adds each distinct paid invoice (currency, amount, plan shares) and
balance transaction (currency, fee, net, shares) once, times how many: the same rows as adding
every invoice and transaction one at a time (a plain reading here), on synthetic accounts, whole
and as records, and with odd transactions (no fee, no source, currencies in capitals, repeats)."""
from __future__ import annotations

import pytest

from ops_lib.revenue import data as rdata, revenue

from .revenue_fixtures import fetched_whole_and_as_records


def plain_revenue_by_plan(data) -> list[dict]:
    """Every paid invoice, charge, refund, dispute and balance transaction added one at a time."""
    period, table = data.period, {}

    def row(currency, plan):
        key = (currency.lower(), plan)
        return table.setdefault(key, {"currency": key[0], "plan": plan, "invoices_paid": 0, "gross": 0, "refunded": 0,
                                      "disputed": 0, "fees": 0, "net": 0})

    who = revenue._Attribution(data)
    for index, invoice in enumerate(data.invoices):
        paid_at = (invoice.get("status_transitions") or {}).get("paid_at")
        if invoice.get("status") != "paid" or not period.contains(paid_at):
            continue
        for n, (plan, amount) in enumerate(revenue.invoice_plan_split(invoice)):
            r = row(invoice.get("currency"), plan)
            r["gross"] += amount
            r["invoices_paid"] += 1 if n == 0 else 0
    for charge in data.charges_in_period:
        if charge.get("status") == "succeeded" and not charge.get("invoice") and charge.get("id") not in who.invoice_by_charge:
            row(charge.get("currency"), revenue.ONE_OFF)["gross"] += charge.get("amount")
    for kind, key in ((data.refunds, "refunded"), (data.disputes, "disputed")):
        for obj in kind:
            if period.contains(obj.get("created")) and (key == "disputed" or obj.get("status") in revenue.REFUND_STATUSES_COUNTED):
                for plan, amount in revenue.allocate(obj["amount"], who.shares_of_charge(rdata.id_of(obj.get("charge")))):
                    row(obj["currency"], plan)[key] += amount
    for txn in data.balance_transactions:
        if not period.contains(txn.get("created")) or txn.get("reporting_category") in revenue.EXCLUDED_BALANCE_CATEGORIES \
                or txn.get("type") in revenue.EXCLUDED_BALANCE_CATEGORIES:
            continue
        shares = who.shares_of_balance(txn.get("source"))
        for plan, part in revenue.allocate(txn.get("fee") or 0, shares):
            row(txn.get("currency"), plan)["fees"] += part
        for plan, part in revenue.allocate(txn.get("net") or 0, shares):
            row(txn.get("currency"), plan)["net"] += part
    return sorted(table.values(), key=lambda r: (r["currency"], -r["gross"], r["plan"]))


@pytest.fixture(scope="module")
def both():
    return fetched_whole_and_as_records(600, 2)


def test_revenue_by_plan_is_every_object_added_one_at_a_time(both):
    for data in both:
        rows = revenue.revenue_by_plan(data)
        assert rows == plain_revenue_by_plan(data)
        assert sum(r["invoices_paid"] for r in rows) > 50 and any(r["fees"] for r in rows)


def test_odd_balance_transactions_and_invoices_add_up_the_same(both):
    whole, _ = both
    start = int(whole.period.start.timestamp()) + 3600
    charge = next(c for c in whole.charges_in_period if c["status"] == "succeeded" and c.get("invoice"))
    odd = [{"id": "txn_a", "created": start, "type": "charge", "reporting_category": "charge", "amount": 990,
            "fee": None, "net": 990, "currency": "USD", "source": charge["id"]},
           {"id": "txn_b", "created": start, "type": "adjustment", "reporting_category": "fee", "amount": -15,
            "fee": 15, "net": -30, "currency": "usd"},  # no source: Stripe's own fees
           {"id": "txn_c", "created": start, "type": "payout", "reporting_category": "payout", "amount": -5000,
            "fee": 0, "net": -5000, "currency": "usd", "source": "po_1"}]
    paid = next(i for i in whole.invoices if i["status"] == "paid"
                and whole.period.contains((i.get("status_transitions") or {}).get("paid_at")))
    repeated = [dict(paid, id=f"in_copy_{k}", charge=None, currency=paid["currency"].upper()) for k in range(3)]
    c = rdata.Compactor()
    for compact in (False, True):
        data = both[compact]
        extra_txns = [c.balance_transaction(t) for t in odd * 2] if compact else odd * 2
        extra_invoices = [c.invoice(i) for i in repeated] if compact else repeated
        data = rdata.StripeData(data.period, 12, (), subscriptions=data.subscriptions, invoices=data.invoices + extra_invoices,
                                charges=data.charges, refunds=data.refunds, disputes=data.disputes,
                                balance_transactions=data.balance_transactions + extra_txns)
        assert revenue.revenue_by_plan(data) == plain_revenue_by_plan(data)
