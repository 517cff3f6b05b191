"""The report's period: a calendar month, a range of days, or the current month so far (UTC).

The period is a half-open interval [start, end). What has happened so far stops at ``until``
(the end, or now for a period that has not finished): MRR is measured at ``until``, revenue and
charges are counted in [start, until).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from functools import cached_property

from ..errors import ParameterError
from ..errors import quote

_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")
_DAY = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
# Stripe began in 2011: no account holds anything older. The latest day a range may name is the
# end of next year (a range may end in the future; it is then reported so far).
EARLIEST_YEAR = 2011
# One report covers at most a year (a leap year's 366 days): Stripe is read charge by charge.
MAX_RANGE_DAYS = 366


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime  # exclusive
    now: datetime
    label: str

    @property
    def until(self) -> datetime:
        """The end of what has happened: the period's end, or now when it is still running."""
        return min(self.end, self.now)

    @cached_property  # (read for every object of the period: ``contains``)
    def start_ts(self) -> int:
        return int(self.start.timestamp())

    @cached_property
    def until_ts(self) -> int:
        return int(self.until.timestamp())

    @property
    def so_far(self) -> bool:
        return self.now < self.end

    def contains(self, ts: int | None) -> bool:
        return ts is not None and self.start_ts <= ts < self.until_ts

    def describe(self) -> str:
        fmt = "%Y-%m-%d %H:%M"
        tail = " (so far)" if self.so_far else ""
        return f"{self.label}: {self.start.strftime(fmt)} to {self.until.strftime(fmt)} UTC{tail}"


def month_start(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def add_months(moment: datetime, months: int) -> datetime:
    index = moment.year * 12 + moment.month - 1 + months
    return moment.replace(year=index // 12, month=index % 12 + 1)


def resolve_period(period: str = "", start_date: str = "", end_date: str = "", *,
                   now: datetime | None = None) -> Period:
    """The notebook's period parameters as a Period.

    ``start_date``/``end_date`` ("YYYY-MM-DD", the end day included) win over ``period``
    ("YYYY-MM", or "previous" for the last complete month: a report scheduled on the 1st); with
    neither, the current month so far. Days lie from ``EARLIEST_YEAR`` (Stripe holds nothing
    older) to the end of next year, and a range is at most ``MAX_RANGE_DAYS`` days.
    """
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    period, start_date, end_date = (str(x or "").strip() for x in (period, start_date, end_date))
    if start_date or end_date:
        last = _day(end_date, "end_date", now) if end_date else None
        start = _day(start_date, "start_date", now) if start_date else None
        if start is not None and last is not None and start > last:
            raise ParameterError(f"parameter 'start_date' {start_date} is after 'end_date' {end_date} "
                                 "— give the range's first day as start_date and its last as end_date")
        end = last + timedelta(days=1) if last is not None else now
        if start is None:
            start = month_start(end - timedelta(seconds=1))
        label = f"{start.date()} to {last.date() if last is not None else 'now'}"
        days = (end - start) / timedelta(days=1)
        if days > MAX_RANGE_DAYS:
            raise ParameterError(
                f"parameters 'start_date'/'end_date': the range {label} spans {math.ceil(days):,} days, more than the {MAX_RANGE_DAYS} one report covers "
                "— give start_date and end_date at most a year apart, and run one report per year")
    elif period.lower() == "previous":
        end = month_start(now)
        start = add_months(end, -1)
        label = start.strftime("%Y-%m")
    elif period:
        match = _MONTH.fullmatch(period)
        if not match or not 1 <= int(match.group(2)) <= 12:
            raise ParameterError(f"parameter 'period': {quote(period)} is not a month like 2026-11, nor 'previous' "
                                 "(or leave it empty for the current month so far)")
        _check_year(int(match.group(1)), "period", period, now)
        start = datetime(int(match.group(1)), int(match.group(2)), 1, tzinfo=timezone.utc)
        end = add_months(start, 1)
        label = period
    else:
        start = month_start(now)
        end = add_months(start, 1)
        label = start.strftime("%Y-%m")
    if start >= end:
        raise ParameterError(f"the period is empty: start {start.date()} is not before end {end.date()}")
    if start >= now:
        raise ParameterError(f"the period starts in the future ({start.date()}); nothing has happened yet "
                             f"— give a period that starts before today ({now.date()} UTC)")
    return Period(start=start, end=end, now=now, label=label)


def _check_year(year: int, name: str, text: str, now: datetime) -> None:
    latest = now.year + 1
    if not EARLIEST_YEAR <= year <= latest:
        raise ParameterError(
            f"parameter {name!r}: {quote(text)} is outside the years a report covers, {EARLIEST_YEAR} to {latest} "
            f"(Stripe holds no data before {EARLIEST_YEAR}) — give a {'month' if name == 'period' else 'day'} in that span")


def _day(text: str, name: str, now: datetime) -> datetime:
    match = _DAY.fullmatch(text)
    if match:
        _check_year(int(match.group(1)), name, text, now)
    try:
        if not match:
            raise ValueError
        day = date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        raise ParameterError(f"parameter {name!r}: {quote(text)} is not a day like 2026-11-30") from None
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def history_buckets(period: Period, months: int) -> list[tuple[str, int, int]]:
    """Calendar months (label, start, end) ending with the one that holds the period's end,
    the last cut at ``period.until``: the months the MRR history shows."""
    last = month_start(period.until - timedelta(seconds=1))
    buckets = []
    for back in range(months - 1, -1, -1):
        start = add_months(last, -back)
        end = min(add_months(start, 1), period.until)
        buckets.append((start.strftime("%Y-%m"), int(start.timestamp()), int(end.timestamp())))
    return buckets
