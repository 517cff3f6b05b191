"""Epoch seconds and datetimes, with one rule for a datetime without a time zone: it is UTC.

Stripe's timestamps are UTC epoch seconds, and the ``timestamp without time zone`` columns opsbook
reads hold UTC; so a naive datetime (from such a column, or passed by a caller) is read as UTC
everywhere, never refused and never taken as the machine's local time.
"""
from __future__ import annotations

from datetime import datetime, timezone


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive one is taken to be UTC already."""
    if moment.tzinfo is timezone.utc:
        return moment  # (already: no copy, a million periods stay a million objects, not two)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def from_epoch(ts: int | float | None) -> datetime | None:
    """Epoch seconds (Stripe's ``created``) as an aware UTC datetime; ``None`` stays ``None``."""
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc)


def to_epoch(moment: datetime | int | float | None) -> int | None:
    """Whole epoch seconds of ``moment`` (naive is UTC); a number is truncated, ``None`` stays ``None``."""
    if moment is None:
        return None
    if isinstance(moment, datetime):
        return int(as_utc(moment).timestamp())
    return int(moment)
