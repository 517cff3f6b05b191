"""The Stripe emulator, exercised through the real stripe SDK over HTTP.

Its answers are validated against Stripe's own OpenAPI specification (2023-08-16), with extra
properties forbidden, and its list semantics, filters, errors and faults are checked the way
the SDK and the runbooks rely on them.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import stripe

from ops_lib.stripe_emulator import add_objects, new_state, start_emulator, stop, write_state
from ops_lib.stripe_emulator import objects as o
from ops_lib.stripe_emulator.api import COLLECTIONS, EXPANDABLE
from ops_lib.stripe_emulator.store import write_sqlite_state

from .stripe_fixtures import (
    API_VERSION, DAY, PAGINATION_EVENTS, RESTRICTED_KEY, SECRET_KEY, T0, build_rich_state,
    client_for, control, raw_get, running_emulator,
)
from .stripe_spec import load_fixtures, load_spec

REPO = Path(__file__).resolve().parents[1]

SERVICES = {
    "/v1/customers": lambda c: c.v1.customers,
    "/v1/products": lambda c: c.v1.products,
    "/v1/prices": lambda c: c.v1.prices,
    "/v1/subscriptions": lambda c: c.v1.subscriptions,
    "/v1/invoices": lambda c: c.v1.invoices,
    "/v1/charges": lambda c: c.v1.charges,
    "/v1/refunds": lambda c: c.v1.refunds,
    "/v1/disputes": lambda c: c.v1.disputes,
    "/v1/balance_transactions": lambda c: c.v1.balance_transactions,
    "/v1/events": lambda c: c.v1.events,
    "/v1/webhook_endpoints": lambda c: c.v1.webhook_endpoints,
    "/v1/checkout/sessions": lambda c: c.v1.checkout.sessions,
    "/v1/payment_intents": lambda c: c.v1.payment_intents,
}
TYPE_OF = {path: collection.object_type for path, collection in COLLECTIONS.items()}

# The expansions each list is validated with, besides its default shape.
EXPANSIONS = {
    "/v1/customers": ["data.subscriptions"],
    "/v1/products": ["data.default_price"],
    "/v1/prices": ["data.product", "data.tiers"],
    "/v1/subscriptions": ["data.customer", "data.latest_invoice", "data.default_payment_method",
                          "data.items.data.price"],
    "/v1/invoices": ["data.charge", "data.customer", "data.payment_intent", "data.subscription"],
    "/v1/charges": ["data.balance_transaction", "data.customer", "data.refunds",
                    "data.invoice.subscription"],
    "/v1/refunds": ["data.charge", "data.balance_transaction"],
    "/v1/disputes": ["data.charge.balance_transaction"],
    "/v1/balance_transactions": ["data.source"],
    "/v1/checkout/sessions": ["data.customer", "data.payment_intent", "data.subscription",
                              "data.invoice"],
    "/v1/payment_intents": ["data.latest_charge", "data.invoice"],
}


@pytest.fixture(scope="module")
def spec():
    return load_spec()  # carried in the repository: a missing file is a failure, not a skip


@pytest.fixture(scope="module", params=["json", "sqlite"])
def account(request, tmp_path_factory):
    """The same account served from each state format: every test below runs against both (the
    SQLite state, store.py, is what a benchmark's million-customer account is served from)."""
    state = build_rich_state()
    if request.param == "json":
        with running_emulator(state, tmp_path_factory.mktemp("stripe")) as (server, base_url, path):
            yield state, base_url
        return
    path = write_sqlite_state(tmp_path_factory.mktemp("stripe-sqlite") / "stripe.sqlite", state)
    server, thread, base_url = start_emulator(path)
    try:
        yield state, base_url
    finally:
        stop(server, thread)


@pytest.fixture(scope="module")
def state(account):
    return account[0]


@pytest.fixture(scope="module")
def base_url(account):
    return account[1]


@pytest.fixture(scope="module")
def client(base_url):
    return client_for(base_url)


@pytest.fixture
def faults(base_url):
    """Add emulator faults for one test; they are cleared afterwards."""
    control(base_url, "DELETE", "requests")
    yield lambda **fault: control(base_url, "POST", "faults", fault)
    control(base_url, "DELETE", "faults")


def newest_first(objects):
    return sorted(objects, key=lambda obj: (obj["created"], obj["id"]), reverse=True)


def stored(state, path, keep=lambda obj: True):
    return newest_first(obj for obj in state["objects"][TYPE_OF[path]] if keep(obj))


def body_of(stripe_object):
    """The JSON the SDK received for this object (not the SDK's reading of it)."""
    return json.loads(stripe_object.last_response.body)


def spec_path_for_retrieve(spec, list_path):
    [path] = [p for p in spec.raw["paths"]
              if p.startswith(list_path + "/{") and p.count("/") == list_path.count("/") + 1
              and "get" in spec.raw["paths"][p]]
    return path


# --------------------------------------------------------------------------- the data set


def test_the_account_holds_every_variant_the_builders_know(state):
    objects = state["objects"]
    assert {s["status"] for s in objects["subscription"]} >= {
        "active", "trialing", "past_due", "canceled", "unpaid", "incomplete"}
    assert {i["status"] for i in objects["invoice"]} == {"draft", "open", "paid", "void",
                                                        "uncollectible"}
    assert {(s["discount"] or {}).get("coupon", {}).get("duration")
            for s in objects["subscription"]} >= {"once", "repeating", "forever"}
    prices = objects["price"]
    assert {p["recurring"]["interval"] for p in prices if p["recurring"]} == {
        "day", "week", "month", "year"}
    assert any(p["recurring"] and p["recurring"]["interval_count"] > 1 for p in prices)
    assert {p["tiers_mode"] for p in prices} >= {"graduated", "volume"}
    assert any(p["recurring"] and p["recurring"]["usage_type"] == "metered" for p in prices)
    assert any(p["type"] == "one_time" for p in prices)
    assert any(len(s["items"]["data"]) > 1 for s in objects["subscription"])
    assert any(s["cancel_at_period_end"] for s in objects["subscription"])
    assert {c["status"] for c in objects["charge"]} == {"succeeded", "failed"}
    assert any(c["refunded"] for c in objects["charge"])
    assert any(0 < c["amount_refunded"] < c["amount"] for c in objects["charge"])
    assert {t["type"] for t in objects["balance_transaction"]} == {"charge", "refund", "adjustment"}
    assert "jpy" in {c["currency"] for c in objects["charge"]}
    assert {e["type"] for e in objects["event"]} >= {
        "checkout.session.completed", "payment_intent.succeeded",
        "payment_intent.payment_failed", "invoice.paid", "invoice.payment_failed",
        "customer.subscription.created", "customer.subscription.updated",
        "customer.subscription.deleted"}
    assert {w["status"] for w in objects["webhook_endpoint"]} == {"enabled", "disabled"}
    assert {s["mode"] for s in objects["checkout.session"]} == {"payment", "subscription"}
    assert len(objects["event"]) > 100


# --------------------------------------------------------------------------- fidelity to the spec


@pytest.mark.parametrize("path, expand", [
    *[pytest.param(path, None, id=path) for path in SERVICES],
    *[pytest.param(path, expand, id=f"{path}-expanded") for path, expand in EXPANSIONS.items()]])
def test_every_list_page_validates_against_the_specification(spec, state, client, path, expand):
    params = {"limit": 100, "expand": expand}
    if path == "/v1/subscriptions":
        params["status"] = "all"
    validator = spec.response_validator(path)
    seen = []
    page = SERVICES[path](client).list(params=params)
    while True:
        body = body_of(page)
        assert spec.errors(validator, body) == []
        assert page.to_dict(for_json=True) == body, "the SDK read the body as it was sent"
        seen += [obj["id"] for obj in body["data"]]
        if not page.has_more:
            break
        page = page.next_page()
    assert seen == [obj["id"] for obj in stored(state, path)]


@pytest.mark.parametrize("path", list(SERVICES))
def test_every_object_retrieved_validates_against_the_specification(spec, state, client, path):
    validator = spec.response_validator(spec_path_for_retrieve(spec, path))
    objects = state["objects"][TYPE_OF[path]]
    if path == "/v1/events":  # one of each type: the list test validates them all
        objects = list({event["type"]: event for event in objects}.values())
    for obj in objects:
        retrieved = SERVICES[path](client).retrieve(obj["id"])
        body = body_of(retrieved)
        assert spec.errors(validator, body) == []
        assert retrieved.id == body["id"] == obj["id"]
        assert retrieved.to_dict(for_json=True) == body


def test_expanded_references_are_the_referenced_objects(state, client):
    subscriptions = client.v1.subscriptions.list(params={
        "status": "all", "limit": 100, "expand": ["data.customer", "data.latest_invoice",
                                                  "data.default_payment_method"]})
    by_id = {obj["id"]: obj for objs in state["objects"].values() for obj in objs}
    for sub in body_of(subscriptions)["data"]:
        stored_sub = by_id[sub["id"]]
        assert sub["customer"] == by_id[stored_sub["customer"]]
        assert sub["latest_invoice"] == by_id[stored_sub["latest_invoice"]]
        assert sub["default_payment_method"] is None
    sources = body_of(client.v1.balance_transactions.list(
        params={"limit": 100, "expand": ["data.source"]}))["data"]
    assert {txn["source"]["object"] for txn in sources} == {"charge", "refund", "dispute"}


def test_tiers_are_served_only_when_expanded(client):
    plain = body_of(client.v1.prices.list(params={"limit": 100}))["data"]
    expanded = body_of(client.v1.prices.list(params={"limit": 100, "expand": ["data.tiers"]}))["data"]
    assert not any("tiers" in price for price in plain)
    tiered = [p for p in expanded if p["billing_scheme"] == "tiered"]
    assert tiered and all(p["tiers"] and p["unit_amount"] is None for p in tiered)
    assert not any("tiers" in p for p in expanded if p["billing_scheme"] == "per_unit")


@pytest.mark.parametrize("path", list(SERVICES))
def test_objects_carry_every_property_stripe_returns_by_default(spec, state, base_url, path):
    object_type = TYPE_OF[path]
    default_keys = set(load_fixtures()[object_type])
    if object_type == "charge":
        default_keys.discard("refunds")  # not included by default since API version 2022-11-15
    query = "?limit=100&status=all" if path == "/v1/subscriptions" else "?limit=100"
    status, body = raw_get(base_url, path + query)
    assert status == 200 and body["data"]
    for obj in body["data"]:
        assert default_keys - set(obj) == set(), obj["id"]


def test_list_parameters_are_exactly_the_specifications(spec):
    for path, collection in COLLECTIONS.items():
        assert collection.parameters == spec.parameters(path), path


def test_expansions_are_ones_the_specification_allows(spec):
    for object_type, fields in EXPANDABLE.items():
        allowed = spec.expandable_fields(object_type)
        for name, kind in fields.items():
            assert name in allowed, f"{object_type}.{name}"
            if kind == "id":
                assert spec.is_expandable_reference(object_type, name), f"{object_type}.{name}"


# --------------------------------------------------------------------------- pagination


def test_auto_paging_walks_every_event_newest_first_in_pages_of_100(state, client, base_url):
    control(base_url, "DELETE", "requests")
    events = list(client.v1.events.list(params={"limit": 100}).auto_paging_iter())
    expected = stored(state, "/v1/events")
    assert len(expected) > 100
    assert [e.id for e in events] == [e["id"] for e in expected]
    assert control(base_url, "GET", "requests") == {"/v1/events": 2}


def test_objects_created_in_the_same_second_are_ordered_by_id(state, client):
    ids = [e.id for e in client.v1.events.list(params={"limit": 100}).auto_paging_iter()]
    created = {e["id"]: e["created"] for e in state["objects"]["event"]}
    ties = [(a, b) for a, b in zip(ids, ids[1:]) if created[a] == created[b]]
    assert len(ties) >= PAGINATION_EVENTS // 2 - 1
    assert all(a > b for a, b in ties)


def test_starting_after_resumes_after_the_cursor(state, client):
    expected = [e["id"] for e in stored(state, "/v1/events")]
    first = client.v1.events.list(params={"limit": 5})
    second = client.v1.events.list(params={"limit": 5, "starting_after": first.data[-1].id})
    assert [e.id for e in first.data] == expected[:5]
    assert [e.id for e in second.data] == expected[5:10]
    assert first.has_more and second.has_more and first.url == "/v1/events"
    last = client.v1.events.list(params={"limit": 5, "starting_after": expected[-3]})
    assert [e.id for e in last.data] == expected[-2:] and not last.has_more


def test_ending_before_pages_towards_newer_objects(state, client):
    expected = [e["id"] for e in stored(state, "/v1/events")]
    page = client.v1.events.list(params={"limit": 100, "ending_before": expected[-1]})
    assert [e.id for e in page.data] == expected[-101:-1]
    assert page.has_more
    walked = list(page.auto_paging_iter())  # the SDK walks oldest to newest from there
    assert [e.id for e in walked] == list(reversed(expected[:-1]))


def test_cursors_must_name_an_existing_object_of_the_listed_type(state, client):
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.events.list(params={"starting_after": "evt_doesnotexist"})
    assert raised.value.http_status == 400 and raised.value.param == "starting_after"
    assert raised.value.code == "resource_missing"
    customer = state["objects"]["customer"][0]["id"]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.events.list(params={"ending_before": customer})
    with pytest.raises(stripe.InvalidRequestError, match="only specify one"):
        client.v1.events.list(params={"starting_after": state["objects"]["event"][0]["id"],
                                      "ending_before": state["objects"]["event"][1]["id"]})


# --------------------------------------------------------------------------- filters


def _one(state, object_type, test):
    return next(obj for obj in state["objects"][object_type] if test(obj))


def _session(state, index):
    return state["objects"]["checkout.session"][index]


FILTERS = [
    # (path, params built from the state, the objects the filter must keep)
    pytest.param("/v1/events", lambda s: {"type": "invoice.paid"},
                 lambda s: lambda e: e["type"] == "invoice.paid", id="events-type"),
    pytest.param("/v1/events", lambda s: {"type": "customer.subscription.*"},
                 lambda s: lambda e: e["type"].startswith("customer.subscription."),
                 id="events-type-wildcard"),
    pytest.param("/v1/events", lambda s: {"types": ["checkout.session.completed",
                                                    "invoice.payment_failed"]},
                 lambda s: lambda e: e["type"] in ("checkout.session.completed",
                                                   "invoice.payment_failed"), id="events-types"),
    pytest.param("/v1/events", lambda s: {"delivery_success": False},
                 lambda s: lambda e: e["pending_webhooks"] > 0, id="events-undelivered"),
    pytest.param("/v1/events", lambda s: {"delivery_success": True},
                 lambda s: lambda e: e["pending_webhooks"] == 0, id="events-delivered"),
    pytest.param("/v1/events", lambda s: {"created": {"gte": T0 - 5 * DAY, "lt": T0 - 2 * DAY}},
                 lambda s: lambda e: T0 - 5 * DAY <= e["created"] < T0 - 2 * DAY,
                 id="events-created-gte-lt"),
    pytest.param("/v1/events", lambda s: {"created": {"gt": T0 - 20 * DAY + 10,
                                                      "lte": T0 - 20 * DAY + 30}},
                 lambda s: lambda e: T0 - 20 * DAY + 10 < e["created"] <= T0 - 20 * DAY + 30,
                 id="events-created-gt-lte"),
    pytest.param("/v1/events", lambda s: {"created": T0 - 20 * DAY + 7},
                 lambda s: lambda e: e["created"] == T0 - 20 * DAY + 7, id="events-created-exact"),
    pytest.param("/v1/subscriptions", lambda s: {},
                 lambda s: lambda sub: sub["status"] != "canceled",
                 id="subscriptions-default-hides-canceled"),
    pytest.param("/v1/subscriptions", lambda s: {"status": "all"},
                 lambda s: lambda sub: True, id="subscriptions-all"),
    pytest.param("/v1/subscriptions", lambda s: {"status": "past_due"},
                 lambda s: lambda sub: sub["status"] == "past_due", id="subscriptions-past-due"),
    pytest.param("/v1/subscriptions", lambda s: {"status": "canceled"},
                 lambda s: lambda sub: sub["status"] == "canceled", id="subscriptions-canceled"),
    pytest.param("/v1/subscriptions", lambda s: {"status": "ended"},
                 lambda s: lambda sub: sub["status"] in ("canceled", "incomplete_expired"),
                 id="subscriptions-ended"),
    pytest.param("/v1/subscriptions",
                 lambda s: {"customer": s["objects"]["subscription"][3]["customer"]},
                 lambda s: lambda sub: sub["customer"] == s["objects"]["subscription"][3]["customer"],
                 id="subscriptions-customer"),
    pytest.param("/v1/subscriptions",
                 lambda s: {"status": "all", "price": _one(
                     s, "price", lambda p: p["nickname"] == "Starter monthly")["id"]},
                 lambda s: lambda sub: any(
                     i["price"]["nickname"] == "Starter monthly" for i in sub["items"]["data"]),
                 id="subscriptions-price"),
    pytest.param("/v1/invoices", lambda s: {"status": "paid"},
                 lambda s: lambda inv: inv["status"] == "paid", id="invoices-paid"),
    pytest.param("/v1/invoices", lambda s: {"status": "uncollectible"},
                 lambda s: lambda inv: inv["status"] == "uncollectible", id="invoices-uncollectible"),
    pytest.param("/v1/invoices", lambda s: {"customer": s["objects"]["customer"][0]["id"]},
                 lambda s: lambda inv: inv["customer"] == s["objects"]["customer"][0]["id"],
                 id="invoices-customer"),
    pytest.param("/v1/invoices",
                 lambda s: {"subscription": s["objects"]["subscription"][2]["id"]},
                 lambda s: lambda inv: inv["subscription"] == s["objects"]["subscription"][2]["id"],
                 id="invoices-subscription"),
    pytest.param("/v1/charges", lambda s: {"customer": s["objects"]["customer"][3]["id"]},
                 lambda s: lambda ch: ch["customer"] == s["objects"]["customer"][3]["id"],
                 id="charges-customer"),
    pytest.param("/v1/charges",
                 lambda s: {"payment_intent": s["objects"]["payment_intent"][5]["id"]},
                 lambda s: lambda ch: ch["payment_intent"] == s["objects"]["payment_intent"][5]["id"],
                 id="charges-payment-intent"),
    pytest.param("/v1/refunds", lambda s: {"charge": s["objects"]["refund"][0]["charge"]},
                 lambda s: lambda r: r["charge"] == s["objects"]["refund"][0]["charge"],
                 id="refunds-charge"),
    pytest.param("/v1/disputes", lambda s: {"charge": s["objects"]["dispute"][0]["charge"]},
                 lambda s: lambda d: d["charge"] == s["objects"]["dispute"][0]["charge"],
                 id="disputes-charge"),
    pytest.param("/v1/prices", lambda s: {"product": s["objects"]["product"][0]["id"]},
                 lambda s: lambda p: p["product"] == s["objects"]["product"][0]["id"],
                 id="prices-product"),
    pytest.param("/v1/prices", lambda s: {"active": False},
                 lambda s: lambda p: not p["active"], id="prices-inactive"),
    pytest.param("/v1/prices", lambda s: {"type": "one_time"},
                 lambda s: lambda p: p["type"] == "one_time", id="prices-one-time"),
    pytest.param("/v1/prices", lambda s: {"recurring": {"interval": "year"}},
                 lambda s: lambda p: (p["recurring"] or {}).get("interval") == "year",
                 id="prices-recurring-interval"),
    pytest.param("/v1/balance_transactions", lambda s: {"type": "refund"},
                 lambda s: lambda t: t["type"] == "refund", id="balance-transactions-type"),
    pytest.param("/v1/balance_transactions",
                 lambda s: {"source": s["objects"]["charge"][0]["id"]},
                 lambda s: lambda t: t["source"] == s["objects"]["charge"][0]["id"],
                 id="balance-transactions-source"),
    pytest.param("/v1/checkout/sessions",
                 lambda s: {"customer": _session(s, 1)["customer"]},
                 lambda s: lambda cs: cs["customer"] == _session(s, 1)["customer"],
                 id="checkout-sessions-customer"),
    pytest.param("/v1/checkout/sessions",
                 lambda s: {"payment_intent": _session(s, 0)["payment_intent"]},
                 lambda s: lambda cs: cs["payment_intent"] == _session(s, 0)["payment_intent"],
                 id="checkout-sessions-payment-intent"),
    pytest.param("/v1/customers", lambda s: {"email": "owner4@example.com"},
                 lambda s: lambda c: c["email"] == "owner4@example.com", id="customers-email"),
    pytest.param("/v1/products", lambda s: {"active": True},
                 lambda s: lambda p: p["active"], id="products-active"),
]


@pytest.mark.parametrize("path, params, keep", FILTERS)
def test_filters_return_exactly_the_matching_objects(state, client, path, params, keep):
    expected = [obj["id"] for obj in stored(state, path, keep(state))]
    found = SERVICES[path](client).list(params={**params(state), "limit": 100})
    assert [obj.id for obj in found.auto_paging_iter()] == expected
    assert expected, "the data set has objects this filter keeps"
    if params(state) != {"status": "all"}:
        assert len(expected) < len(state["objects"][TYPE_OF[path]]), "and objects it drops"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("limit, message", [
    (0, "greater than or equal to 1"), (101, "less than or equal to 100"), ("ten", "Invalid integer")])
def test_a_limit_outside_1_to_100_is_an_invalid_request(client, limit, message):
    with pytest.raises(stripe.InvalidRequestError, match=message) as raised:
        client.v1.customers.list(params={"limit": limit})
    assert raised.value.http_status == 400 and raised.value.param == "limit"


@pytest.mark.parametrize("path", list(SERVICES))
def test_an_unknown_id_is_a_404_resource_missing(client, path):
    with pytest.raises(stripe.InvalidRequestError, match="No such") as raised:
        SERVICES[path](client).retrieve("xx_1DoesNotExist")
    assert raised.value.http_status == 404 and raised.value.code == "resource_missing"


def test_an_id_of_another_type_is_not_found(state, client):
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.customers.retrieve(state["objects"]["charge"][0]["id"])
    assert raised.value.http_status == 404


@pytest.mark.parametrize("params, message", [
    ({"colour": "blue"}, "Received unknown parameter: colour"),
    ({"status": "sleeping"}, "Invalid status: must be one of"),
    ({"created": {"after": 1}}, r"Received unknown parameter: created\[after\]"),
    ({"created": {"gte": "yesterday"}}, "Invalid integer: yesterday"),
    ({"expand": ["data.plan"]}, r"cannot be expanded \(data.plan\)"),
    ({"expand": ["customer"]}, r"cannot be expanded \(customer\)"),
    ({"expand": ["data.items.data.price.product"]}, "more than 4 levels"),
])
def test_bad_parameters_are_invalid_requests(client, params, message):
    with pytest.raises(stripe.InvalidRequestError, match=message) as raised:
        client.v1.subscriptions.list(params=params)
    assert raised.value.http_status == 400


def test_a_filter_the_emulator_lacks_is_refused_not_ignored(client):
    with pytest.raises(stripe.InvalidRequestError, match="does not implement the `payout` filter"):
        client.v1.balance_transactions.list(params={"payout": "po_1"})


def test_a_wrong_key_is_an_authentication_error_that_masks_the_key(client, base_url):
    wrong = "sk_test_51WrongKeyThatIsNotInTheStatewxyz"
    with pytest.raises(stripe.AuthenticationError) as raised:
        client_for(base_url, api_key=wrong).v1.events.list()
    assert raised.value.http_status == 401
    assert "sk_test_****wxyz" in str(raised.value) and wrong not in str(raised.value)


def test_a_request_without_a_key_is_refused(base_url):
    status, body = raw_get(base_url, "/v1/events", api_key=None)
    assert status == 401 and "did not provide an API key" in body["error"]["message"]


def test_requests_must_pin_api_version_2023_08_16(base_url):
    with pytest.raises(stripe.InvalidRequestError, match="2023-08-16") as raised:
        client_for(base_url, version=None).v1.events.list()  # the SDK's own, newer version
    assert raised.value.http_status == 400
    status, body = raw_get(base_url, "/v1/events", version=None)
    assert status == 400 and "no Stripe-Version header" in body["error"]["message"]


def test_an_unknown_url_is_a_404(base_url):
    status, body = raw_get(base_url, "/v1/payouts")
    assert status == 404 and "Unrecognized request URL (GET: /v1/payouts)" in body["error"]["message"]


def test_a_restricted_key_reads_only_what_it_is_granted(client, base_url):
    restricted = client_for(base_url, api_key=RESTRICTED_KEY)
    assert restricted.v1.events.list(params={"limit": 1}).data
    with pytest.raises(stripe.PermissionError, match="'rak_charge_read'") as raised:
        restricted.v1.charges.list()
    assert raised.value.http_status == 403 and RESTRICTED_KEY not in str(raised.value)


@pytest.mark.parametrize("path", ["/v1/events?limit=0", "/v1/events/evt_missing", "/v1/nowhere",
                                  "/v1/events?colour=blue"])
def test_error_bodies_validate_against_the_specification(spec, base_url, path):
    status, body = raw_get(base_url, path)
    assert status >= 400
    assert spec.errors(spec.object_validator("error"), body) == []


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("status, error_class", [
    (401, stripe.AuthenticationError), (403, stripe.PermissionError),
    (429, stripe.RateLimitError), (500, stripe.APIError)])
def test_faults_surface_as_the_sdks_error_classes(client, faults, status, error_class):
    faults(status=status, count=1)
    with pytest.raises(error_class) as raised:
        client.v1.events.list()
    assert raised.value.http_status == status
    assert client.v1.events.list(params={"limit": 1}).data, "a count=1 fault fails one request"


def test_rate_limiting_uses_stripes_rate_limit_error(spec, base_url, faults):
    faults(status=429, count=1)
    status, body = raw_get(base_url, "/v1/events")
    assert status == 429 and body["error"]["code"] == "rate_limit"
    assert spec.errors(spec.object_validator("error"), body) == []


def test_a_fault_without_count_lasts_until_cleared(client, base_url, faults):
    faults(status=500, count=None)
    for _ in range(3):
        with pytest.raises(stripe.APIError):
            client.v1.customers.list()
    control(base_url, "DELETE", "faults")
    assert client.v1.customers.list().data


def test_a_fault_hits_only_its_path_prefix(client, faults):
    faults(status=500, count=None, path_prefix="/v1/charges")
    assert client.v1.events.list(params={"limit": 1}).data
    with pytest.raises(stripe.APIError):
        client.v1.charges.list()


def test_the_sdk_retries_a_500_and_succeeds(base_url, faults):
    faults(status=500, count=1)
    retrying = client_for(base_url, retries=2)
    assert retrying.v1.events.list(params={"limit": 1}).data
    assert control(base_url, "GET", "requests") == {"/v1/events": 2}


def test_a_401_is_not_retried(base_url, faults):
    faults(status=401, count=1)
    with pytest.raises(stripe.AuthenticationError):
        client_for(base_url, retries=2).v1.events.list()
    assert control(base_url, "GET", "requests") == {"/v1/events": 1}


def test_faults_are_validated(base_url):
    import urllib.error
    with pytest.raises(urllib.error.HTTPError) as raised:
        control(base_url, "POST", "faults", {"status": 418})
    assert raised.value.code == 400


# --------------------------------------------------------------------------- the state file


def test_the_state_file_is_reloaded_when_it_changes(tmp_path):
    o.seed_ids("reload")
    state = new_state([SECRET_KEY])
    add_objects(state, o.make_customer(email="first@example.com", created=T0))
    path = tmp_path / "state.json"
    write_state(path, state)
    server, thread, base_url = start_emulator(path)
    try:
        client = client_for(base_url)
        assert [c.email for c in client.v1.customers.list().data] == ["first@example.com"]
        add_objects(state, o.make_customer(email="second@example.com", created=T0 + 1))
        write_state(path, state)
        assert [c.email for c in client.v1.customers.list().data] == [
            "second@example.com", "first@example.com"]

        path.write_text("{ half-written")
        with pytest.raises(stripe.APIError, match="state file"):
            client.v1.customers.list()
        state["faults"] = [{"status": 429, "count": 1}]
        write_state(path, state)
        with pytest.raises(stripe.RateLimitError):
            client.v1.customers.list()
        assert len(client.v1.customers.list().data) == 2
    finally:
        stop(server, thread)


def test_the_state_file_is_indented_json_grouped_by_type(tmp_path):
    state = build_rich_state()
    path = tmp_path / "state.json"
    write_state(path, state)
    text = path.read_text()
    assert text.startswith('{\n  "api_keys": [')
    assert set(json.loads(text)["objects"]) >= {
        "customer", "product", "price", "subscription", "invoice", "charge", "refund",
        "dispute", "balance_transaction", "event", "webhook_endpoint", "checkout.session"}


@pytest.mark.parametrize("name, write", [("state.json", write_state), ("stripe.sqlite", write_sqlite_state)])
def test_python_dash_m_serves_a_state_file(tmp_path, name, write):
    path = tmp_path / name
    write(path, build_rich_state())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "ops_lib.stripe_emulator", "--state", str(path), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        line = process.stdout.readline()
        assert "serving" in line, process.stderr.read()
        base_url = line.split(" at ")[1].split()[0]
        assert client_for(base_url).v1.webhook_endpoints.list().data
    finally:
        process.terminate()
        assert process.wait(timeout=5) == 0


# --------------------------------------------------------------------------- builders


def test_tiered_prices_cost_what_their_tiers_say():
    graduated = o.make_price(product="prod_x", interval="month", tiers=[
        {"up_to": 5, "unit_amount": 1000}, {"up_to": None, "unit_amount": 800, "flat_amount": 500}])
    volume = o.make_price(product="prod_x", interval="year", tiers_mode="volume", tiers=[
        {"up_to": 10, "unit_amount": 9000}, {"up_to": None, "unit_amount": 7000}])
    assert graduated["unit_amount"] is None and graduated["billing_scheme"] == "tiered"
    assert o.amount_for_quantity(graduated, 7) == 5 * 1000 + 2 * 800 + 500
    assert o.amount_for_quantity(graduated, 3) == 3000
    assert o.amount_for_quantity(volume, 12) == 12 * 7000


def test_monthly_periods_follow_the_calendar():
    jan31 = 1706659200  # 2024-01-31T00:00:00Z
    assert o.add_interval(jan31, "month") == 1709164800  # 2024-02-29, clamped
    assert o.add_interval(jan31, "year") == 1738281600  # 2025-01-31
    assert o.add_interval(jan31, "week", 2) == jan31 + 14 * DAY


def test_zero_decimal_currencies_are_not_multiplied_by_100():
    price = o.make_price(product="prod_x", unit_amount=7000, currency="jpy", interval="month")
    sub = o.make_subscription(customer="cus_x", items=[(price, 2)], created=T0)
    invoice = o.make_invoice(customer="cus_x", subscription=sub)
    assert invoice["amount_paid"] == 14000 and invoice["currency"] == "jpy"
    assert o.format_amount(7000, "jpy") == "¥7,000" and o.format_amount(4900, "usd") == "$49.00"
    assert o.processing_fee(7000, "jpy") == 252 and o.processing_fee(4900, "usd") == 172


def test_coupons_discount_invoices_for_their_duration():
    price = o.make_price(product="prod_x", unit_amount=4900, interval="month")
    coupon = o.make_coupon(percent_off=25.5, duration="repeating", duration_in_months=3)
    sub = o.make_subscription(customer="cus_x", items=[(price, 2)], coupon=coupon, created=T0)
    assert sub["discount"]["end"] == o.add_interval(T0, "month", 3)
    invoice = o.make_invoice(customer="cus_x", subscription=sub)
    assert invoice["subtotal"] == 9800 and invoice["total"] == 9800 - round(9800 * 0.255)
    assert invoice["total_discount_amounts"] == [{"amount": 2499, "discount": sub["discount"]["id"]}]


def test_builders_refuse_impossible_objects():
    price = o.make_price(product="prod_x", unit_amount=100)
    with pytest.raises(ValueError, match="tiered price has no unit_amount"):
        o.make_price(product="prod_x", unit_amount=100, interval="month", tiers=[{"up_to": None}])
    with pytest.raises(ValueError, match="not a recurring price"):
        o.make_subscription(customer="cus_x", items=[price])
    with pytest.raises(ValueError, match="invoice.paid events carry invoice objects, not charge"):
        o.make_event("invoice.paid", o.make_charge(amount=100))
    with pytest.raises(ValueError, match="exactly one of percent_off or amount_off"):
        o.make_coupon(percent_off=10, amount_off=100, currency="usd")


def test_events_snapshot_their_object():
    customer = o.make_customer(email="before@example.com")
    event = o.make_event("customer.updated", customer, previous_attributes={"email": "old@x.com"})
    customer["email"] = "after@example.com"
    assert event["data"]["object"]["email"] == "before@example.com"
    assert event["data"]["previous_attributes"] == {"email": "old@x.com"}
    assert event["api_version"] == API_VERSION and event["id"].startswith("evt_1")


@pytest.mark.parametrize("server_class", ["emulator", "receiver"])
def test_a_client_hanging_up_mid_answer_leaves_no_traceback_but_a_real_error_does(server_class, capsys, tmp_path):
    from ops_lib.demo.receiver import WebhookServer
    from ops_lib.stripe_emulator.server import Emulator, EmulatorServer

    write_state(tmp_path / "state.json", new_state([SECRET_KEY]))
    server = (EmulatorServer(Emulator(tmp_path / "state.json")) if server_class == "emulator"
              else WebhookServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler))
    try:
        for error in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset"), TimeoutError()):
            try:
                raise error
            except OSError:
                server.handle_error(None, ("127.0.0.1", 1))
        assert capsys.readouterr().err == ""
        try:
            raise KeyError("a bug in a handler")
        except KeyError:
            server.handle_error(None, ("127.0.0.1", 1))
        assert "KeyError: 'a bug in a handler'" in capsys.readouterr().err
    finally:
        server.server_close()
