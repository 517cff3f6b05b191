"""ops_lib.stripe_api against the emulator, through the real stripe SDK over HTTP."""
from __future__ import annotations

import json
import math
import os
import socket
from datetime import datetime, timezone

import pytest
import stripe

from ops_lib import stripe_mirror
from ops_lib.errors import ConfigurationError, StripeAccessError
from ops_lib.stripe_api import (
    API_VERSION, list_balance_transactions, list_charges, list_checkout_sessions,
    list_customers, list_disputes, list_events, list_invoices, list_prices, list_refunds,
    list_subscriptions, list_webhook_endpoints, make_client, mask_key, mask_secrets, mode_of,
    retrieve_event, stripe_errors,
)

from .stripe_fixtures import (
    DAY, RESTRICTED_KEY, SECRET_KEY, T0, build_rich_state, control, running_emulator,
)


@pytest.fixture(scope="module")
def account(tmp_path_factory):
    state = build_rich_state()
    # The mirror (ops_lib.stripe_mirror) of this module's account, in a home of its own.
    saved = {name: os.environ.get(name) for name in ("OPSBOOK_HOME", stripe_mirror.MIRROR_VARIABLE)}
    os.environ["OPSBOOK_HOME"] = str(tmp_path_factory.mktemp("stripe-api-home"))
    os.environ.pop(stripe_mirror.MIRROR_VARIABLE, None)
    try:
        with running_emulator(state, tmp_path_factory.mktemp("stripe-api")) as (_, base_url, _path):
            yield state, base_url
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def state(account):
    return account[0]


@pytest.fixture(scope="module")
def base_url(account):
    return account[1]


@pytest.fixture(params=["mirror", "direct"])
def client(request, base_url):
    """A run's client, answered from the account's mirror (the default) or by Stripe directly:
    every listing must come out the same both ways."""
    return make_client(SECRET_KEY, base_url, mirror=request.param == "mirror")


@pytest.fixture
def direct_client(base_url):
    """For what Stripe itself is asked (filters pushed, pages, retries, error translation)."""
    return make_client(SECRET_KEY, base_url, mirror=False)


def is_direct(client) -> bool:
    return stripe_mirror.of(client) is None


@pytest.fixture
def requests_made(base_url):
    """The emulator's request count per path since the test began."""
    control(base_url, "DELETE", "requests")
    return lambda: control(base_url, "GET", "requests")


@pytest.fixture
def faults(base_url):
    yield lambda **fault: control(base_url, "POST", "faults", fault)
    control(base_url, "DELETE", "faults")


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def newest_first(objects):
    return sorted(objects, key=lambda obj: (obj["created"], obj["id"]), reverse=True)


def is_plain_json(value) -> bool:
    if isinstance(value, dict):
        return type(value) is dict and all(is_plain_json(v) for v in value.values())
    if isinstance(value, list):
        return all(is_plain_json(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


# --------------------------------------------------------------------------- the client


def test_the_api_version_is_the_specifications():
    assert API_VERSION == "2023-08-16"


def test_the_client_pins_the_version_the_emulator_insists_on(state, client):
    # The emulator answers 400 to any other Stripe-Version, the SDK's default included.
    endpoints = [e["id"] for e in list_webhook_endpoints(client)]
    assert endpoints and sorted(endpoints) == sorted(e["id"] for e in state["objects"]["webhook_endpoint"])


def test_the_client_retries_server_errors_as_asked(base_url, faults, requests_made):
    faults(status=500, count=2)
    assert list(list_webhook_endpoints(make_client(SECRET_KEY, base_url, max_network_retries=2)))
    assert requests_made() == {"/v1/webhook_endpoints": 3}
    faults(status=500, count=1)
    with pytest.raises(StripeAccessError):
        list(list_webhook_endpoints(make_client(SECRET_KEY, base_url, max_network_retries=0)))


@pytest.mark.parametrize("key, message", [
    ("", "No Stripe API key"), ("pk_test_51Publishable0000abcd", "publishable key")])
def test_the_client_refuses_keys_that_cannot_read_an_account(key, message):
    with pytest.raises(ConfigurationError, match=message) as raised:
        make_client(key)
    assert "Publishable0000" not in str(raised.value)


@pytest.mark.parametrize("key, base, mode", [
    ("sk_live_51abc", None, "live"), ("rk_live_51abc", None, "live"),
    ("sk_test_51abc", None, "test"), ("rk_test_51abc", "https://api.stripe.com", "test"),
    ("sk_live_51abc", "https://stripe-proxy.internal:8443", "live"),
    ("sk_test_51abc", "http://127.0.0.1:12111", "emulator"),
    ("sk_live_51abc", "http://localhost:12111", "emulator"),
    ("sk_test_51abc", "http://[::1]:12111", "emulator"),
])
def test_mode_of_names_live_test_or_emulator(key, base, mode):
    assert mode_of(key, base) == mode


# --------------------------------------------------------------------------- listings


def test_list_events_pushes_the_window_and_types_to_stripe(state, client, requests_made):
    since = at(T0 - 21 * DAY)
    events = list(list_events(client, since, types=["customer.updated"]))
    expected = newest_first(e for e in state["objects"]["event"]
                            if e["type"] == "customer.updated" and e["created"] >= T0 - 21 * DAY)
    assert events == expected  # the very objects, as plain dicts
    assert len(expected) > 100
    if is_direct(client):
        assert requests_made() == {"/v1/events": math.ceil(len(expected) / 100)}
    else:  # every event of the window once (cold), or only the sync (warm)
        window = [e for e in state["objects"]["event"] if e["created"] >= T0 - 21 * DAY]
        assert set(requests_made()) <= {"/v1/events"}
        assert requests_made().get("/v1/events", 0) <= math.ceil(len(window) / 100) + 2
    assert all(is_plain_json(e) for e in events)


def test_list_events_with_delivery_success_false_finds_undelivered_events(state, client):
    events = list(list_events(client, at(T0 - 30 * DAY), delivery_success=False,
                              until=at(T0 - 19 * DAY)))
    expected = [e["id"] for e in newest_first(state["objects"]["event"])
                if e["pending_webhooks"] > 0 and T0 - 30 * DAY <= e["created"] < T0 - 19 * DAY]
    assert [e["id"] for e in events] == expected and expected


def test_list_events_mixes_families_and_names(state, client):
    wanted = ["customer.subscription.*", "checkout.session.completed"]
    events = list(list_events(client, at(T0 - 30 * DAY), types=wanted))
    expected = [e["id"] for e in newest_first(state["objects"]["event"])
                if e["type"].startswith("customer.subscription.")
                or e["type"] == "checkout.session.completed"]
    assert [e["id"] for e in events] == expected
    assert len({e["type"] for e in events}) == 4


def test_list_events_reads_a_naive_datetime_as_utc(client):
    since = datetime(2023, 11, 1)
    naive = [e["id"] for e in list_events(client, since)]
    assert naive == [e["id"] for e in list_events(client, since.replace(tzinfo=timezone.utc))]


def test_retrieve_event_returns_the_event_or_none(state, client):
    event = state["objects"]["event"][0]
    assert retrieve_event(client, event["id"]) == event
    assert retrieve_event(client, "evt_1NeverSentOrTooOld000000") is None


def test_list_subscriptions_includes_canceled_ones_by_default(state, client):
    subscriptions = list(list_subscriptions(client))
    assert [s["id"] for s in subscriptions] == [
        s["id"] for s in newest_first(state["objects"]["subscription"])]
    assert "canceled" in {s["status"] for s in subscriptions}
    recent = list(list_subscriptions(client, status="active", created_since=at(T0 - 95 * DAY)))
    assert [s["id"] for s in recent] == [
        s["id"] for s in newest_first(state["objects"]["subscription"])
        if s["status"] == "active" and s["created"] >= T0 - 95 * DAY]
    assert recent


def test_list_subscriptions_can_expand_customers(client):
    subscriptions = list(list_subscriptions(client, expand_customer=True))
    assert all(s["customer"]["object"] == "customer" for s in subscriptions)


def test_list_invoices_paid_since_keeps_invoices_paid_in_the_window(state, client, requests_made):
    paid_at = sorted(i["status_transitions"]["paid_at"] for i in state["objects"]["invoice"]
                     if i["status"] == "paid")
    since = paid_at[len(paid_at) // 2]
    invoices = list(list_invoices(client, paid_since=at(since)))
    assert [i["id"] for i in invoices] == [
        i["id"] for i in newest_first(state["objects"]["invoice"])
        if i["status"] == "paid" and i["status_transitions"]["paid_at"] >= since]
    assert 0 < len(invoices) < len(paid_at)
    if is_direct(client):
        assert requests_made() == {"/v1/invoices": 1}
    else:  # the invoices once (cold: all of them, every status), then only the events
        assert set(requests_made()) <= {"/v1/events", "/v1/invoices"}
        assert requests_made().get("/v1/invoices", 0) <= math.ceil(len(state["objects"]["invoice"]) / 100)


def test_list_invoices_by_status(state, client):
    assert [i["id"] for i in list_invoices(client, status="open")] == [
        i["id"] for i in newest_first(state["objects"]["invoice"]) if i["status"] == "open"]
    with pytest.raises(ValueError, match="paid_since"):
        list(list_invoices(client, paid_since=at(T0), status="open"))


def test_list_charges_in_a_window(state, client):
    since, until = T0 - 10 * DAY + 200, T0 - 10 * DAY + 500
    charges = list(list_charges(client, at(since), at(until)))
    assert [c["id"] for c in charges] == [
        c["id"] for c in newest_first(state["objects"]["charge"])
        if since <= c["created"] < until]
    assert 0 < len(charges) < len(state["objects"]["charge"])


def test_list_refunds_disputes_and_customers(state, client):
    assert [r["id"] for r in list_refunds(client)] == [
        r["id"] for r in newest_first(state["objects"]["refund"])]
    charge = state["objects"]["refund"][0]["charge"]
    assert [r["charge"] for r in list_refunds(client, charge=charge)] == [charge]
    assert [d["id"] for d in list_disputes(client)] == [
        d["id"] for d in newest_first(state["objects"]["dispute"])]
    assert [c["email"] for c in list_customers(client, email="owner2@example.com")] == [
        "owner2@example.com"]
    assert len(list(list_customers(client))) == len(state["objects"]["customer"])


def test_list_balance_transactions_can_expand_their_sources(state, client):
    refunds = list(list_balance_transactions(client, type="refund", expand_source=True))
    assert refunds and all(t["source"]["object"] == "refund" for t in refunds)
    assert all(t["net"] == t["amount"] - t["fee"] for t in list_balance_transactions(client))


def test_list_prices_includes_tiers_only_when_asked(client):
    plain = list(list_prices(client))
    full = list(list_prices(client, include_tiers=True, expand_product=True))
    assert not any("tiers" in p for p in plain)
    assert any(p.get("tiers") for p in full)
    assert all(p["product"]["object"] == "product" for p in full)
    assert all(not p["active"] for p in list_prices(client, active=False))


def test_list_checkout_sessions_and_webhook_endpoints(state, client):
    session = state["objects"]["checkout.session"][0]
    assert [s["id"] for s in list_checkout_sessions(
        client, payment_intent=session["payment_intent"])] == [session["id"]]
    endpoints = list(list_webhook_endpoints(client))
    assert {e["status"] for e in endpoints} == {"enabled", "disabled"}
    assert json.loads(json.dumps(endpoints)) == endpoints


# --------------------------------------------------------------------------- errors


def one_line(error: StripeAccessError) -> str:
    message = str(error)
    assert "\n" not in message
    assert error.__suppress_context__, "the SDK's exception stays out of the traceback"
    return message


def test_a_rejected_key_says_so_without_showing_it(base_url):
    wrong = "sk_test_51RevokedKeyThatStripeNoLongerKnows9876"
    with pytest.raises(StripeAccessError) as raised:
        list(list_events(make_client(wrong, base_url), at(T0)))
    message = one_line(raised.value)
    assert "rejected the API key sk_test_…9876" in message and "STRIPE_API_KEY" in message
    assert "RevokedKey" not in message


def test_a_restricted_key_without_permission_names_the_resource(base_url):
    restricted = make_client(RESTRICTED_KEY, base_url)
    assert [e["object"] for e in list_webhook_endpoints(restricted)][:1] == ["webhook_endpoint"]
    with pytest.raises(StripeAccessError) as raised:
        list(list_charges(restricted, at(T0 - 30 * DAY)))
    message = one_line(raised.value)
    assert "may not read charges" in message and "rak_charge_read" in message
    assert RESTRICTED_KEY[8:] not in message


def test_rate_limiting_says_what_to_do(direct_client, faults):
    faults(status=429, count=1)
    with pytest.raises(StripeAccessError, match=r"rate-limiting this key \(429\) while reading "
                                                r"subscriptions") as raised:
        list(list_subscriptions(direct_client))
    one_line(raised.value)


def test_an_outage_after_retries_says_so(direct_client, faults, requests_made):
    faults(status=500, count=None)
    with pytest.raises(StripeAccessError, match=r"Stripe failed to answer \(HTTP 500") as raised:
        list(list_disputes(direct_client))
    assert "status.stripe.com" in one_line(raised.value)
    assert requests_made() == {"/v1/disputes": 3}  # the first try and two retries


def test_a_revoked_key_fault_is_an_access_error(client, faults):
    faults(status=401, count=1)
    with pytest.raises(StripeAccessError, match="rejected the API key"):
        retrieve_event(client, "evt_1Anything")


def test_an_unreachable_api_base_says_where_to_look():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(StripeAccessError, match=f"Could not reach the Stripe API at "
                                                f"127.0.0.1:{port} \\(Connection refused\\)") as raised:
        list(list_customers(make_client(SECRET_KEY, f"http://127.0.0.1:{port}",
                                        max_network_retries=0)))
    assert "STRIPE_API_BASE" in one_line(raised.value)


def test_invalid_requests_are_left_to_the_caller(client):
    with pytest.raises(stripe.InvalidRequestError):
        with stripe_errors("customers"):
            client.v1.customers.retrieve("cus_doesnotexist")


def test_errors_raised_by_the_caller_own_calls_are_translated_too(base_url):
    with pytest.raises(StripeAccessError, match="may not read charges"):
        with stripe_errors("charges"):
            make_client(RESTRICTED_KEY, base_url).v1.charges.list()


# --------------------------------------------------------------------------- masking


@pytest.mark.parametrize("key, masked", [
    ("sk_test_51OpsbookEmulatorSecretKey0000abcd", "sk_test_…abcd"),
    ("rk_live_51Abc_def_ghij1234", "rk_live_…1234"),
    ("whsec_0123456789abcdef", "whsec_…cdef"),
    ("sk_test_short", "sk_test_…"),
])
def test_mask_key_keeps_only_the_prefix_and_last_four(key, masked):
    assert mask_key(key) == masked


def test_mask_secrets_masks_every_key_in_a_text():
    text = "tried sk_live_" + "51AAAAAAAAAAAAzzzz then rk_test_51BBBBBBBBBBBByyyy"  # split: not a live key in the repo
    assert mask_secrets(text) == "tried sk_live_…zzzz then rk_test_…yyyy"



def test_a_forked_child_bounds_its_requests_even_if_the_fork_caught_the_deadline_thread_mid_step():
    import os
    import signal
    import time

    from ops_lib import stripe_api

    with stripe_api._deadlines._ready:  # held at the fork, as the parent's deadline thread may hold it
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                with stripe_api._Watchdog(0.05) as watchdog:
                    time.sleep(0.5)
                code = 0 if watchdog.fired else 1
            finally:
                os._exit(code)
    deadline = time.monotonic() + 10
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    if done == (0, 0):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert done != (0, 0), "the child hung on the parent's lock"
    assert os.waitstatus_to_exitcode(done[1]) == 0, "the child's watchdog did not fire"


# --------------------------------------------------------------------------- in_background


def test_a_listing_read_in_background_hands_over_every_item_in_order():
    from ops_lib.stripe_api import in_background
    assert list(in_background(iter(range(2500)))) == list(range(2500))
    assert list(in_background([])) == []


def test_an_error_while_reading_in_background_is_raised_after_the_items_before_it():
    from ops_lib.stripe_api import in_background

    def failing():
        yield from range(1500)
        raise StripeAccessError("Stripe failed to answer while reading subscriptions")

    seen = []
    with pytest.raises(StripeAccessError, match="while reading subscriptions"):
        for item in in_background(failing()):
            seen.append(item)
    assert seen == list(range(1500))


def test_a_caller_that_stops_early_stops_the_reading_thread_and_closes_the_listing():
    import threading
    import time as _time
    from ops_lib.stripe_api import in_background
    closed = threading.Event()

    def endless():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    handed = in_background(endless(), "opsbook-test-reader")
    assert [next(handed) for _ in range(5)] == [0, 1, 2, 3, 4]
    handed.close()
    assert closed.wait(5), "the listing is closed (its snapshot released)"
    deadline = _time.monotonic() + 5
    while any(t.name == "opsbook-test-reader" for t in threading.enumerate()) and _time.monotonic() < deadline:
        _time.sleep(0.01)
    assert not any(t.name == "opsbook-test-reader" for t in threading.enumerate())
