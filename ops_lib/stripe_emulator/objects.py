"""Builders for Stripe API objects, shaped as API version 2023-08-16 returns them.

Each builder takes the few facts a scenario cares about (ids, customer, amounts, currency,
timestamps) and fills every other property the way Stripe does by default, so that the objects
validate against Stripe's OpenAPI specification (`shared/stripe-openapi/spec3.json`) and carry
the same keys a real response carries. Arguments that name another object (customer, price,
charge, ...) accept either its id or the built dict.

Amounts are in the currency's smallest unit, as in Stripe: 4900 is $49.00, and for zero-decimal
currencies such as JPY, 4900 is ¥4,900.
"""
from __future__ import annotations

import calendar
import random
import string
import time
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

API_VERSION = "2023-08-16"

# https://stripe.com/docs/currencies#zero-decimal
ZERO_DECIMAL_CURRENCIES = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
)

Obj = dict[str, Any]
Ref = str | Mapping[str, Any] | None

_ALPHABET = string.ascii_letters + string.digits
_ids = random.Random()


def seed_ids(seed: int | str) -> None:
    """Make generated ids deterministic (a demo data set seeded twice gets the same ids)."""
    _ids.seed(seed)


_TABLES: dict[str, bytes] = {}


def _random_chars(n: int, alphabet: str = _ALPHABET) -> str:
    # n random bytes mapped onto the alphabet by one translate: ids were most of a big seed's
    # time (random.choices: ~40 us an id; this: ~1 us). The modulo's slight bias is harmless.
    table = _TABLES.get(alphabet)
    if table is None:
        table = _TABLES[alphabet] = bytes(ord(alphabet[b % len(alphabet)]) for b in range(256))
    return _ids.randbytes(n).translate(table).decode("ascii")


def _clone(value: Any) -> Any:
    """A copy of JSON data (dicts, lists, scalars): copy.deepcopy without its memo, ~4x faster."""
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _random_code() -> str:
    """Like an invoice prefix or a coupon code: 8 capitals and digits."""
    return _random_chars(8, string.ascii_uppercase + string.digits)


# Stripe uses two id styles: short ones for customer-facing objects (cus_Oaxlz8kB0PJWGa) and
# long, time-ordered ones for most others (price_1NnlpZGPxmnHQRkJuWjM7eRV).
_SHORT_ID_PREFIXES = frozenset({"cus", "prod", "si"})


def new_id(prefix: str, *, livemode: bool = False) -> str:
    if prefix == "cs":
        return f"cs_{'live' if livemode else 'test'}_a1{_random_chars(56)}"
    if prefix in _SHORT_ID_PREFIXES:
        return f"{prefix}_{_random_chars(14)}"
    return f"{prefix}_1{_random_chars(23)}"


def _id_of(ref: Ref) -> str | None:
    if ref is None or isinstance(ref, str):
        return ref
    return ref["id"]


def _now() -> int:
    return int(time.time())


def is_zero_decimal(currency: str) -> bool:
    return currency.lower() in ZERO_DECIMAL_CURRENCIES


def format_amount(amount: int, currency: str) -> str:
    """4900, "usd" -> "$49.00"; 4900, "jpy" -> "¥4,900" (as Stripe renders line descriptions)."""
    symbols = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥"}
    symbol = symbols.get(currency.lower(), currency.upper() + " ")
    if is_zero_decimal(currency):
        return f"{symbol}{amount:,}"
    return f"{symbol}{amount / 100:,.2f}"


def add_interval(ts: int, interval: str, count: int = 1) -> int:
    """The end of a billing period that starts at `ts` (calendar months, clamped like Stripe)."""
    if interval == "day":
        return ts + 86400 * count
    if interval == "week":
        return ts + 7 * 86400 * count
    months = count * (12 if interval == "year" else 1)
    if interval not in ("month", "year"):
        raise ValueError(f"unknown interval {interval!r} (day, week, month or year)")
    start = datetime.fromtimestamp(ts, tz=timezone.utc)
    month_index = start.month - 1 + months
    year, month = start.year + month_index // 12, month_index % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return int(start.replace(year=year, month=month, day=day).timestamp())


def _address(country: str | None = None) -> Obj:
    return {"city": None, "country": country, "line1": None, "line2": None,
            "postal_code": None, "state": None}


# --------------------------------------------------------------------------- catalog


def make_product(*, name: str, id: str | None = None, created: int | None = None,
                 active: bool = True, description: str | None = None,
                 default_price: Ref = None, unit_label: str | None = None,
                 metadata: Mapping[str, str] | None = None, livemode: bool = False) -> Obj:
    created = _now() if created is None else created
    return {
        "id": id or new_id("prod"),
        "object": "product",
        "active": active,
        "created": created,
        "default_price": _id_of(default_price),
        "description": description,
        "features": [],
        "images": [],
        "livemode": livemode,
        "metadata": dict(metadata or {}),
        "name": name,
        "package_dimensions": None,
        "shippable": None,
        "statement_descriptor": None,
        "tax_code": None,
        "unit_label": unit_label,
        "updated": created,
        "url": None,
    }


def make_price(*, product: Ref, unit_amount: int | None = None, currency: str = "usd",
               interval: str | None = None, interval_count: int = 1,
               usage_type: str = "licensed", aggregate_usage: str | None = None,
               tiers: Sequence[Mapping[str, Any]] | None = None, tiers_mode: str = "graduated",
               id: str | None = None, created: int | None = None, active: bool = True,
               nickname: str | None = None, lookup_key: str | None = None,
               metadata: Mapping[str, str] | None = None, livemode: bool = False) -> Obj:
    """A price: one-off (no `interval`) or recurring every `interval_count` × `interval`.

    `tiers` (e.g. `[{"up_to": 1000, "unit_amount": 2}, {"up_to": None, "unit_amount": 1}]`)
    makes a tiered price: `billing_scheme="tiered"` and `unit_amount` null, as in Stripe.
    Metered prices (`usage_type="metered"`) aggregate usage with `aggregate_usage` ("sum").
    """
    if tiers is not None and unit_amount is not None:
        raise ValueError("a tiered price has no unit_amount: give tiers or unit_amount")
    if tiers is None and unit_amount is None:
        raise ValueError("a per-unit price needs unit_amount")
    if usage_type == "metered" and interval is None:
        raise ValueError("a metered price must be recurring: give interval")
    recurring = None
    if interval is not None:
        if interval not in ("day", "week", "month", "year"):
            raise ValueError(f"unknown interval {interval!r} (day, week, month or year)")
        recurring = {
            "aggregate_usage": (aggregate_usage or "sum") if usage_type == "metered" else None,
            "interval": interval,
            "interval_count": interval_count,
            "usage_type": usage_type,
        }
    price = {
        "id": id or new_id("price"),
        "object": "price",
        "active": active,
        "billing_scheme": "tiered" if tiers is not None else "per_unit",
        "created": _now() if created is None else created,
        "currency": currency,
        "custom_unit_amount": None,
        "livemode": livemode,
        "lookup_key": lookup_key,
        "metadata": dict(metadata or {}),
        "nickname": nickname,
        "product": _id_of(product),
        "recurring": recurring,
        "tax_behavior": "unspecified",
        "tiers_mode": tiers_mode if tiers is not None else None,
        "transform_quantity": None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": unit_amount,
        "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
    }
    if tiers is not None:
        # `tiers` is an includable property: stored here, served only when expanded.
        price["tiers"] = [
            {
                "flat_amount": tier.get("flat_amount"),
                "flat_amount_decimal": _decimal(tier.get("flat_amount")),
                "unit_amount": tier.get("unit_amount"),
                "unit_amount_decimal": _decimal(tier.get("unit_amount")),
                "up_to": tier.get("up_to"),
            }
            for tier in tiers
        ]
    return price


def _decimal(amount: int | None) -> str | None:
    return None if amount is None else str(amount)


def amount_for_quantity(price: Mapping[str, Any], quantity: int) -> int:
    """What `quantity` units of `price` cost for one period (per-unit, graduated or volume)."""
    if price["billing_scheme"] == "per_unit":
        return price["unit_amount"] * quantity
    tiers = price.get("tiers")
    if not tiers:
        raise ValueError(f"{price['id']} is tiered but has no tiers (expand tiers to get them)")
    if price["tiers_mode"] == "volume":
        tier = next(t for t in tiers if t["up_to"] is None or quantity <= t["up_to"])
        return (tier["unit_amount"] or 0) * quantity + (tier["flat_amount"] or 0)
    total, below = 0, 0
    for tier in tiers:
        if quantity <= below:
            break
        upper = quantity if tier["up_to"] is None else min(quantity, tier["up_to"])
        total += (tier["unit_amount"] or 0) * (upper - below) + (tier["flat_amount"] or 0)
        below = upper
    return total


# --------------------------------------------------------------------------- customers


def make_customer(*, id: str | None = None, email: str | None = None, name: str | None = None,
                  created: int | None = None, currency: str | None = "usd",
                  description: str | None = None, phone: str | None = None,
                  balance: int = 0, delinquent: bool = False, discount: Obj | None = None,
                  default_payment_method: str | None = None, invoice_prefix: str | None = None,
                  metadata: Mapping[str, str] | None = None, livemode: bool = False) -> Obj:
    return {
        "id": id or new_id("cus"),
        "object": "customer",
        "address": None,
        "balance": balance,
        "created": _now() if created is None else created,
        "currency": currency,
        "default_source": None,
        "delinquent": delinquent,
        "description": description,
        "discount": discount,
        "email": email,
        "invoice_prefix": invoice_prefix or _random_code(),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": default_payment_method,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": livemode,
        "metadata": dict(metadata or {}),
        "name": name,
        "next_invoice_sequence": 1,
        "phone": phone,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def make_coupon(*, percent_off: float | None = None, amount_off: int | None = None,
                currency: str | None = None, duration: str = "once",
                duration_in_months: int | None = None, id: str | None = None,
                name: str | None = None, created: int | None = None, times_redeemed: int = 1,
                valid: bool = True, max_redemptions: int | None = None,
                redeem_by: int | None = None, metadata: Mapping[str, str] | None = None,
                livemode: bool = False) -> Obj:
    """A coupon: exactly one of `percent_off` or `amount_off` (which needs `currency`)."""
    if (percent_off is None) == (amount_off is None):
        raise ValueError("a coupon has exactly one of percent_off or amount_off")
    if amount_off is not None and currency is None:
        raise ValueError("an amount_off coupon needs a currency")
    if duration not in ("once", "repeating", "forever"):
        raise ValueError(f"unknown coupon duration {duration!r} (once, repeating or forever)")
    if (duration == "repeating") != (duration_in_months is not None):
        raise ValueError("duration_in_months goes with, and only with, duration='repeating'")
    if name is None:
        name = (f"{percent_off:g}% off" if percent_off is not None
                else f"{format_amount(amount_off, currency)} off")
    return {
        "id": id or _random_code(),
        "object": "coupon",
        "amount_off": amount_off,
        "created": _now() if created is None else created,
        "currency": currency,
        "duration": duration,
        "duration_in_months": duration_in_months,
        "livemode": livemode,
        "max_redemptions": max_redemptions,
        "metadata": dict(metadata or {}),
        "name": name,
        "percent_off": percent_off,
        "redeem_by": redeem_by,
        "times_redeemed": times_redeemed,
        "valid": valid,
    }


def make_discount(coupon: Obj, *, start: int, customer: Ref = None, subscription: Ref = None,
                  invoice: Ref = None, checkout_session: Ref = None,
                  id: str | None = None) -> Obj:
    """A coupon applied to a customer or subscription; `end` follows from the coupon's duration."""
    end = None
    if coupon["duration"] == "repeating":
        end = add_interval(start, "month", coupon["duration_in_months"])
    return {
        "id": id or new_id("di"),
        "object": "discount",
        "checkout_session": _id_of(checkout_session),
        "coupon": _clone(coupon),
        "customer": _id_of(customer),
        "end": end,
        "invoice": _id_of(invoice),
        "invoice_item": None,
        "promotion_code": None,
        "start": start,
        "subscription": _id_of(subscription),
    }


def discount_amount(discount: Mapping[str, Any] | None, subtotal: int) -> int:
    if discount is None:
        return 0
    coupon = discount["coupon"]
    if coupon["percent_off"] is not None:
        return round(subtotal * coupon["percent_off"] / 100)
    return min(coupon["amount_off"], subtotal)


# --------------------------------------------------------------------------- subscriptions

SUBSCRIPTION_STATUSES = ("active", "trialing", "past_due", "canceled", "unpaid", "incomplete",
                         "incomplete_expired", "paused")


def make_subscription(*, customer: Ref, items: Sequence[tuple[Obj, int | None] | Obj],
                      status: str = "active", id: str | None = None, created: int | None = None,
                      current_period_start: int | None = None,
                      current_period_end: int | None = None, trial_end: int | None = None,
                      cancel_at_period_end: bool = False, canceled_at: int | None = None,
                      coupon: Obj | None = None, latest_invoice: Ref = None,
                      default_payment_method: str | None = None,
                      collection_method: str = "charge_automatically",
                      cancellation_reason: str | None = None,
                      metadata: Mapping[str, str] | None = None,
                      livemode: bool = False) -> Obj:
    """A subscription to one or more recurring prices.

    `items` are `(price, quantity)` pairs or bare prices (quantity 1); metered prices carry no
    quantity. The current period follows the first price's interval unless given. `trialing`
    runs a 14-day trial from `created` unless `trial_end` is given; `canceled` ends the
    subscription at `canceled_at` (default: the period start); `cancel_at_period_end` schedules
    the cancellation. `coupon` becomes the subscription's discount.
    """
    if status not in SUBSCRIPTION_STATUSES:
        raise ValueError(f"unknown subscription status {status!r}: one of {SUBSCRIPTION_STATUSES}")
    if not items:
        raise ValueError("a subscription has at least one item")
    pairs = [item if isinstance(item, tuple) else (item, 1) for item in items]
    for price, _ in pairs:
        if price.get("type") != "recurring":
            raise ValueError(f"{price['id']} is not a recurring price")
    sub_id = id or new_id("sub")
    created = _now() if created is None else created
    first = pairs[0][0]["recurring"]
    trial_start = None
    if status == "trialing":
        trial_start = created
        trial_end = trial_end or created + 14 * 86400
    start = current_period_start if current_period_start is not None else created
    if current_period_end is None:
        current_period_end = trial_end if status == "trialing" else add_interval(
            start, first["interval"], first["interval_count"])
    if (status == "canceled" or cancel_at_period_end) and canceled_at is None:
        canceled_at = start
    ended_at = canceled_at if status == "canceled" else None
    if status == "incomplete_expired":
        ended_at = created + 23 * 3600  # Stripe expires an unpaid first invoice after 23 hours

    customer_id = _id_of(customer)
    subscription_items = []
    for price, quantity in pairs:
        item = {
            "id": new_id("si"),
            "object": "subscription_item",
            "billing_thresholds": None,
            "created": created,
            "metadata": {},
            "price": _served_copy(price),
            "subscription": sub_id,
            "tax_rates": [],
        }
        if price["recurring"]["usage_type"] == "licensed":
            item["quantity"] = 1 if quantity is None else quantity
        subscription_items.append(item)

    discount = None
    if coupon is not None:
        discount = make_discount(coupon, start=created, customer=customer_id, subscription=sub_id)
    if status in ("canceled", "incomplete_expired") or cancel_at_period_end:
        cancellation = {"comment": None, "feedback": None,
                        "reason": cancellation_reason or "cancellation_requested"}
    else:
        cancellation = {"comment": None, "feedback": None, "reason": None}
    return {
        "id": sub_id,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"enabled": False},
        "billing_cycle_anchor": trial_end if trial_start is not None else start,
        "billing_thresholds": None,
        "cancel_at": current_period_end if cancel_at_period_end else None,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": canceled_at,
        "cancellation_details": cancellation,
        "collection_method": collection_method,
        "created": created,
        "currency": pairs[0][0]["currency"],
        "current_period_end": current_period_end,
        "current_period_start": start,
        "customer": customer_id,
        "days_until_due": 30 if collection_method == "send_invoice" else None,
        "default_payment_method": default_payment_method,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discount": discount,
        "ended_at": ended_at,
        "items": {
            "object": "list",
            "data": subscription_items,
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={sub_id}",
        },
        "latest_invoice": _id_of(latest_invoice),
        "livemode": livemode,
        "metadata": dict(metadata or {}),
        "next_pending_invoice_item_invoice": None,
        "on_behalf_of": None,
        "pause_collection": None,
        "payment_settings": {
            "payment_method_options": None,
            "payment_method_types": None,
            "save_default_payment_method": "off",
        },
        "pending_invoice_item_interval": None,
        "pending_setup_intent": None,
        "pending_update": None,
        "schedule": None,
        "start_date": created,
        "status": status,
        "test_clock": None,
        "transfer_data": None,
        "trial_end": trial_end if trial_start is not None else None,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": trial_start,
    }


def _served_copy(price: Obj) -> Obj:
    """An embedded copy of a price as Stripe embeds it: without its includable `tiers`."""
    embedded = _clone(price)
    embedded.pop("tiers", None)
    return embedded


# --------------------------------------------------------------------------- invoices

INVOICE_STATUSES = ("draft", "open", "paid", "void", "uncollectible")


def make_invoice_line(price: Obj, quantity: int = 1, *, period: tuple[int, int],
                      subscription: Ref = None, subscription_item: str | None = None,
                      amount: int | None = None, description: str | None = None,
                      proration: bool = False, discount: Obj | None = None,
                      livemode: bool = False) -> Obj:
    """One invoice line: a subscription line when `subscription` is given, else an invoice item."""
    if amount is None:
        amount = amount_for_quantity(price, quantity)
    currency = price["currency"]
    if description is None:
        description = _line_description(price, quantity)
    is_subscription = subscription is not None
    if is_subscription and subscription_item is None:
        raise ValueError("a subscription line names its subscription_item")
    discounted = discount_amount(discount, amount)
    line = {
        "id": new_id("il"),
        "object": "line_item",
        "amount": amount,
        "amount_excluding_tax": amount,
        "currency": currency,
        "description": description,
        "discount_amounts": [{"amount": discounted, "discount": discount["id"]}] if discount else [],
        "discountable": True,
        "discounts": [],
        "livemode": livemode,
        "metadata": {},
        "period": {"end": period[1], "start": period[0]},
        "price": _served_copy(price),
        "proration": proration,
        "proration_details": {"credited_items": None},
        "quantity": quantity,
        "subscription": _id_of(subscription),
        "tax_amounts": [],
        "tax_rates": [],
        "type": "subscription" if is_subscription else "invoiceitem",
        "unit_amount_excluding_tax": str(amount // quantity) if quantity else str(amount),
    }
    # Each kind of line names its source: the invoice item, or the subscription item.
    if is_subscription:
        line["subscription_item"] = subscription_item
    else:
        line["invoice_item"] = new_id("ii")
    return line


def _line_description(price: Obj, quantity: int) -> str:
    """As Stripe words it: "3 × Pro (at $49.00 / month)"."""
    label = price["nickname"] or price["product"]
    if not price["recurring"]:
        return label
    if price["billing_scheme"] == "tiered":
        return f"{quantity} × {label} (tiered)"
    at = format_amount(price["unit_amount"], price["currency"])
    return f"{quantity} × {label} (at {at} / {price['recurring']['interval']})"


def make_invoice(*, customer: Ref, status: str = "paid", subscription: Obj | str | None = None,
                 lines: Sequence[Obj] | None = None, id: str | None = None,
                 created: int | None = None, period_start: int | None = None,
                 period_end: int | None = None, charge: Ref = None, payment_intent: Ref = None,
                 paid_at: int | None = None, billing_reason: str | None = None,
                 attempt_count: int | None = None, discount: Obj | None = None,
                 number: str | None = None, customer_email: str | None = None,
                 customer_name: str | None = None,
                 collection_method: str = "charge_automatically",
                 prices: Iterable[Obj] = (), usage: Mapping[str, int] | None = None,
                 metadata: Mapping[str, str] | None = None, livemode: bool = False) -> Obj:
    """An invoice. With a subscription dict and no `lines`, it bills one period of each item:
    tiered items need their full price (with tiers) in `prices`, metered items their usage in
    `usage` (price id -> quantity).

    `paid` invoices have `status_transitions.paid_at` (default: `created` + 1 hour), `void` and
    `uncollectible` ones their own transition times. The subscription's discount applies unless
    `discount` is given. `customer` may be the customer dict (its email and name are copied).
    """
    if status not in INVOICE_STATUSES:
        raise ValueError(f"unknown invoice status {status!r}: one of {INVOICE_STATUSES}")
    invoice_id = id or new_id("in")
    created = _now() if created is None else created
    sub = subscription if isinstance(subscription, Mapping) else None
    if discount is None and sub is not None:
        discount = sub["discount"]
    if lines is None:
        if sub is None:
            raise ValueError("give lines, or a subscription dict to bill")
        period = (sub["current_period_start"], sub["current_period_end"])
        # Embedded prices lack their tiers (Stripe includes them only on request).
        full_prices = {price["id"]: price for price in prices}
        usage = usage or {}
        lines = [
            make_invoice_line(full_prices.get(item["price"]["id"], item["price"]),
                              usage.get(item["price"]["id"], item.get("quantity", 0)),
                              period=period, subscription=sub["id"],
                              subscription_item=item["id"], discount=discount,
                              livemode=livemode)
            for item in sub["items"]["data"]
        ]
    if not lines:
        raise ValueError("an invoice has at least one line")
    if period_start is None:
        period_start = min(line["period"]["start"] for line in lines)
    if period_end is None:
        period_end = max(line["period"]["end"] for line in lines)
    currency = lines[0]["currency"]
    subtotal = sum(line["amount"] for line in lines)
    discounted = discount_amount(discount, subtotal)
    total = subtotal - discounted
    finalized = status != "draft"
    paid = status == "paid"
    if paid and paid_at is None:
        paid_at = created + 3600
    if billing_reason is None:
        billing_reason = "subscription_cycle" if subscription is not None else "manual"
    if attempt_count is None:
        attempt_count = 1 if finalized and collection_method == "charge_automatically" else 0
    if customer_email is None and isinstance(customer, Mapping):
        customer_email = customer.get("email")
    if customer_name is None and isinstance(customer, Mapping):
        customer_name = customer.get("name")
    if number is None and finalized:
        prefix = customer.get("invoice_prefix") if isinstance(customer, Mapping) else None
        number = f"{prefix or _random_code()}-{_ids.randint(1, 9999):04d}"
    hosted = f"https://invoice.stripe.com/i/acct_1NnlkGGPxmnHQRkJ/test_{_random_chars(40)}"
    amount_paid = total if paid else 0
    return {
        "id": invoice_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "opsbook demo",
        "account_tax_ids": None,
        "amount_due": total,
        "amount_paid": amount_paid,
        "amount_remaining": total - amount_paid,
        "amount_shipping": 0,
        "application": None,
        "application_fee_amount": None,
        "attempt_count": attempt_count,
        "attempted": attempt_count > 0,
        "auto_advance": status in ("draft", "open"),
        "automatic_tax": {"enabled": False, "status": None},
        "billing_reason": billing_reason,
        "charge": _id_of(charge),
        "collection_method": collection_method,
        "created": created,
        "currency": currency,
        "custom_fields": None,
        "customer": _id_of(customer),
        "customer_address": None,
        "customer_email": customer_email,
        "customer_name": customer_name,
        "customer_phone": None,
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discount": _clone(discount),
        "discounts": [discount["id"]] if discount else [],
        "due_date": created + 30 * 86400 if collection_method == "send_invoice" else None,
        "effective_at": created if finalized else None,
        "ending_balance": 0 if finalized else None,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": hosted if finalized else None,
        "invoice_pdf": f"{hosted}/pdf" if finalized else None,
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": {
            "object": "list",
            "data": list(lines),
            "has_more": False,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
        "livemode": livemode,
        "metadata": dict(metadata or {}),
        "next_payment_attempt": created + 3 * 86400 if status == "open" else None,
        "number": number,
        "on_behalf_of": None,
        "paid": paid,
        "paid_out_of_band": False,
        "payment_intent": _id_of(payment_intent),
        "payment_settings": {"default_mandate": None, "payment_method_options": None,
                             "payment_method_types": None},
        "period_end": period_end,
        "period_start": period_start,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "quote": None,
        "receipt_number": None,
        "rendering_options": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": status,
        "status_transitions": {
            "finalized_at": created if finalized else None,
            "marked_uncollectible_at": created + 7 * 86400 if status == "uncollectible" else None,
            "paid_at": paid_at if paid else None,
            "voided_at": created + 86400 if status == "void" else None,
        },
        "subscription": _id_of(subscription),
        "subscription_details": {"metadata": dict(sub["metadata"]) if sub else None},
        "subtotal": subtotal,
        "subtotal_excluding_tax": subtotal,
        "tax": None,
        "test_clock": None,
        "total": total,
        "total_discount_amounts": ([{"amount": discounted, "discount": discount["id"]}]
                                   if discount else []),
        "total_excluding_tax": total,
        "total_tax_amounts": [],
        "transfer_data": None,
        "webhooks_delivered_at": created,
    }


# --------------------------------------------------------------------------- payments

_CARD_BRANDS = {"4242": "visa", "4444": "mastercard", "0005": "amex", "0002": "visa"}

# failure_code -> (failure_message, outcome reason, seller message)
CARD_FAILURES = {
    "card_declined": ("Your card was declined.", "generic_decline",
                      "The bank did not return any further details with this decline."),
    "insufficient_funds": ("Your card has insufficient funds.", "insufficient_funds",
                           "The bank returned the decline code `insufficient_funds`."),
    "expired_card": ("Your card has expired.", "expired_card",
                     "The bank returned the decline code `expired_card`."),
    "incorrect_cvc": ("Your card's security code is incorrect.", "incorrect_cvc",
                      "The bank returned the decline code `incorrect_cvc`."),
}


def make_payment_intent(*, amount: int, currency: str = "usd", customer: Ref = None,
                        status: str = "succeeded", id: str | None = None,
                        created: int | None = None, latest_charge: Ref = None,
                        invoice: Ref = None, failure_code: str | None = None,
                        description: str | None = None, receipt_email: str | None = None,
                        payment_method: str | None = None,
                        metadata: Mapping[str, str] | None = None,
                        livemode: bool = False) -> Obj:
    """A PaymentIntent. A failed payment is `requires_payment_method` with `last_payment_error`."""
    pi_id = id or new_id("pi")
    payment_method = payment_method or new_id("pm")
    last_error = None
    if failure_code is not None:
        message, decline_code, _ = CARD_FAILURES.get(failure_code, CARD_FAILURES["card_declined"])
        last_error = {
            "charge": _id_of(latest_charge),
            "code": failure_code if failure_code != "insufficient_funds" else "card_declined",
            "decline_code": decline_code,
            "doc_url": f"https://stripe.com/docs/error-codes/{failure_code.replace('_', '-')}",
            "message": message,
            "type": "card_error",
        }
        status = "requires_payment_method"
    return {
        "id": pi_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": amount if status == "succeeded" else 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic",
        "client_secret": f"{pi_id}_secret_{_random_chars(25)}",
        "confirmation_method": "automatic",
        "created": _now() if created is None else created,
        "currency": currency,
        "customer": _id_of(customer),
        "description": description,
        "invoice": _id_of(invoice),
        "last_payment_error": last_error,
        "latest_charge": _id_of(latest_charge),
        "livemode": livemode,
        "metadata": dict(metadata or {}),
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": None if last_error else payment_method,
        "payment_method_options": {
            "card": {"installments": None, "mandate_options": None, "network": None,
                     "request_three_d_secure": "automatic"},
        },
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": receipt_email,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": status,
        "transfer_data": None,
        "transfer_group": None,
    }


def make_charge(*, amount: int, currency: str = "usd", customer: Ref = None,
                status: str = "succeeded", id: str | None = None, created: int | None = None,
                failure_code: str | None = None, failure_message: str | None = None,
                amount_refunded: int = 0, disputed: bool = False,
                balance_transaction: Ref = None, invoice: Ref = None,
                payment_intent: Ref = None, description: str | None = None,
                receipt_email: str | None = None, card_last4: str = "4242",
                billing_name: str | None = None, metadata: Mapping[str, str] | None = None,
                livemode: bool = False) -> Obj:
    """A card charge. `failed` charges get a failure code and message (default card_declined);
    `amount_refunded` equal to `amount` marks the charge `refunded`."""
    if status not in ("succeeded", "failed", "pending"):
        raise ValueError(f"unknown charge status {status!r} (succeeded, failed or pending)")
    failed = status == "failed"
    if failed:
        failure_code = failure_code or "card_declined"
        failure_message = failure_message or CARD_FAILURES.get(
            failure_code, CARD_FAILURES["card_declined"])[0]
    if amount_refunded > amount:
        raise ValueError("amount_refunded exceeds the charge amount")
    charge_id = id or new_id("ch")
    brand = _CARD_BRANDS.get(card_last4, "visa")
    if failed:
        _, reason, seller_message = CARD_FAILURES.get(failure_code, CARD_FAILURES["card_declined"])
        outcome = {"network_status": "declined_by_network", "reason": reason,
                   "risk_level": "normal", "risk_score": _ids.randint(5, 60),
                   "seller_message": seller_message, "type": "issuer_declined"}
    else:
        outcome = {"network_status": "approved_by_network", "reason": None,
                   "risk_level": "normal", "risk_score": _ids.randint(5, 60),
                   "seller_message": "Payment complete.", "type": "authorized"}
    return {
        "id": charge_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": 0 if failed else amount,
        "amount_refunded": amount_refunded,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": None if failed else _id_of(balance_transaction),
        "billing_details": {"address": _address(), "email": receipt_email, "name": billing_name,
                            "phone": None},
        "calculated_statement_descriptor": "OPSBOOK DEMO",
        "captured": not failed,
        "created": _now() if created is None else created,
        "currency": currency,
        "customer": _id_of(customer),
        "description": description,
        "disputed": disputed,
        "failure_balance_transaction": None,
        "failure_code": failure_code if failed else None,
        "failure_message": failure_message if failed else None,
        "fraud_details": {},
        "invoice": _id_of(invoice),
        "livemode": livemode,
        "metadata": dict(metadata or {}),
        "on_behalf_of": None,
        "outcome": outcome,
        "paid": status == "succeeded",
        "payment_intent": _id_of(payment_intent),
        "payment_method": new_id("pm"),
        "payment_method_details": {
            "card": {
                "brand": brand,
                "checks": {"address_line1_check": None, "address_postal_code_check": None,
                           "cvc_check": "pass"},
                "country": "US",
                "exp_month": 12,
                "exp_year": 2034,
                "fingerprint": _random_chars(16),
                "funding": "credit",
                "installments": None,
                "last4": card_last4,
                "mandate": None,
                "network": brand,
                "network_token": {"used": False},
                "three_d_secure": None,
                "wallet": None,
            },
            "type": "card",
        },
        "receipt_email": receipt_email,
        "receipt_number": None,
        "receipt_url": None if failed else
        f"https://pay.stripe.com/receipts/payment/{_random_chars(60)}",
        "refunded": amount_refunded == amount and not failed,
        "review": None,
        "shipping": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": status,
        "transfer_data": None,
        "transfer_group": None,
    }


def make_refund(*, charge: Ref, amount: int | None = None, currency: str | None = None,
                id: str | None = None, created: int | None = None, reason: str | None = None,
                status: str = "succeeded", balance_transaction: Ref = None,
                payment_intent: Ref = None, metadata: Mapping[str, str] | None = None) -> Obj:
    """A refund of `charge` (a charge dict supplies the amount, currency and payment intent)."""
    if isinstance(charge, Mapping):
        amount = charge["amount"] if amount is None else amount
        currency = currency or charge["currency"]
        payment_intent = payment_intent or charge["payment_intent"]
    if amount is None or currency is None:
        raise ValueError("a refund needs amount and currency (or the charge dict)")
    return {
        "id": id or new_id("re"),
        "object": "refund",
        "amount": amount,
        "balance_transaction": _id_of(balance_transaction),
        "charge": _id_of(charge),
        "created": _now() if created is None else created,
        "currency": currency,
        "metadata": dict(metadata or {}),
        "payment_intent": _id_of(payment_intent),
        "reason": reason,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": status,
        "transfer_reversal": None,
    }


_DISPUTE_EVIDENCE_FIELDS = (
    "access_activity_log billing_address cancellation_policy cancellation_policy_disclosure "
    "cancellation_rebuttal customer_communication customer_email_address customer_name "
    "customer_purchase_ip customer_signature duplicate_charge_documentation "
    "duplicate_charge_explanation duplicate_charge_id product_description receipt "
    "refund_policy refund_policy_disclosure refund_refusal_explanation service_date "
    "service_documentation shipping_address shipping_carrier shipping_date "
    "shipping_documentation shipping_tracking_number uncategorized_file uncategorized_text"
).split()

_NETWORK_REASON_CODES = {"fraudulent": "10.4", "product_not_received": "13.1",
                         "duplicate": "12.6.1", "subscription_canceled": "13.2",
                         "general": "10.4"}


def make_dispute(*, charge: Ref, amount: int | None = None, currency: str | None = None,
                 reason: str = "fraudulent", status: str = "needs_response",
                 id: str | None = None, created: int | None = None,
                 balance_transactions: Sequence[Obj] = (), payment_intent: Ref = None,
                 metadata: Mapping[str, str] | None = None, livemode: bool = False) -> Obj:
    """A dispute on `charge`; `balance_transactions` are the full withdrawal/reinstatement
    transactions (Stripe embeds them, not their ids)."""
    if isinstance(charge, Mapping):
        amount = charge["amount"] if amount is None else amount
        currency = currency or charge["currency"]
        payment_intent = payment_intent or charge["payment_intent"]
    if amount is None or currency is None:
        raise ValueError("a dispute needs amount and currency (or the charge dict)")
    created = _now() if created is None else created
    open_ = status in ("needs_response", "warning_needs_response")
    return {
        "id": id or new_id("dp"),
        "object": "dispute",
        "amount": amount,
        "balance_transactions": [_clone(txn) for txn in balance_transactions],
        "charge": _id_of(charge),
        "created": created,
        "currency": currency,
        "evidence": {field: None for field in _DISPUTE_EVIDENCE_FIELDS},
        "evidence_details": {"due_by": created + 21 * 86400, "has_evidence": not open_,
                             "past_due": False, "submission_count": 0 if open_ else 1},
        "is_charge_refundable": status.startswith("warning_"),
        "livemode": livemode,
        "metadata": dict(metadata or {}),
        "payment_intent": _id_of(payment_intent),
        "payment_method_details": {
            "card": {"brand": "visa", "network_reason_code": _NETWORK_REASON_CODES.get(reason)},
            "type": "card",
        },
        "reason": reason,
        "status": status,
    }


def processing_fee(amount: int, currency: str) -> int:
    """Stripe's standard card fee: 2.9% + 30¢, or 3.6% in zero-decimal currencies."""
    if is_zero_decimal(currency):
        return round(amount * 0.036)
    return round(amount * 0.029) + 30


_REPORTING_CATEGORIES = {"charge": "charge", "payment": "charge", "refund": "refund",
                         "payment_refund": "refund", "payout": "payout",
                         "stripe_fee": "fee", "adjustment": "other_adjustment"}


def make_balance_transaction(*, amount: int, currency: str = "usd", type: str = "charge",
                             source: Ref = None, id: str | None = None,
                             created: int | None = None, fee: int | None = None,
                             fee_description: str | None = None, status: str = "available",
                             available_on: int | None = None, description: str | None = None,
                             ) -> Obj:
    """A balance transaction: `net = amount - fee`.

    Charges default to Stripe's standard processing fee; refunds to no fee; an `adjustment`
    whose source is a dispute is the disputed amount withdrawn (`amount` negative) with the
    $15 dispute fee.
    """
    source_id = _id_of(source)
    is_dispute = source_id is not None and source_id.startswith("dp_")
    if fee is None:
        if type in ("charge", "payment"):
            fee = processing_fee(amount, currency)
        elif type == "adjustment" and is_dispute:
            fee = 2000 if is_zero_decimal(currency) else 1500
        else:
            fee = 0
    if fee_description is None:
        fee_description = "Dispute fee" if is_dispute else "Stripe processing fees"
    created = _now() if created is None else created
    reporting_category = "dispute" if is_dispute else _REPORTING_CATEGORIES.get(type, type)
    return {
        "id": id or new_id("txn"),
        "object": "balance_transaction",
        "amount": amount,
        "available_on": available_on if available_on is not None else created + 2 * 86400,
        "created": created,
        "currency": currency,
        "description": description,
        "exchange_rate": None,
        "fee": fee,
        "fee_details": [{"amount": fee, "application": None, "currency": currency,
                         "description": fee_description, "type": "stripe_fee"}] if fee else [],
        "net": amount - fee,
        "reporting_category": reporting_category,
        "source": source_id,
        "status": status,
        "type": type,
    }


# --------------------------------------------------------------------------- checkout


def make_checkout_session(*, mode: str = "payment", customer: Ref = None,
                          customer_email: str | None = None, amount_total: int | None = None,
                          currency: str = "usd", payment_status: str = "paid",
                          status: str = "complete", payment_intent: Ref = None,
                          subscription: Ref = None, invoice: Ref = None,
                          id: str | None = None, created: int | None = None,
                          client_reference_id: str | None = None,
                          metadata: Mapping[str, str] | None = None,
                          success_url: str = "https://app.example.com/billing/success",
                          cancel_url: str = "https://app.example.com/billing/cancel",
                          livemode: bool = False) -> Obj:
    """A Checkout Session. `payment` mode carries a payment intent; `subscription` mode a
    subscription (and its first invoice). Completed sessions have no URL any more."""
    if mode not in ("payment", "subscription", "setup"):
        raise ValueError(f"unknown checkout mode {mode!r} (payment, subscription or setup)")
    session_id = id or new_id("cs", livemode=livemode)
    created = _now() if created is None else created
    if isinstance(customer, Mapping):
        customer_email = customer_email or customer.get("email")
        name = customer.get("name")
    else:
        name = None
    if mode == "payment" and payment_intent is None:
        payment_intent = new_id("pi")
    return {
        "id": session_id,
        "object": "checkout.session",
        "after_expiration": None,
        "allow_promotion_codes": None,
        "amount_subtotal": amount_total,
        "amount_total": amount_total,
        "automatic_tax": {"enabled": False, "status": None},
        "billing_address_collection": None,
        "cancel_url": cancel_url,
        "client_reference_id": client_reference_id,
        "consent": None,
        "consent_collection": None,
        "created": created,
        "currency": currency,
        "currency_conversion": None,
        "custom_fields": [],
        "custom_text": {"shipping_address": None, "submit": None},
        "customer": _id_of(customer),
        "customer_creation": "if_required" if mode == "payment" else None,
        "customer_details": {"address": None, "email": customer_email, "name": name,
                             "phone": None, "tax_exempt": "none", "tax_ids": []},
        "customer_email": customer_email,
        "expires_at": created + 86400,
        "invoice": _id_of(invoice),
        "invoice_creation": None,
        "livemode": livemode,
        "locale": None,
        "metadata": dict(metadata or {}),
        "mode": mode,
        "payment_intent": _id_of(payment_intent) if mode == "payment" else None,
        "payment_link": None,
        "payment_method_collection": "always" if mode == "subscription" else None,
        "payment_method_options": {},
        "payment_method_types": ["card"],
        "payment_status": payment_status,
        "phone_number_collection": {"enabled": False},
        "recovered_from": None,
        "setup_intent": None,
        "shipping_address_collection": None,
        "shipping_cost": None,
        "shipping_details": None,
        "shipping_options": [],
        "status": status,
        "submit_type": None,
        "subscription": _id_of(subscription) if mode == "subscription" else None,
        "success_url": success_url,
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "url": None if status != "open" else f"https://checkout.stripe.com/c/pay/{session_id}",
    }


# --------------------------------------------------------------------------- events & webhooks

# Which object an event's data.object is, by event type prefix (longest prefix wins).
_EVENT_OBJECT_BY_PREFIX = {
    "checkout.session.": "checkout.session",
    "customer.subscription.": "subscription",
    "customer.discount.": "discount",
    "customer.": "customer",
    "charge.dispute.": "dispute",
    "charge.refund.": "refund",
    "charge.": "charge",
    "invoice.": "invoice",
    "payment_intent.": "payment_intent",
    "price.": "price",
    "product.": "product",
    "refund.": "refund",
}


def event_object_type(event_type: str) -> str | None:
    matches = [p for p in _EVENT_OBJECT_BY_PREFIX if event_type.startswith(p)]
    return _EVENT_OBJECT_BY_PREFIX[max(matches, key=len)] if matches else None


def make_event(type: str, data_object: Mapping[str, Any], *, id: str | None = None,
               created: int | None = None, pending_webhooks: int = 0,
               previous_attributes: Mapping[str, Any] | None = None,
               request_id: str | None = None, idempotency_key: str | None = None,
               api_version: str | None = API_VERSION, livemode: bool = False) -> Obj:
    """An event: a snapshot of `data_object` at `created`.

    `pending_webhooks` counts endpoints that have not yet acknowledged it (0 once every
    delivery succeeded). Events caused by an API call carry its `request_id`; automatic ones
    (a subscription renewing) have none.
    """
    expected = event_object_type(type)
    if expected is not None and data_object.get("object") != expected:
        raise ValueError(f"{type} events carry {expected} objects, not {data_object.get('object')}")
    data: Obj = {"object": _clone(dict(data_object))}
    if previous_attributes is not None:
        data["previous_attributes"] = _clone(dict(previous_attributes))
    return {
        "id": id or new_id("evt"),
        "object": "event",
        "api_version": api_version,
        "created": _now() if created is None else created,
        "data": data,
        "livemode": livemode,
        "pending_webhooks": pending_webhooks,
        "request": {"id": request_id, "idempotency_key": idempotency_key},
        "type": type,
    }


def make_webhook_endpoint(url: str, *, enabled_events: Iterable[str], status: str = "enabled",
                          api_version: str | None = API_VERSION, id: str | None = None,
                          created: int | None = None, description: str | None = None,
                          metadata: Mapping[str, str] | None = None,
                          livemode: bool = False) -> Obj:
    """A webhook endpoint; `enabled_events=["*"]` subscribes it to every event."""
    if status not in ("enabled", "disabled"):
        raise ValueError(f"unknown webhook endpoint status {status!r} (enabled or disabled)")
    return {
        "id": id or new_id("we"),
        "object": "webhook_endpoint",
        "api_version": api_version,
        "application": None,
        "created": _now() if created is None else created,
        "description": description,
        "enabled_events": list(enabled_events),
        "livemode": livemode,
        "metadata": dict(metadata or {}),
        "status": status,
        "url": url,
    }
