"""The report's period: a calendar month, a range of days, or the current month so far (UTC).

The period is a half-open interval [start, end). What has happened so far stops at ``until``
(the end, or now for a period that has not finished): MRR is measured at ``until``, revenue and
charges are counted in [start, until).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from ..errors import ParameterError

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")


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

    @property
    def start_ts(self) -> int:
        return int(self.start.timestamp())

    @property
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
    neither, the current month so far.
    """
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    period, start_date, end_date = (period or "").strip(), (start_date or "").strip(), (end_date or "").strip()
    if start_date or end_date:
        end = _day(end_date, "end_date") + timedelta(days=1) if end_date else now
        start = _day(start_date, "start_date") if start_date else month_start(end - timedelta(seconds=1))
        label = f"{start.date()} to {(end - timedelta(days=1)).date() if end_date else 'now'}"
    elif period.lower() == "previous":
        end = month_start(now)
        start = add_months(end, -1)
        label = start.strftime("%Y-%m")
    elif period:
        match = _MONTH.match(period)
        if not match or not 1 <= int(match.group(2)) <= 12:
            raise ParameterError(f"parameter 'period': {period!r} is not a month like 2026-11, nor 'previous' "
                                 "(or leave it empty for the current month so far)")
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
        raise ParameterError(f"the period starts in the future ({start.date()}); nothing has happened yet")
    return Period(start=start, end=end, now=now, label=label)


def _day(text: str, name: str) -> datetime:
    match = _DAY.match(text)
    try:
        if not match:
            raise ValueError
        day = date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        raise ParameterError(f"parameter {name!r}: {text!r} is not a day like 2026-11-30") from None
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
