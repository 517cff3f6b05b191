"""Stripe, and the app's webhook endpoint, misbehaving: every request ends, bounded, with one line.

The real stripe SDK, through `make_client(..., api_base=server.url)` and the listing helpers the
runbooks use, against tests/faulty_http.py; and the webhook replay against the same server.
The time bounds prove that a request ends; they are far above what it takes (see the figures
printed with `-s`), so they do not measure performance.
"""
from __future__ import annotations

import http.server
import inspect
import json
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
import stripe

from ops_lib import runbooks, runner
from ops_lib.audit import AuditLog
from ops_lib.db import sqlalchemy_url
from ops_lib.errors import StripeAccessError, TargetUnreachable
from ops_lib.schema_map import SchemaMap
from ops_lib.stripe_api import DEFAULT_TIMEOUT_S, list_customers, make_client
from ops_lib.stripe_emulator.objects import make_checkout_session, make_event
from ops_lib.target import Target
from ops_lib.webhooks import HEADER
from ops_lib.webhooks.replay import MAX_SILENT_IN_A_ROW, replay_events

from .faulty_http import Reply, faulty_http, serving

REPO = Path(__file__).resolve().parent.parent
KEY = "sk_test_51FaultyHttpSuiteSecretKey0000wxyz"
BOUND_S = 25  # "ends", with room to spare: each case takes at most the 15 s budget
WEBHOOK_SECRET = "whsec_test_faultyHttpSuiteSigning00"


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    """Neither the client (its deadline watchdogs) nor the server leaves a thread running."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"threads left running: {[t.name for t in left]}"


def access_error(run) -> tuple[str, float]:
    """Run `run()`, which must raise StripeAccessError; its message and how long it took."""
    started = time.monotonic()
    with pytest.raises(StripeAccessError) as raised:
        run()
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert "\n" not in message and message == message.strip()
    assert raised.value.__suppress_context__, "the SDK's exception stays out of the traceback"
    assert KEY not in message and KEY[8:-4] not in message
    return message, elapsed


FAULTS = [
    # behaviour, what the message says, what it says to do, requests made (2 retries by default)
    ("unauthorized", "Stripe rejected the API key sk_test_…wxyz (401", "set STRIPE_API_KEY", 1),
    ("rate_limited", "rate-limiting this key (429) while reading customers", "re-run later", 1),
    ("server_error", "Stripe failed to answer (HTTP 500, retries included) while reading customers",
     "https://status.stripe.com", 3),
    ("unavailable", "Stripe failed to answer (HTTP 503, retries included) while reading customers",
     "https://status.stripe.com", 3),
    ("garbage", "answered HTTP 200 with a body that is not JSON while reading customers",
     "check them", 1),
    ("html", "answered HTTP 200 with an HTML page instead of Stripe's JSON while reading customers",
     "STRIPE_API_BASE, or a proxy in between (a sign-in or error page?)", 1),
    ("truncated", "cut its answer (HTTP 200) short by closing the connection while reading "
                  "customers (gave up after 3 tries", "check https://status.stripe.com", 3),
    # A 6 s budget with 2.5 s reads (the defaults' shape: 15 s, 10 s reads) proves the bound without
    # waiting 15 s (a client made without one gets the default:
    # test_a_client_gets_the_default_budget_of_15_s_unless_given_one); the same budget bounds a
    # body that stalls or drips.
    ("hang", "accepted the connection but never answered while reading customers "
             "(gave up after 2 tries in 6 s", "check https://status.stripe.com", 2),
    ("stall_body", "began its answer (HTTP 200) but never finished it while reading customers "
                   "(gave up after 1 try in 5 s", "or STRIPE_API_BASE", 1),
    ("drip", "began its answer (HTTP 200) but never finished it while reading customers "
             "(gave up after 1 try in 5 s", "then re-run", 1),
]
BUDGET_S = {"hang": 6.0, "stall_body": 5.0, "drip": 5.0}
READ_S = {"hang": 2.5}


@pytest.mark.parametrize("behaviour, says, fix, requests", FAULTS, ids=[f[0] for f in FAULTS])
def test_every_fault_of_the_api_ends_bounded_as_one_line_saying_what_to_do(behaviour, says, fix, requests):
    budget = BUDGET_S.get(behaviour, DEFAULT_TIMEOUT_S)
    with faulty_http(behaviour) as server:
        client = make_client(KEY, server.url, timeout=budget, **({"read_timeout": READ_S[behaviour]}
                                                                  if behaviour in READ_S else {}))
        message, elapsed = access_error(lambda: list(list_customers(client)))
        print(f"\n{behaviour}: {elapsed:.2f} s, {server.count} requests: {message}")
        assert says in message and fix in message
        assert server.count == requests
        assert elapsed < BOUND_S
        if behaviour in ("hang", "stall_body", "drip"):
            # The whole budget, retries included (they no longer multiply it), then it gives up.
            assert elapsed >= budget - 1
        # It was the real SDK speaking Stripe's protocol.
        assert {r.headers["stripe-version"] for r in server.requests} == {"2023-08-16"}
        assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {KEY}"}


def test_a_client_gets_the_default_budget_of_15_s_unless_given_one():
    assert DEFAULT_TIMEOUT_S == 15
    assert make_client(KEY, "http://127.0.0.1:9")._requestor._client.timeout == DEFAULT_TIMEOUT_S
    assert make_client(KEY, "http://127.0.0.1:9", timeout=5)._requestor._client.timeout == 5


EMPTY_LIST = {"object": "list", "url": "/v1/customers", "has_more": False, "data": []}


def stripe_error(status: int, type_: str, headers=None) -> Reply:
    return Reply(status, {"error": {"type": type_, "message": "m"}}, headers or {})


@pytest.mark.parametrize("answers, requests", [
    ([stripe_error(500, "api_error", {"Stripe-Should-Retry": "false"})], 1),  # Stripe says no retry
    ([stripe_error(400, "invalid_request_error", {"Stripe-Should-Retry": "true"}), Reply(200, EMPTY_LIST)], 2),
    ([stripe_error(409, "idempotency_error"), stripe_error(503, "api_error"), Reply(200, EMPTY_LIST)], 3),
], ids=["should_retry_false", "should_retry_true", "conflict_then_outage"])
def test_the_sdks_retry_rules_are_kept_within_the_budget(answers, requests):
    with faulty_http(*answers) as server:
        client = make_client(KEY, server.url)
        if answers[-1].status == 200:
            assert list(list_customers(client)) == []
        else:
            access_error(lambda: list(list_customers(client)))
        assert server.count == requests


def test_an_invalid_request_is_not_retried_and_left_to_the_caller():
    with faulty_http(stripe_error(400, "invalid_request_error")) as server:
        with pytest.raises(stripe.InvalidRequestError):
            list(list_customers(make_client(KEY, server.url)))
        assert server.count == 1


def test_a_shorter_budget_is_honoured():
    with faulty_http("drip") as server:
        message, elapsed = access_error(lambda: list(list_customers(make_client(KEY, server.url, timeout=3))))
    assert 2.5 <= elapsed < 5
    assert "gave up after 1 try in 3 s" in message


def test_a_listing_that_stalls_mid_pagination_ends_bounded_after_the_pages_it_had():
    first_page = {"object": "list", "url": "/v1/customers", "has_more": True,
                  "data": [{"id": "cus_First0000001", "object": "customer"},
                           {"id": "cus_Second000002", "object": "customer"}]}
    with faulty_http(Reply(200, first_page), "hang") as server:
        received = []

        def page_through():
            for customer in list_customers(make_client(KEY, server.url, timeout=3)):
                received.append(customer["id"])

        message, elapsed = access_error(page_through)
        print(f"\nstalled pagination: {elapsed:.2f} s, {server.count} requests: {message}")
        assert received == ["cus_First0000001", "cus_Second000002"]
        assert server.count == 2  # the first page, then the second (no time left for a retry)
        assert all("starting_after=cus_Second000002" in path for path in server.paths()[1:])
        assert "accepted the connection but never answered while reading customers" in message
        assert elapsed < BOUND_S


def test_the_runners_preflight_against_a_hanging_api_ends_well_under_20_s():
    with faulty_http("hang") as server:
        target = Target(database_url=None, stripe_api_key=KEY, stripe_api_base=server.url)
        started = time.monotonic()
        with pytest.raises(TargetUnreachable) as raised:
            runner.check_stripe_access(runbooks.get("webhook_failure"), target)
        elapsed = time.monotonic() - started
    print(f"\npreflight: {elapsed:.2f} s: {raised.value}")
    assert elapsed < 20
    assert "accepted the connection but never answered while reading webhook endpoints" in str(raised.value)


# --------------------------------------------------------------------------- replaying webhooks

MAPPING = SchemaMap.load(REPO / "params" / "schema" / "reference.yaml")


@pytest.fixture
def app_conn(database18):
    with database18.admin.connect() as conn:
        conn.exec_driver_sql((REPO / "ops_lib" / "demo" / "schema.sql").read_text())
    engine = sa.create_engine(sqlalchemy_url(database18.url))
    with engine.connect() as conn:
        yield conn
    engine.dispose()


def paid_checkouts(count: int) -> list[dict]:
    return [make_event("checkout.session.completed",
                       make_checkout_session(customer="cus_OaxLz8kB0PJWGa", amount_total=4900),
                       created=1_700_000_000 + i)
            for i in range(count)]


def replay(conn, url: str, events: list[dict], tmp_path: Path, **options):
    audit = AuditLog("webhook_failure-faults", "webhook_failure", "test-db", path=tmp_path / "audit.jsonl")
    started = time.monotonic()
    log = replay_events(events, url=f"{url}/stripe/webhook", secret=WEBHOOK_SECRET, conn=conn,
                        schema=MAPPING, apply=True, audit=audit, reason="faults", **options)
    elapsed = time.monotonic() - started
    for action in log:
        assert "\n" not in action.outcome and WEBHOOK_SECRET[6:] not in action.outcome
    return log, elapsed, [entry["outcome"] for entry in audit.entries()]


def test_a_replay_to_an_app_that_never_answers_ends_each_event_at_its_timeout(app_conn, tmp_path):
    [event] = paid_checkouts(1)
    with faulty_http("hang") as server:
        # (3 s: the default, 10 s, is the same bound, waited longer)
        log, elapsed, audited = replay(app_conn, server.url, [event], tmp_path, timeout=3)
        [request] = server.requests
    print(f"\nreplay, hanging app: {elapsed:.2f} s: {log[0].outcome}")
    assert inspect.signature(replay_events).parameters["timeout"].default == 10
    assert 3 <= elapsed < 3 + 3
    assert log[0].outcome.startswith("no answer within 3 s (the app may have processed it:")
    assert log[0].applied and audited == [log[0].outcome]
    # It was the delivery Stripe would have sent.
    assert request.method == "POST" and request.path == "/stripe/webhook"
    assert json.loads(request.body) == event and request.headers[HEADER.lower()].startswith("t=")


def test_a_replay_stops_sending_after_events_in_a_row_got_no_answer(app_conn, tmp_path):
    events = paid_checkouts(MAX_SILENT_IN_A_ROW + 2)
    with faulty_http("hang") as server:
        log, elapsed, audited = replay(app_conn, server.url, events, tmp_path, timeout=1)
        assert server.count == MAX_SILENT_IN_A_ROW
    print(f"\nreplay of {len(events)} events, hanging app: {elapsed:.2f} s")
    assert elapsed < MAX_SILENT_IN_A_ROW * 1 + 3
    outcomes = [a.outcome for a in log]
    assert outcomes[:MAX_SILENT_IN_A_ROW] == ["no answer within 1 s (the app may have processed it: its status "
                                              "is read again before any later replay)"] * MAX_SILENT_IN_A_ROW
    assert all(o.startswith(f"not sent: the app did not answer the last {MAX_SILENT_IN_A_ROW} events;")
               for o in outcomes[MAX_SILENT_IN_A_ROW:])
    assert [a.applied for a in log] == [True] * MAX_SILENT_IN_A_ROW + [False, False]
    assert len(audited) == MAX_SILENT_IN_A_ROW  # only what was sent is audited


@pytest.mark.parametrize("behaviour, outcome", [
    ("stall_body", "app answered HTTP 200 but did not finish its answer within 2 s"),
    ("drip", "app answered HTTP 200 but did not finish its answer within 2 s"),
    ("truncated", "app answered HTTP 200 but closed the connection mid-answer"),
    ("server_error", "app answered HTTP 500: An unknown error occurred"),
    ("html", "delivered (HTTP 200)"),
])
def test_a_replay_to_an_app_that_misbehaves_gives_each_event_a_clear_outcome(app_conn, tmp_path, behaviour, outcome):
    with faulty_http(behaviour) as server:
        log, elapsed, _ = replay(app_conn, server.url, paid_checkouts(1), tmp_path, timeout=2)
    print(f"\nreplay, {behaviour}: {elapsed:.2f} s: {log[0].outcome}")
    assert log[0].outcome.startswith(outcome)
    assert elapsed < 2 + 3


def test_a_replay_to_a_port_nothing_listens_on_is_unreachable_at_once(app_conn, tmp_path):
    with faulty_http() as server:
        url = server.url
    log, elapsed, _ = replay(app_conn, url, paid_checkouts(1), tmp_path)
    assert log[0].outcome == "unreachable: Connection refused"
    assert elapsed < 3


def test_the_faulty_server_counts_requests_and_answers_in_turn():
    with faulty_http(Reply(200, {"n": 1}), Reply(201, "two"), "unauthorized") as server:
        answers = []
        for _ in range(4):
            try:
                with urllib.request.urlopen(f"{server.url}/x", timeout=5) as response:
                    answers.append((response.status, response.read()))
            except urllib.error.HTTPError as err:
                answers.append((err.code, json.loads(err.read())["error"]["type"]))
        assert answers == [(200, b'{"n": 1}'), (201, b"two"), (401, "invalid_request_error"),
                           (401, "invalid_request_error")]
        assert server.count == 4 and server.paths() == ["/x"] * 4


def test_the_faulty_server_rejects_an_unknown_behaviour():
    with pytest.raises(ValueError, match=re.escape("unknown behaviour 'hnag'")):
        with faulty_http("hnag"):
            pass


class _QuietPlainHTTP(http.server.BaseHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def test_tls_with_a_server_that_does_not_speak_it_is_one_line_naming_tls(app_conn, tmp_path):
    # (ssl.SSLError's `reason` is a text: following it as a cause crashed the run with an AttributeError)
    # (a plain HTTP server: it answers the TLS greeting with an HTTP 400, which is no TLS)
    with serving(_QuietPlainHTTP) as url:
        https = url.replace("http://", "https://")
        client = make_client(KEY, https, timeout=5)
        message, elapsed = access_error(lambda: list(list_customers(client)))
        log, _, _ = replay(app_conn, https, paid_checkouts(1), tmp_path, timeout=2)
    print(f"\n{message}\n{log[0].outcome}")
    assert "TLS failed" in message and elapsed < 5
    assert "\n" not in log[0].outcome and "TLS" in log[0].outcome
