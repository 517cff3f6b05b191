"""Amounts in a currency's smallest unit, as Stripe keeps them, and their display.

Stripe stores 2900 for $29.00 but 4900 for ¥4,900: JPY and the other zero-decimal currencies
have no minor unit, and a few currencies have three decimals. Amounts are never converted
between currencies and never summed across them; every table is per currency.
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

# https://docs.stripe.com/currencies#zero-decimal
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
# https://docs.stripe.com/currencies#three-decimal
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())


def exponent(currency: str) -> int:
    """Decimal places of the currency's major unit: 0 for JPY, 3 for KWD, else 2."""
    code = (currency or "").lower()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def major(amount_minor: int | Fraction | Decimal | float | None, currency: str) -> float | None:
    """Minor units to the major unit, rounded half-up to the currency's decimals (2900 usd -> 29.0)."""
    if amount_minor is None:
        return None
    places = exponent(currency)
    value = _decimal(amount_minor) / (Decimal(10) ** places)
    return float(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def minor(amount_major: float | int, currency: str) -> Fraction:
    """A major-unit amount (a parameter such as 0.50) in minor units, exactly."""
    return Fraction(Decimal(str(amount_major))) * 10 ** exponent(currency)


def round_minor(amount_minor: Fraction | int) -> int:
    """To a whole minor unit, half-up (the cent a report shows)."""
    return int(_decimal(amount_minor).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def fmt(amount_minor: int | Fraction | None, currency: str) -> str:
    """2900, "usd" -> "29.00 USD"; 4900, "jpy" -> "4,900 JPY"."""
    if amount_minor is None:
        return ""
    places = exponent(currency)
    return f"{major(amount_minor, currency):,.{places}f} {currency.upper()}"


def _decimal(value) -> Decimal:
    if isinstance(value, Fraction):
        return Decimal(value.numerator) / Decimal(value.denominator)
    if isinstance(value, float):
        return Decimal(str(value))
    return Decimal(value)


class ExactSum:
    """An exact sum of many Fractions (and ints), faster than adding them one by one: numerators are
    added per denominator (monthly amounts have a few: 1, 3, 12…) and the few sums combined at
    the end. ``value()`` is the same Fraction as ``sum(values, Fraction(0))``."""

    __slots__ = ("_by_denominator",)

    def __init__(self):
        self._by_denominator: dict[int, int] = {}

    def add(self, value: Fraction | int) -> None:
        d = value.denominator
        self._by_denominator[d] = self._by_denominator.get(d, 0) + value.numerator

    def value(self) -> Fraction:
        total = Fraction(0)
        for d, n in self._by_denominator.items():
            total += Fraction(n, d)
        return total

