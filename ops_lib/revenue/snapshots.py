"""Every subscription's MRR at one moment at once: the book's facts as arrays (numpy).

A snapshot (MRR per customer and currency at one moment, the history's unit) applies
``MRRBook.amount_at``'s rules to every subscription: read one subscription at a time, that is a
Python call per subscription per month (13 snapshots × 1M subscriptions for a year's history).
Here each subscription's facts are read once into arrays — its start, end, when its current
state begins, its status rule, its trial, its discount's window, its invoices' billed periods —
and a moment is a few array comparisons. Amounts stay exact: the arrays hold indices in lists of
Fractions (``amounts``, and ``values`` for a customer's MRR: equal amounts one value), totals add
each value once, times how many customers have it, and a month's movements are classified once
per distinct case (``movements``), not once per customer.
"""
from __future__ import annotations

from fractions import Fraction
from itertools import chain, repeat
from operator import attrgetter
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from . import money

if TYPE_CHECKING:
    from .mrr import MRRBook

DAY = 86_400
NEVER = np.iinfo(np.int64).max  # a moment that never comes: no end, no current state, no discount
EARLIEST = np.iinfo(np.int64).min  # a moment always past: no trial
NONE = -1  # no amount above zero
_NO_CUSTOMER = object()  # a subscription without a customer, while factorized
_NO, _ALWAYS, _GRACE = 0, 1, 2  # whether a live subscription's status counts: never, always, within the grace


class Facts:
    """Per subscription (in the book's order), what its MRR at any moment depends on."""

    def __init__(self, book: "MRRBook"):
        from .data import record_columns
        from .mrr import customer_columns, subscription_discount

        self.grace_days = book.grace_days
        self.amounts: list[tuple[Fraction, str]] = []  # each (amount, currency) once
        # by the amount's identity: profiles and segments share their amounts, and a Fraction's
        # hash costs more than the rest of a subscription's facts (an amount listed twice adds up all the same)
        amount_ids: dict[tuple[int, str], int] = {}
        held: list = []
        currency_ids: dict[str, int] = {}

        def amount_id(amount: Fraction | None, currency: str) -> int:
            key = (id(amount), currency)
            found = amount_ids.get(key)
            if found is None:
                if amount is None or not amount > 0:
                    found = amount_ids[key] = NONE
                else:
                    found = amount_ids[key] = len(self.amounts)
                    self.amounts.append((amount, currency))
                    currency_ids.setdefault(currency, len(currency_ids))
                held.append(amount)  # (its id stays its own)
            return found

        subs, profiles = book.subscriptions, book._all_profiles()
        ids, status, created, cps, ended, trial_end, start_date, paused, customer = record_columns(
            subs, "id", "status", "created", "current_period_start", "ended_at", "trial_end", "start_date",
            "pause_collection", "customer")
        period_start = [c or made or 0 for c, made in zip(cps, created)]
        self.period_start = np.array(period_start, dtype=np.int64)
        self.start = np.array([s or made or 0 for s, made in zip(start_date, created)], dtype=np.int64)
        self.ended = np.array([NEVER if e is None else e for e in ended], dtype=np.int64)
        self.cps = np.array([NEVER if c is None else c for c in cps], dtype=np.int64)
        self.live_from = np.array([NEVER if st in ("canceled", "incomplete_expired") else (c or 0)
                                   for st, c in zip(status, cps)], dtype=np.int64)
        self.rule = np.array([_NO if p else _ALWAYS if st == "active" else _GRACE if st == "past_due" else _NO
                              for st, p in zip(status, paused)], dtype=np.int8)
        self.pending = np.array([st in ("incomplete", "incomplete_expired") for st in status], dtype=bool)
        self.trial_end = np.array([t if t else EARLIEST for t in trial_end], dtype=np.int64)

        # What each distinct profile is worth (most subscriptions share one: each worked out once,
        # in the order the subscriptions first name it), then each subscription's, by its profile's
        distinct = {id(p): p for p in profiles}
        worth = np.array([(amount_id(p.gross, p.currency), amount_id(p.discounted, p.currency) if p._coupon else NONE,
                           currency_ids.setdefault(p.currency, len(currency_ids)), bool(p._coupon))
                          for p in distinct.values()], dtype=np.int64).reshape(-1, 4)
        which = np.fromiter(map({key: k for k, key in enumerate(distinct)}.__getitem__, map(id, profiles)),
                            dtype=np.int64, count=len(profiles))
        self.gross = worth[which, 0].astype(np.int32)
        self.discounted = worth[which, 1].astype(np.int32)
        self.currency = worth[which, 2].astype(np.int32)
        coupon = worth[which, 3].astype(bool)

        # ``discount_active`` as a window [from, until): a ``once`` discount applies from its
        # start when it was attached in the current period, never otherwise
        self.discount_from = np.full(len(subs), NEVER, dtype=np.int64)
        self.discount_until = np.full(len(subs), NEVER, dtype=np.int64)
        for i in np.flatnonzero(coupon).tolist():
            discount = subscription_discount(subs[i])
            if not discount or not discount.get("coupon"):
                continue
            duration = discount["coupon"].get("duration")
            begins = discount.get("start") or 0
            if duration == "forever" or (duration == "once" and begins >= period_start[i]):
                self.discount_from[i] = begins
            elif duration == "repeating":
                self.discount_from[i] = begins
                end = discount.get("end")
                self.discount_until[i] = NEVER if end is None else end

        # Each customer (``mrr._customer``'s id) as an index in ``customer_ids``, by C (a dict of a
        # million customers costs a second and 70 MB; ``customers``, made when first asked, is that dict)
        ids_of_customers = customer_columns(customer)[0]
        for i in [i for i, c in enumerate(customer) if c is None]:
            ids_of_customers[i] = _NO_CUSTOMER  # (pandas would make None a NaN)
        customer = ids_of_customers
        codes, uniques = pd.factorize(np.array(customer, dtype=object))
        self.customer = codes.astype(np.int64)
        self.customer_ids = [None if c is _NO_CUSTOMER else c for c in uniques.tolist()]
        self._customers: dict[object, int] | None = None

        # The invoices' billed periods, by subscription then start and creation (``MRRBook.segments``)
        found = list(map(book.segments.get, ids, repeat(())))
        sizes = np.fromiter(map(len, found), dtype=np.int64, count=len(found))
        every = list(chain.from_iterable(found))

        def column(name: str, dtype) -> np.ndarray:  # (each field a column of its own: no row tuples)
            return np.fromiter(map(attrgetter(name), every), dtype=dtype, count=len(every))
        owner, start, made = np.repeat(np.arange(len(found), dtype=np.int32), sizes), column("start", np.int64), \
            column("created", np.int64)
        # a subscription's first segment (its oldest), or NEVER: none
        self.first_invoiced = np.full(len(found), NEVER, dtype=np.int64)
        invoiced = sizes > 0
        self.first_invoiced[invoiced] = start[(np.cumsum(sizes) - sizes)[invoiced]]
        # segments of the same subscription, start and creation are a group: the first covering one counts
        group = np.cumsum(np.r_[True, (owner[1:] != owner[:-1]) | (start[1:] != start[:-1]) | (made[1:] != made[:-1])]
                          if every else np.zeros(0, dtype=bool)) - 1
        # each (amount, currency) given its index once, in the order the segments first name it
        # (a key tuple per segment held for all of them was ~50 MB at a million customers)
        self.seg = {"sub": owner, "start": start, "end": column("end", np.int64), "paid": column("paid", bool),
                    "amount": np.fromiter(map(amount_id, map(attrgetter("amount"), every),
                                              map(attrgetter("currency"), every)), dtype=np.int32, count=len(every)),
                    "group": group.astype(np.int32)}
        self.currencies = list(currency_ids)
        self.amount_currency = np.array([currency_ids[cur] for _, cur in self.amounts], dtype=np.int64)
        # Each distinct amount value once (``values``): equal amounts are one value, so that a
        # customer's MRR at two moments is the same exactly when its value index is
        self.values: list[Fraction] = []
        self._value_ids: dict[Fraction, int] = {}
        self.value_of = np.array([self._value_id(amount) for amount, _ in self.amounts], dtype=np.int64)
        self._by_key: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._firsts: np.ndarray | None = None

    def _value_id(self, amount: Fraction) -> int:
        found = self._value_ids.get(amount)
        if found is None:
            found = self._value_ids[amount] = len(self.values)
            self.values.append(amount)
        return found

    def _state(self, moments) -> np.ndarray:
        """The current items' amount at ``moments`` (one per subscription, or one for all), discount applied when it applies."""
        applies = (moments >= self.discount_from) & (moments < self.discount_until)
        return np.where(applies, self.discounted, self.gross)

    def _covering(self, moment: int) -> tuple[np.ndarray, np.ndarray]:
        """The subscriptions an invoice covers at ``moment``, and the amount that counts from it:
        the latest segment by start then invoice creation, the first listed of equals (``mrr._covering``)."""
        seg = self.seg
        found = np.flatnonzero((seg["start"] <= moment) & (moment < seg["end"]))
        groups = seg["group"][found]
        found = found[np.r_[True, groups[1:] != groups[:-1]]] if found.size else found
        subs = seg["sub"][found]
        found = found[np.r_[subs[1:] != subs[:-1], True]] if found.size else found
        counted = seg["paid"][found] | ((moment - seg["start"][found]) / DAY <= self.grace_days)
        return seg["sub"][found], np.where(counted, seg["amount"][found], NONE)

    def amounts_at(self, moment: int) -> np.ndarray:
        """Per subscription, the index of its amount in ``amounts`` at ``moment`` (``NONE``: nothing above zero)."""
        alive = (moment >= self.start) & (moment < self.ended)
        live = moment >= self.live_from
        status_counts = (self.rule == _ALWAYS) | (
            (self.rule == _GRACE) & ((moment - self.period_start) / DAY <= self.grace_days))
        covered = np.zeros(len(self.start), dtype=bool)
        covered_subs, from_invoice = self._covering(moment)
        covered[covered_subs] = True
        in_trial = moment < self.trial_end
        # before the current state: an invoice's period, else (before the first invoice, not in a
        # trial, not incomplete) the current items assumed
        assumed = ~covered & ~self.pending & ~in_trial & (moment < self.first_invoiced)
        out = np.where(alive & np.where(live, status_counts, assumed), self._state(moment), NONE)
        invoiced = covered_subs[alive[covered_subs] & ~live[covered_subs]]
        out[invoiced] = from_invoice[alive[covered_subs] & ~live[covered_subs]]
        return out

    def by_key(self, moment: int) -> tuple[np.ndarray, np.ndarray]:
        """Each (customer, currency) with MRR at ``moment``, as ``customer × currencies + currency``
        (``customer_ids``' and ``currencies``' indices), in that order, and its MRR's index in
        ``values``. The latest two moments are kept (the history's months share their boundaries)."""
        if moment in self._by_key:
            return self._by_key[moment]
        ids = self.amounts_at(moment)
        subs = np.flatnonzero(ids >= 0)
        ids = ids[subs]
        keys = self.customer[subs] * len(self.currencies) + self.amount_currency[ids]
        order = np.argsort(keys, kind="stable")
        keys, values = keys[order], self.value_of[ids[order]]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if keys.size else keys
        if starts.size < keys.size:  # customers with more than one subscription in a currency: their sum
            sizes = np.diff(np.r_[starts, keys.size])
            summed = values[starts]
            for group in np.flatnonzero(sizes > 1).tolist():
                first = starts[group]
                summed[group] = self._value_id(sum(self.values[v] for v in values[first:first + sizes[group]].tolist()))
            keys, values = keys[starts], summed
        self._by_key[moment] = keys, values
        while len(self._by_key) > 2:
            del self._by_key[next(iter(self._by_key))]
        return keys, values

    def snapshot(self, moment: int) -> dict[tuple, Fraction]:
        """MRR per (customer, currency) at ``moment``, customers with none left out."""
        keys, values = self.by_key(moment)
        ncur = len(self.currencies)
        return {(self.customer_ids[k // ncur], self.currencies[k % ncur]): self.values[v]
                for k, v in zip(keys.tolist(), values.tolist())}

    def totals(self, moment: int) -> dict[str, tuple[Fraction, int]]:
        """Per currency with MRR at ``moment``: its total and paying customers."""
        keys, values = self.by_key(moment)
        ncur = len(self.currencies)
        totals: dict[str, tuple[Fraction, int]] = {}
        currencies = keys % ncur if ncur else keys
        for cur, paying in enumerate(np.bincount(currencies, minlength=ncur).tolist()):
            if not paying:
                continue
            total = money.ExactSum()
            for value, n in enumerate(np.bincount(values[currencies == cur], minlength=len(self.values)).tolist()):
                if n:
                    total.add(self.values[value] * n)
            totals[self.currencies[cur]] = (total.value(), paying)
        return totals

    def moves(self, before: int, after: int, since: int) -> dict[str, np.ndarray]:
        """The (customer, currency) pairs whose MRR differs between the moments ``before`` and
        ``after``, in ``by_key``'s order: ``customer`` and ``currency`` (indices), ``before`` and
        ``after`` (indices in ``values``; ``NONE``: no MRR), ``paying_before``/``paying_after``
        (the customer had MRR in any currency), ``other_before``/``other_after`` (in another
        currency) and ``had_mrr_before`` (the customer had MRR at some time before ``since``); and
        the lists the indices are of: ``values``, ``customer_ids``, ``currencies``."""
        keys_before, values_before = self.by_key(before)
        keys_after, values_after = self.by_key(after)
        ncur = max(len(self.currencies), 1)
        keys, was, now = changed(keys_before, values_before, keys_after, values_after, len(self.customer_ids) * ncur)
        customer = keys // ncur
        pays_before = np.bincount(keys_before // ncur, minlength=len(self.customer_ids))[customer]
        pays_after = np.bincount(keys_after // ncur, minlength=len(self.customer_ids))[customer]
        return {"customer": customer, "currency": keys % ncur, "before": was, "after": now,
                "paying_before": pays_before > 0, "paying_after": pays_after > 0,
                "other_before": pays_before - (was != NONE) > 0, "other_after": pays_after - (now != NONE) > 0,
                "had_mrr_before": self.firsts()[customer] < since,
                "values": self.values, "customer_ids": self.customer_ids, "currencies": self.currencies}

    @property
    def customers(self) -> dict[object, int]:
        """Customer id -> its index in ``customer_ids``."""
        if self._customers is None:
            self._customers = {customer: index for index, customer in enumerate(self.customer_ids)}
        return self._customers

    def first_positive(self, customer) -> int | None:
        """The first moment the customer had MRR (``MRRBook.first_positive``)."""
        index = self.customers.get(customer)
        first = NEVER if index is None else int(self.firsts()[index])
        return None if first == NEVER else first

    def firsts(self) -> np.ndarray:
        """Per customer (``customer_ids``' order), the first moment it had MRR (``NEVER``: none)."""
        if self._firsts is None:
            self._firsts = self._first_positives()
        return self._firsts

    def _first_positives(self) -> np.ndarray:
        seg = self.seg
        firsts = np.full(len(self.start), NEVER, dtype=np.int64)
        # an invoice's period with an amount, counted when paid or for the grace days
        with_amount = (seg["amount"] >= 0) & (seg["paid"] | (self.grace_days > 0))
        subs = seg["sub"][with_amount]
        np.minimum.at(firsts, subs, np.maximum(seg["start"][with_amount], self.start[subs]))
        # the assumed time before the first invoice (after any trial), when its current items are worth something
        region_start = np.maximum(self.start, np.where(self.trial_end == EARLIEST, 0, self.trial_end))
        region_end = np.minimum(np.minimum(self.first_invoiced, self.cps), self.ended)
        assumed = ~self.pending & ((region_end == NEVER) | (region_start < region_end)) & (self._state(region_start) >= 0)
        firsts = np.where(assumed, np.minimum(firsts, region_start), firsts)
        # the current period, when the status counts at its start
        cps = self.cps
        current = (cps != NEVER) & ((self.rule == _ALWAYS) | (
            (self.rule == _GRACE) & ((cps - self.period_start) / DAY <= self.grace_days))) & (self._state(cps) >= 0)
        firsts = np.where(current, np.minimum(firsts, np.maximum(cps, self.start)), firsts)
        per_customer = np.full(len(self.customer_ids), NEVER, dtype=np.int64)
        np.minimum.at(per_customer, self.customer, firsts)
        return per_customer


def changed(keys_before: np.ndarray, values_before: np.ndarray, keys_after: np.ndarray, values_after: np.ndarray,
            size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The keys whose value differs between two listings (each key in [0, size) once, in order,
    with its value; a key a listing lacks has ``NONE`` there), in key order, and their values
    before and after."""
    if size <= 4 * (keys_before.size + keys_after.size) + 65_536:
        # Keys dense in their range (customers × currencies): one array over the range each, no sort
        was = np.full(size, NONE, dtype=np.int64)
        was[keys_before] = values_before
        now = np.full(size, NONE, dtype=np.int64)
        now[keys_after] = values_after
        keys = np.flatnonzero(was != now).astype(np.int64)
        return keys, was[keys], now[keys]
    keys = np.sort(np.concatenate([keys_before, keys_after]))  # (sparse: the union of the keys, sorted)
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if keys.size else keys
    was = np.full(keys.size, NONE, dtype=np.int64)
    was[np.searchsorted(keys, keys_before)] = values_before
    now = np.full(keys.size, NONE, dtype=np.int64)
    now[np.searchsorted(keys, keys_after)] = values_after
    moved = np.flatnonzero(was != now)
    return keys[moved], was[moved], now[moved]
