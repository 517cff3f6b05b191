"""What the emulator answers to a GET: Stripe's list and retrieve semantics over an account.

No HTTP here (that is server.py): `Account` indexes the state's objects, `route` maps a path to
a collection, and `list_objects` / `retrieve_object` return response bodies or raise `ApiError`
with Stripe's error envelope. The parameter tables mirror the 2023-08-16 specification; a
parameter Stripe accepts but the emulator does not implement is refused with a 400 rather than
silently ignored, so a runbook never trusts an unfiltered answer.
"""
from __future__ import annotations

import bisect
import copy
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import parse_qsl

Obj = dict[str, Any]
Predicate = Callable[[Obj], bool]

MAX_EXPAND_DEPTH = 4  # Stripe: "data.source.customer.default_source is the deepest allowed"


class ApiError(Exception):
    """A Stripe error response: HTTP status and the `{"error": {...}}` envelope."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> Obj:
        error: Obj = {"message": self.message, "type": self.type}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


def _invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def _no_such(object_type: str, object_id: str, param: str, status: int) -> ApiError:
    return ApiError(status, f"No such {object_type.replace('_', ' ')}: '{object_id}'",
                    code="resource_missing", param=param)


# --------------------------------------------------------------------------- query strings

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def parse_query(query: str) -> Obj:
    """Decode Stripe's form encoding: `created[gte]=1`, `expand[0]=a`, `types[]=b`."""
    params: Obj = {}
    for raw_key, value in parse_qsl(query, keep_blank_values=True):
        match = _KEY.match(raw_key)
        if not match:
            raise _invalid(f"Invalid parameter name: {raw_key}")
        name, brackets = match.groups()
        parts = re.findall(r"\[([^\[\]]*)\]", brackets)
        node, key = params, name
        for part in parts:
            child = node.get(key)
            if not isinstance(child, dict):
                if child is not None:
                    raise _invalid(f"Invalid parameter: {raw_key} mixes a value and a hash")
                child = node[key] = {}
            node, key = child, (len(child) if part == "" else part)
        if isinstance(node.get(key), dict):
            raise _invalid(f"Invalid parameter: {raw_key} mixes a value and a hash")
        node[key] = value
    return {name: _arrays(value) for name, value in params.items()}


def _arrays(value: Any) -> Any:
    """Hashes keyed 0..n-1 (from `a[]` or `a[0]`) become arrays."""
    if not isinstance(value, dict):
        return value
    value = {k: _arrays(v) for k, v in value.items()}
    keys = [str(k) for k in value]
    if keys and all(k.isdigit() for k in keys) and sorted(map(int, keys)) == list(range(len(keys))):
        return [value[k] for k in sorted(value, key=lambda k: int(k))]
    return {str(k): v for k, v in value.items()}


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _invalid(f"Invalid string: {value!r}", param)
    return value


def _integer(value: Any, param: str) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise _invalid(f"Invalid integer: {value}", param)
    return int(value)


def _boolean(value: Any, param: str) -> bool:
    if value not in ("true", "false"):
        raise _invalid(f"Invalid boolean: {value}", param)
    return value == "true"


def _array(value: Any, param: str) -> list[str]:
    if not isinstance(value, list):
        raise _invalid("Invalid array", param)
    return [_string(v, param) for v in value]


def _one_of(value: Any, param: str, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    if value not in allowed:
        raise _invalid(f"Invalid {param}: must be one of {', '.join(allowed[:-1])} or {allowed[-1]}",
                       param)
    return value


# --------------------------------------------------------------------------- filters
# A filter turns the parameter's value into a predicate over stored objects.

Filter = Callable[[Any, str], Predicate]


def _field(obj: Obj, path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, dict) and "id" in value:  # an expanded reference
        return value["id"]
    return value


def equals(path: str) -> Filter:
    def build(value: Any, param: str) -> Predicate:
        wanted = _string(value, param)
        return lambda obj: _field(obj, path) == wanted
    return build


def flag(path: str) -> Filter:
    def build(value: Any, param: str) -> Predicate:
        wanted = _boolean(value, param)
        return lambda obj: _field(obj, path) is wanted
    return build


def enum(path: str, allowed: Iterable[str]) -> Filter:
    allowed = tuple(allowed)

    def build(value: Any, param: str) -> Predicate:
        wanted = _one_of(value, param, allowed)
        return lambda obj: _field(obj, path) == wanted
    return build


def member_of(path: str) -> Filter:
    def build(value: Any, param: str) -> Predicate:
        wanted = set(_array(value, param))
        return lambda obj: _field(obj, path) in wanted
    return build


_RANGE_OPS: dict[str, Callable[[int, int], bool]] = {
    "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b,
}


def time_range(path: str) -> Filter:
    """`created=T` (exactly T) or `created[gte]=A&created[lt]=B`."""
    def build(value: Any, param: str) -> Predicate:
        if isinstance(value, dict):
            bounds = []
            for op, bound in value.items():
                if op not in _RANGE_OPS:
                    raise _invalid(f"Received unknown parameter: {param}[{op}]", f"{param}[{op}]")
                bounds.append((_RANGE_OPS[op], _integer(bound, f"{param}[{op}]")))

            def within(obj: Obj) -> bool:
                ts = obj.get(path)
                return ts is not None and all(test(ts, bound) for test, bound in bounds)
            return within
        exact = _integer(value, param)
        return lambda obj: obj.get(path) == exact
    return build


def sub_fields(**fields: Filter) -> Filter:
    """A hash parameter such as `recurring[interval]=month` or `customer_details[email]=...`."""
    def build(value: Any, param: str) -> Predicate:
        if not isinstance(value, dict):
            raise _invalid(f"Invalid hash: {param}", param)
        predicates = []
        for key, sub_value in value.items():
            if key not in fields:
                raise _invalid(f"Received unknown parameter: {param}[{key}]", f"{param}[{key}]")
            predicates.append(fields[key](sub_value, f"{param}[{key}]"))
        return lambda obj: all(p(obj) for p in predicates)
    return build


SUBSCRIPTION_STATUS_FILTERS = ("active", "all", "canceled", "ended", "incomplete",
                               "incomplete_expired", "past_due", "paused", "trialing", "unpaid")


def subscription_status(value: Any, param: str) -> Predicate:
    status = _one_of(value, param, SUBSCRIPTION_STATUS_FILTERS)
    if status == "all":
        return lambda sub: True
    if status == "ended":
        return lambda sub: sub["status"] in ("canceled", "incomplete_expired")
    return lambda sub: sub["status"] == status


def subscription_price(value: Any, param: str) -> Predicate:
    price_id = _string(value, param)
    return lambda sub: any(item["price"]["id"] == price_id for item in sub["items"]["data"])


def event_type(value: Any, param: str) -> Predicate:
    """`type=invoice.paid`, or a family: `type=invoice.*`."""
    pattern = _string(value, param)
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        return lambda event: event["type"].startswith(prefix)
    return lambda event: event["type"] == pattern


def event_types(value: Any, param: str) -> Predicate:
    types = set(_array(value, param))
    if len(types) > 20:
        raise _invalid("You may pass up to 20 event types.", param)
    return lambda event: event["type"] in types


def delivery_success(value: Any, param: str) -> Predicate:
    """Delivered to every endpoint (no webhooks pending) or not (pending or failed)."""
    delivered = _boolean(value, param)
    return lambda event: (event["pending_webhooks"] == 0) is delivered


# --------------------------------------------------------------------------- collections


@dataclass(frozen=True)
class Collection:
    path: str
    object_type: str
    filters: Mapping[str, Filter] = field(default_factory=dict)
    # Stripe accepts these but the emulator does not implement them: 400, never ignored.
    unsupported: frozenset[str] = frozenset()
    # Applied when the named parameter is absent (Stripe hides canceled subscriptions).
    defaults: Mapping[str, Predicate] = field(default_factory=dict)
    exclusive: tuple[str, ...] = ()

    @property
    def parameters(self) -> frozenset[str]:
        return frozenset({"limit", "starting_after", "ending_before", "expand"}
                         | set(self.filters) | self.unsupported)


COLLECTIONS = {c.path: c for c in [
    Collection("/v1/customers", "customer", {
        "created": time_range("created"), "email": equals("email"),
        "test_clock": equals("test_clock")}),
    Collection("/v1/products", "product", {
        "active": flag("active"), "created": time_range("created"), "ids": member_of("id"),
        "shippable": flag("shippable"), "url": equals("url")}),
    Collection("/v1/prices", "price", {
        "active": flag("active"), "created": time_range("created"),
        "currency": equals("currency"), "lookup_keys": member_of("lookup_key"),
        "product": equals("product"),
        "recurring": sub_fields(
            interval=enum("recurring.interval", ("day", "month", "week", "year")),
            usage_type=enum("recurring.usage_type", ("licensed", "metered"))),
        "type": enum("type", ("one_time", "recurring"))}),
    Collection("/v1/subscriptions", "subscription", {
        "automatic_tax": sub_fields(enabled=flag("automatic_tax.enabled")),
        "collection_method": enum("collection_method", ("charge_automatically", "send_invoice")),
        "created": time_range("created"),
        "current_period_end": time_range("current_period_end"),
        "current_period_start": time_range("current_period_start"),
        "customer": equals("customer"), "price": subscription_price,
        "status": subscription_status, "test_clock": equals("test_clock")},
        defaults={"status": lambda sub: sub["status"] != "canceled"}),
    Collection("/v1/invoices", "invoice", {
        "collection_method": enum("collection_method", ("charge_automatically", "send_invoice")),
        "created": time_range("created"), "customer": equals("customer"),
        "due_date": time_range("due_date"),
        "status": enum("status", ("draft", "open", "paid", "uncollectible", "void")),
        "subscription": equals("subscription")}),
    Collection("/v1/charges", "charge", {
        "created": time_range("created"), "customer": equals("customer"),
        "payment_intent": equals("payment_intent"), "transfer_group": equals("transfer_group")}),
    Collection("/v1/refunds", "refund", {
        "charge": equals("charge"), "created": time_range("created"),
        "payment_intent": equals("payment_intent")}),
    Collection("/v1/disputes", "dispute", {
        "charge": equals("charge"), "created": time_range("created"),
        "payment_intent": equals("payment_intent")}),
    Collection("/v1/balance_transactions", "balance_transaction", {
        "created": time_range("created"), "currency": equals("currency"),
        "source": equals("source"), "type": equals("type")},
        unsupported=frozenset({"payout"})),
    Collection("/v1/events", "event", {
        "created": time_range("created"), "delivery_success": delivery_success,
        "type": event_type, "types": event_types},
        exclusive=("type", "types")),
    Collection("/v1/webhook_endpoints", "webhook_endpoint"),
    Collection("/v1/checkout/sessions", "checkout.session", {
        "customer": equals("customer"),
        "customer_details": sub_fields(email=equals("customer_details.email")),
        "payment_intent": equals("payment_intent"), "payment_link": equals("payment_link"),
        "subscription": equals("subscription")}),
    Collection("/v1/payment_intents", "payment_intent", {
        "created": time_range("created"), "customer": equals("customer")}),
]}


def route(path: str) -> tuple[Collection, str | None] | None:
    """`/v1/customers` -> (customers, None); `/v1/customers/cus_1` -> (customers, "cus_1")."""
    if path in COLLECTIONS:
        return COLLECTIONS[path], None
    parent, _, object_id = path.rpartition("/")
    if parent in COLLECTIONS and object_id:
        return COLLECTIONS[parent], object_id
    return None


# --------------------------------------------------------------------------- expansion
# Per object type, the properties `expand[]` accepts (all are in the specification's
# x-expandableFields): "id" references are replaced by the object, "nested" ones are already
# objects that a longer path walks through, "includable" ones are left out unless asked for.

EXPANDABLE: dict[str, dict[str, str]] = {
    "customer": {"default_source": "id", "test_clock": "id", "subscriptions": "includable"},
    "product": {"default_price": "id", "tax_code": "id"},
    "price": {"product": "id", "tiers": "includable"},
    "subscription": {"application": "id", "customer": "id", "default_payment_method": "id",
                     "default_source": "id", "latest_invoice": "id", "on_behalf_of": "id",
                     "pending_setup_intent": "id", "schedule": "id", "test_clock": "id",
                     "items": "nested"},
    "subscription_item": {"price": "nested"},
    "invoice": {"application": "id", "charge": "id", "customer": "id",
                "default_payment_method": "id", "default_source": "id",
                "latest_revision": "id", "on_behalf_of": "id", "payment_intent": "id",
                "quote": "id", "subscription": "id", "test_clock": "id", "lines": "nested"},
    "line_item": {"invoice_item": "id", "subscription": "id", "subscription_item": "id",
                  "price": "nested"},
    "charge": {"application": "id", "application_fee": "id", "balance_transaction": "id",
               "customer": "id", "failure_balance_transaction": "id", "invoice": "id",
               "on_behalf_of": "id", "payment_intent": "id", "review": "id",
               "source_transfer": "id", "transfer": "id", "refunds": "includable"},
    "refund": {"balance_transaction": "id", "charge": "id", "failure_balance_transaction": "id",
               "payment_intent": "id", "source_transfer_reversal": "id",
               "transfer_reversal": "id"},
    "dispute": {"charge": "id", "payment_intent": "id", "balance_transactions": "nested"},
    "balance_transaction": {"source": "id"},
    "event": {},
    "webhook_endpoint": {},
    "checkout.session": {"customer": "id", "invoice": "id", "payment_intent": "id",
                         "payment_link": "id", "setup_intent": "id", "subscription": "id"},
    "payment_intent": {"application": "id", "customer": "id", "invoice": "id",
                       "latest_charge": "id", "on_behalf_of": "id", "payment_method": "id",
                       "review": "id"},
}

# Stored on the object when present, served only when expanded.
STORED_INCLUDABLE = {"price": ("tiers", "currency_options"),
                     "coupon": ("applies_to", "currency_options")}


class Account:
    """The objects of one Stripe account, indexed for listing, retrieval and expansion."""

    def __init__(self, objects: Mapping[str, Iterable[Obj]]):
        self.by_type: dict[str, list[Obj]] = {}
        self.by_id: dict[str, Obj] = {}
        for object_type, items in objects.items():
            items = list(items)
            for obj in items:
                if obj.get("object") != object_type:
                    raise ValueError(f"{obj.get('id')} is a {obj.get('object')}, "
                                     f"stored under {object_type}")
                if obj["id"] in self.by_id:
                    raise ValueError(f"duplicate id {obj['id']}")
                self.by_id[obj["id"]] = obj
            # Stripe lists newest first; ties (same second) by id, descending.
            self.by_type[object_type] = sorted(items, key=_sort_key, reverse=True)
        # Each object's position in its listing (cursors are O(1)), and per type the
        # ascending `created` values of the reversed listing (a created range is a bisect).
        self.position: dict[str, int] = {}
        self._created_asc: dict[str, list[int]] = {}
        for items in self.by_type.values():
            for i, obj in enumerate(items):
                self.position[obj["id"]] = i
        self._children: dict[tuple[str, str], dict[str, list[Obj]]] = {}

    def get(self, object_id: str) -> Obj | None:
        return self.by_id.get(object_id)

    def scan(self, object_type: str, *, created: tuple[int | None, int | None] | None = None,
             after: Obj | None = None, before: Obj | None = None,
             where: Mapping[str, str] | None = None, batch: int = 32) -> Iterator[Obj]:
        """The listing of `object_type` (newest first) from just after the cursor `after`; or,
        with `before`, the objects newer than it, nearest first. `created` (inclusive bounds)
        narrows it; `where` (column -> value) is a hint a store may use, not a filter: every
        object is still tested against the request's filters. `batch`: how many objects the
        caller expects to need (a store reads that many at first)."""
        items = self.by_type.get(object_type, [])
        lo, hi = 0, len(items)
        if created is not None:
            lo, hi = self.created_bounds(object_type, created)
        if before is not None:
            for i in range(min(self.position[before["id"]], hi) - 1, lo - 1, -1):
                yield items[i]
            return
        start = lo if after is None else max(lo, self.position[after["id"]] + 1)
        for i in range(start, hi):
            yield items[i]

    def created_bounds(self, object_type: str, bounds: tuple[int | None, int | None]) -> tuple[int, int]:
        """The slice [lo, hi) of the listing whose `created` is within `bounds` (inclusive)."""
        items = self.by_type.get(object_type, [])
        asc = self._created_asc.get(object_type)
        if asc is None:
            asc = self._created_asc[object_type] = [obj.get("created") or 0
                                                    for obj in reversed(items)]
        n = len(asc)
        low_ts, high_ts = bounds
        # Ascending indexes [a, b) hold low_ts <= created <= high_ts.
        a = 0 if low_ts is None else bisect.bisect_left(asc, low_ts)
        b = n if high_ts is None else bisect.bisect_right(asc, high_ts)
        if b <= a:
            return 0, 0
        return n - b, n - a

    def children(self, object_type: str, key: str, parent_id: str) -> list[Obj]:
        """Objects of `object_type` whose `key` is `parent_id`, newest first (indexed once)."""
        index = self._children.get((object_type, key))
        if index is None:
            index = {}
            for obj in self.by_type.get(object_type, []):
                index.setdefault(obj.get(key), []).append(obj)
            self._children[(object_type, key)] = index
        return index.get(parent_id, [])

    def counts(self) -> dict[str, int]:
        return {object_type: len(items) for object_type, items in self.by_type.items()}

    def _copy(self, obj: Obj) -> Obj:
        return copy.deepcopy(obj)  # stored objects are shared: serve copies

    # -- rendering

    def render(self, obj: Obj, expand: Iterable[str] = (), prefix: str = "") -> Obj:
        """A served copy of `obj`: includable properties removed, then `expand` paths applied
        (`prefix` is what precedes them in the request, for error messages: "data.")."""
        served = _strip_includable(self._copy(obj))
        for path in expand:
            self._expand(served, path.split("."), prefix + path)
        return served

    def _expand(self, node: Any, parts: list[str], full: str) -> None:
        if not parts or node is None:
            return
        if isinstance(node, list):
            for item in node:
                self._expand(item, parts, full)
            return
        if not isinstance(node, dict):
            return
        head, rest = parts[0], parts[1:]
        if node.get("object") == "list":
            if head != "data":
                raise _cannot_expand(full)
            self._expand(node["data"], rest, full)
            return
        kind = EXPANDABLE.get(node.get("object"), {}).get(head)
        if kind is None:
            raise _cannot_expand(full)
        if kind == "id" and isinstance(node.get(head), str):
            target = self.get(node[head])
            if target is not None:  # ids of objects the emulator does not hold stay ids
                node[head] = self.render(target)
        elif kind == "includable":
            value = self._includable(node, head)
            if value is not None:  # e.g. tiers of a per-unit price: there are none to include
                node[head] = value
        self._expand(node.get(head), rest, full)

    def _includable(self, node: Obj, name: str) -> Any:
        object_type, object_id = node["object"], node["id"]
        if object_type == "charge" and name == "refunds":
            refunds = self.children("refund", "charge", object_id)
            return _list_object([self.render(r) for r in refunds],
                                f"/v1/charges/{object_id}/refunds")
        if object_type == "customer" and name == "subscriptions":
            subs = [s for s in self.children("subscription", "customer", object_id)
                    if s["status"] != "canceled"]
            return _list_object([self.render(s) for s in subs],
                                f"/v1/customers/{object_id}/subscriptions")
        # Served copies (and prices embedded in items) lack it: the stored object has it.
        return copy.deepcopy((self.get(object_id) or {}).get(name))


def _sort_key(obj: Obj) -> tuple[int, str]:
    return obj.get("created") or 0, obj["id"]


def _strip_includable(node: Any) -> Any:
    if isinstance(node, list):
        for item in node:
            _strip_includable(item)
    elif isinstance(node, dict):
        object_type = node.get("object")
        if isinstance(object_type, str):  # (an event's data.object is an object, not a type)
            for name in STORED_INCLUDABLE.get(object_type, ()):
                node.pop(name, None)
        for value in node.values():
            if isinstance(value, (dict, list)):
                _strip_includable(value)
    return node


def _cannot_expand(path: str) -> ApiError:
    return _invalid(f"This property cannot be expanded ({path}).")


def _list_object(data: list[Obj], url: str, has_more: bool = False) -> Obj:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def _expand_paths(params: Obj, *, listing: bool) -> list[str]:
    """The requested expansions, relative to each object served ("data." removed on lists)."""
    if "expand" not in params:
        return []
    paths = []
    for i, path in enumerate(_array(params["expand"], "expand")):
        if path.count(".") >= MAX_EXPAND_DEPTH:
            raise _invalid("You cannot expand more than 4 levels of a property. "
                           f"Property: {path}", f"expand[{i}]")
        if listing:
            if not path.startswith("data."):
                # On a list, expansions name the listed objects' fields: data.customer.
                raise _cannot_expand(path)
            path = path.removeprefix("data.")
        paths.append(path)
    return paths


def _reject_unknown(params: Obj, accepted: Iterable[str]) -> None:
    accepted = set(accepted)
    for name in params:
        if name not in accepted:
            raise _invalid(f"Received unknown parameter: {name}", name)


# --------------------------------------------------------------------------- operations


def retrieve_object(account: Account, collection: Collection, object_id: str,
                    params: Obj) -> Obj:
    _reject_unknown(params, {"expand"})
    obj = account.get(object_id)
    if obj is None or obj["object"] != collection.object_type:
        raise _no_such(collection.object_type, object_id, "id", 404)
    return account.render(obj, _expand_paths(params, listing=False))


def created_range(value: Any, param: str) -> tuple[int | None, int | None] | None:
    """Inclusive bounds on `created` from `created=T` or `created[op]=T` (None: an unknown
    operator, which the filter itself reports)."""
    low_ts, high_ts = None, None
    if isinstance(value, dict):
        for op, bound in value.items():
            if op not in _RANGE_OPS:
                return None
            ts = _integer(bound, f"{param}[{op}]")
            if op in ("gt", "gte"):
                ts = ts + 1 if op == "gt" else ts
                low_ts = ts if low_ts is None else max(low_ts, ts)
            else:
                ts = ts - 1 if op == "lt" else ts
                high_ts = ts if high_ts is None else min(high_ts, ts)
    else:
        low_ts = high_ts = _integer(value, param)
    return low_ts, high_ts


# Filters a store may answer from an index (see store.py): parameter -> stored column. Only
# equality filters whose predicate is exactly "this column equals the value".
INDEXED_FILTERS = {
    "customer": "customer",
    "subscription": "parent",   # invoices
    "charge": "parent",         # refunds, disputes
    "source": "parent",         # balance transactions
}
PARENT_KEY = {"invoice": "subscription", "refund": "charge", "dispute": "charge",
              "balance_transaction": "source"}


def index_hints(collection: Collection, params: Obj) -> dict[str, str]:
    hints = {}
    for name, column in INDEXED_FILTERS.items():
        if name not in collection.filters or not isinstance(params.get(name), str):
            continue
        if column == "parent" and PARENT_KEY.get(collection.object_type) != name:
            continue
        hints[column] = params[name]
    return hints


def list_objects(account: Account, collection: Collection, params: Obj) -> Obj:
    _reject_unknown(params, collection.parameters)
    for name in collection.unsupported & set(params):
        raise _invalid(f"The Stripe emulator does not implement the `{name}` filter of "
                       f"GET {collection.path}; filter the results yourself.", name)
    if all(name in params for name in collection.exclusive) and collection.exclusive:
        raise _invalid(f"You may only specify one of these parameters: "
                       f"{', '.join(collection.exclusive)}.")
    limit = 10
    if "limit" in params:
        limit = _integer(params["limit"], "limit")
        if limit < 1:
            raise _invalid("This value must be greater than or equal to 1.", "limit")
        if limit > 100:
            raise _invalid("This value must be less than or equal to 100.", "limit")
    if "starting_after" in params and "ending_before" in params:
        raise _invalid("You may only specify one of these parameters: ending_before, "
                       "starting_after.")
    expand = _expand_paths(params, listing=True)

    predicates = [build(params[name], name) for name, build in collection.filters.items()
                  if name in params]
    predicates += [test for name, test in collection.defaults.items() if name not in params]
    # Only what a `created` filter allows, from the cursor on: a page costs what it scans,
    # not the size of the collection.
    created = None
    if "created" in params and "created" in collection.filters:
        created = created_range(params["created"], "created")
    after = before = None
    if "ending_before" in params:
        before = _cursor(account, collection, params, "ending_before")
    elif "starting_after" in params:
        after = _cursor(account, collection, params, "starting_after")
    page: list[Obj] = []
    for obj in account.scan(collection.object_type, created=created, after=after, before=before,
                            where=index_hints(collection, params), batch=limit + 1):
        if all(test(obj) for test in predicates):
            page.append(obj)
            if len(page) > limit:
                break
    has_more = len(page) > limit
    page = page[:limit]
    if before is not None:
        page.reverse()  # the `limit` objects just before the cursor, still newest first
    return _list_object([account.render(obj, expand, prefix="data.") for obj in page],
                        collection.path, has_more)


def _cursor(account: Account, collection: Collection, params: Obj, name: str) -> Obj:
    """The cursor object (of the listed type)."""
    object_id = _string(params[name], name)
    obj = account.get(object_id)
    if obj is None or obj["object"] != collection.object_type:
        raise _no_such(collection.object_type, object_id, name, 400)
    return obj
