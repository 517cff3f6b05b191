"""The demo app's webhook endpoint, over real HTTP against a real PostgreSQL 18."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops_lib.demo.receiver import MAX_BODY_BYTES, READ_TIMEOUT_S, start_receiver, stop_receiver
from ops_lib.errors import EXIT_INVALID
from ops_lib.stripe_emulator.objects import make_checkout_session, make_event
from ops_lib.webhooks import HEADER, sign, sign_with

REPO = Path(__file__).resolve().parent.parent
SCHEMA = REPO / "ops_lib" / "demo" / "schema.sql"
SECRET = "whsec_test_currentCurrentCurrent0"
OLD_SECRET = "whsec_test_rolledAwayRolledAway00"
CUSTOMER = "cus_OaxLz8kB0PJWGa"


@pytest.fixture
def app_db(database18):
    with database18.admin.connect() as conn:
        conn.exec_driver_sql(SCHEMA.read_text())
    database18.execute("INSERT INTO plans (code, name, monthly_price, usage_limit, is_paid) VALUES ('pro', 'Pro', 4900, 100000, true)")
    database18.execute("INSERT INTO organizations (name, plan_code, stripe_customer_id) VALUES ('Acme', 'pro', :customer)",
                       customer=CUSTOMER)
    return database18


@pytest.fixture
def endpoint(app_db):
    server, _thread, url = start_receiver(app_db.url, [SECRET])
    yield url
    stop_receiver(server)


def rows(db, sql: str, **params) -> list[dict]:
    with db.admin.connect() as conn:
        return [dict(row) for row in conn.execute(sa.text(sql), params).mappings()]


def app_state(db) -> dict[str, list[dict]]:
    return {
        "webhook_events": rows(db, "SELECT * FROM webhook_events ORDER BY id"),
        "orders": rows(db, "SELECT * FROM orders ORDER BY id"),
        "credit_grants": rows(db, "SELECT * FROM credit_grants ORDER BY id"),
    }


def checkout_completed(customer: str = CUSTOMER, credits: str | None = "500", payment_status: str = "paid") -> bytes:
    session = make_checkout_session(customer=customer, amount_total=4900, currency="usd",
                                    payment_status=payment_status,
                                    metadata={"credits": credits} if credits is not None else {})
    return json.dumps(make_event("checkout.session.completed", session), indent=2).encode()


def post(url: str, body: bytes, signature: str | None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}
    if signature is not None:
        headers[HEADER] = signature
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def deliver(url: str, body: bytes, secret: str = SECRET) -> tuple[int, dict]:
    """One delivery attempt, signed afresh as Stripe signs every attempt."""
    return post(url, body, sign(body, secret))


def test_a_paid_checkout_creates_one_order_and_credit_grant_and_a_processed_event(endpoint, app_db):
    body = checkout_completed(credits="500")
    event = json.loads(body)
    session = event["data"]["object"]
    header = sign(body, SECRET)

    assert post(endpoint, body, header) == (200, {"received": True, "outcome": "processed"})

    organization_id = rows(app_db, "SELECT id FROM organizations WHERE stripe_customer_id = :c", c=CUSTOMER)[0]["id"]
    [order] = rows(app_db, "SELECT * FROM orders")
    assert order | {"id": None, "created_at": None} == {
        "id": None, "created_at": None, "organization_id": organization_id, "stripe_event_id": event["id"],
        "stripe_checkout_session_id": session["id"], "stripe_payment_intent_id": session["payment_intent"],
        "amount": 4900, "currency": "usd", "status": "paid",
    }
    [grant] = rows(app_db, "SELECT organization_id, stripe_event_id, credits FROM credit_grants")
    assert grant == {"organization_id": organization_id, "stripe_event_id": event["id"], "credits": 500}
    [recorded] = rows(app_db, "SELECT * FROM webhook_events")
    assert recorded["stripe_event_id"] == event["id"]
    assert recorded["type"] == "checkout.session.completed"
    assert (recorded["status"], recorded["error"]) == ("processed", None)
    assert recorded["raw_body"] == body.decode()
    assert recorded["signature_header"] == header
    assert recorded["received_at"] <= recorded["processed_at"]


def test_a_paid_checkout_without_credits_in_its_metadata_creates_an_order_only(endpoint, app_db):
    assert deliver(endpoint, checkout_completed(credits=None))[0] == 200

    assert len(rows(app_db, "SELECT * FROM orders")) == 1
    assert rows(app_db, "SELECT * FROM credit_grants") == []


def test_redelivering_a_processed_event_changes_nothing(endpoint, app_db):
    body = checkout_completed()
    now = int(time.time())
    assert post(endpoint, body, sign(body, SECRET, now - 60))[0] == 200
    before = app_state(app_db)

    # A later attempt carries a later timestamp, so a different signature.
    assert post(endpoint, body, sign(body, SECRET, now)) == (200, {"received": True, "outcome": "duplicate"})

    assert app_state(app_db) == before


def test_concurrent_deliveries_of_one_event_fulfil_it_once(endpoint, app_db):
    body = checkout_completed()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: deliver(endpoint, body), range(8)))

    assert sorted(outcome["outcome"] for _status, outcome in answers) == ["duplicate"] * 7 + ["processed"]
    assert len(rows(app_db, "SELECT * FROM orders")) == 1
    assert len(rows(app_db, "SELECT * FROM credit_grants")) == 1


@pytest.mark.parametrize(
    "make_delivery, reason",
    [
        (lambda body: (body, sign(body, "whsec_test_notTheAppsSecretAtAll0")), "no signature matches the secret"),
        (lambda body: (body, None), "no Stripe-Signature header"),
        (lambda body: (body.replace(b"4900", b"0490"), sign(body, SECRET)), "no signature matches the secret"),
        (lambda body: (body, sign(body, SECRET, int(time.time()) - 3600)), "timestamp outside the tolerance (3600 s old)"),
        (lambda body: (body, "t=oops"), "malformed header"),
        (lambda body: (b"not json", sign(b"not json", SECRET)), "the body is not a Stripe event"),
    ],
    ids=["wrong_secret", "no_header", "tampered_body", "stale", "malformed", "signed_non_event"],
)
def test_a_delivery_that_fails_verification_is_answered_400_and_records_nothing(endpoint, app_db, make_delivery, reason):
    body, header = make_delivery(checkout_completed())

    assert post(endpoint, body, header) == (400, {"error": reason})

    assert app_state(app_db) == {"webhook_events": [], "orders": [], "credit_grants": []}


def test_a_delivery_signed_with_a_rolled_away_secret_is_accepted_only_while_the_app_still_knows_it(app_db):
    first, second = checkout_completed(), checkout_completed()
    knows_new_only, _, new_only_url = start_receiver(app_db.url, [SECRET])
    knows_both, _, both_url = start_receiver(app_db.url, [OLD_SECRET, SECRET])
    try:
        assert deliver(new_only_url, first, OLD_SECRET) == (400, {"error": "no signature matches the secret"})
        assert deliver(both_url, first, OLD_SECRET)[0] == 200
        # What Stripe sends during the roll (both signatures) is accepted by either configuration.
        assert post(new_only_url, second, sign_with(second, [OLD_SECRET, SECRET]))[0] == 200
    finally:
        stop_receiver(knows_new_only)
        stop_receiver(knows_both)

    assert len(rows(app_db, "SELECT * FROM orders")) == 2


def test_an_event_for_an_unknown_customer_fails_and_a_redelivery_after_the_fix_processes_it(endpoint, app_db):
    body = checkout_completed(customer="cus_Unknown0000000")
    event_id = json.loads(body)["id"]

    assert deliver(endpoint, body) == (500, {"error": "no organization for customer cus_Unknown0000000"})
    [failed] = rows(app_db, "SELECT status, error, processed_at FROM webhook_events WHERE stripe_event_id = :id", id=event_id)
    assert failed == {"status": "failed", "error": "no organization for customer cus_Unknown0000000", "processed_at": None}
    assert rows(app_db, "SELECT * FROM orders") == []

    app_db.execute("INSERT INTO organizations (name, plan_code, stripe_customer_id) VALUES ('Late Ltd', 'pro', 'cus_Unknown0000000')")
    assert deliver(endpoint, body) == (200, {"received": True, "outcome": "processed"})

    [fixed] = rows(app_db, "SELECT status, error FROM webhook_events WHERE stripe_event_id = :id", id=event_id)
    assert fixed == {"status": "processed", "error": None}
    assert rows(app_db, "SELECT o.name FROM orders JOIN organizations o ON o.id = orders.organization_id") == [{"name": "Late Ltd"}]
    assert len(rows(app_db, "SELECT * FROM credit_grants")) == 1


def test_a_fulfilment_that_breaks_halfway_leaves_no_order_behind_and_records_the_error(endpoint, app_db):
    # The order is written before the credit grant, which this constraint makes fail.
    app_db.execute("ALTER TABLE credit_grants ADD CONSTRAINT at_most_1000 CHECK (credits <= 1000)")
    body = checkout_completed(credits="5000")

    status, answer = deliver(endpoint, body)

    assert status == 500 and answer["error"].startswith("CheckViolation: ")
    [failed] = rows(app_db, "SELECT status, error FROM webhook_events")
    assert failed == {"status": "failed", "error": answer["error"]}
    assert rows(app_db, "SELECT * FROM orders") == []


def test_credits_that_are_not_a_whole_number_fail_the_event(endpoint, app_db):
    assert deliver(endpoint, checkout_completed(credits="lots")) == (
        500, {"error": "metadata.credits is not a whole number of credits: 'lots'"})
    assert rows(app_db, "SELECT * FROM orders") == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(checkout_completed(payment_status="unpaid"), id="checkout_awaiting_a_delayed_payment"),
        pytest.param(json.dumps(make_event("invoice.paid", {"id": "in_1NnlpZ", "object": "invoice",
                                                            "customer": CUSTOMER})).encode(), id="invoice_paid"),
        pytest.param(json.dumps(make_event("customer.created", {"id": CUSTOMER, "object": "customer"})).encode(),
                     id="event_the_app_ignores"),
    ],
)
def test_events_that_fulfil_nothing_are_processed_without_orders(endpoint, app_db, body):
    assert deliver(endpoint, body) == (200, {"received": True, "outcome": "processed"})

    assert [r["status"] for r in rows(app_db, "SELECT status FROM webhook_events")] == ["processed"]
    assert rows(app_db, "SELECT * FROM orders") == []


def test_the_command_line_receiver_takes_its_secrets_from_the_environment_and_logs_without_them(app_db):
    env = {**os.environ, "DATABASE_URL": app_db.url, "STRIPE_WEBHOOK_SECRETS": f"{OLD_SECRET}, {SECRET}"}
    process = subprocess.Popen([sys.executable, "-m", "ops_lib.demo.receiver", "--port", "0"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()
        body = checkout_completed()
        assert deliver(url, body, OLD_SECRET)[0] == 200
        assert post(url, body, sign(body, "whsec_test_notTheAppsSecretAtAll0"))[0] == 400
    finally:
        process.terminate()
        _, log = process.communicate(timeout=10)

    assert process.returncode == 0
    assert json.loads(body)["id"] in log and "-> 200 processed" in log and "-> 400 rejected" in log
    assert "whsec_" not in log and app_db.url not in log


def test_the_command_line_receiver_refuses_to_start_without_secrets(app_db):
    env = {k: v for k, v in os.environ.items() if k != "STRIPE_WEBHOOK_SECRETS"} | {"DATABASE_URL": app_db.url}
    done = subprocess.run([sys.executable, "-m", "ops_lib.demo.receiver"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)

    assert done.returncode == EXIT_INVALID
    assert "STRIPE_WEBHOOK_SECRETS is not set" in done.stderr


# --------------------------------------------------------------------------- clients that stall


READ_TIMEOUT = 1.5  # shorter than the default, to keep the tests quick
NO_DATABASE = "postgresql://nobody@127.0.0.1:9/never_connected"  # none of these requests reaches it


@pytest.fixture
def bare_endpoint():
    """The endpoint, without a database: every request here fails before the app needs one."""
    server, _thread, url = start_receiver(NO_DATABASE, [SECRET], read_timeout=READ_TIMEOUT)
    yield server.server_address[:2]
    stop_receiver(server)


def handler_threads(besides: list[threading.Thread] = ()) -> list[threading.Thread]:
    """Request handler threads alive now, but those in ``besides`` (another module's servers in this
    process may still hold a kept-alive connection of theirs)."""
    return [t for t in threading.enumerate() if "process_request_thread" in t.name and t.is_alive() and t not in besides]


def raw_exchange(address, chunks, pause: float = 0.0) -> tuple[float, bytes]:
    """Send `chunks` over a raw socket (`pause` s apart), then read until the server closes."""
    started = time.monotonic()
    with socket.create_connection(address, timeout=30) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server gave up on us: what it answered is still to be read
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return time.monotonic() - started, answer


HEAD = b"POST /stripe/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def test_the_default_read_timeout_is_short():
    assert READ_TIMEOUT_S <= 10 and MAX_BODY_BYTES == 1 << 20


def test_a_body_shorter_than_its_content_length_is_answered_408_at_the_read_timeout(bare_endpoint):
    others = handler_threads()
    elapsed, answer = raw_exchange(bare_endpoint, [HEAD + b"Content-Length: 1000\r\n\r\n" + b"{" * 10])

    assert answer.startswith(b"HTTP/1.0 408 ")
    assert answer.endswith(b'{"error": "the body did not arrive within 1.5 s"}')
    assert READ_TIMEOUT - 0.2 <= elapsed < READ_TIMEOUT + 2
    # The connection is closed and its thread is gone.
    deadline = time.monotonic() + 2
    while handler_threads(others) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handler_threads(others) == []


def test_a_body_trickled_in_is_cut_off_at_the_deadline_though_no_single_read_waits_long(bare_endpoint):
    body = b"x" * 1000
    chunks = [HEAD + b"Content-Length: 1000\r\n\r\n"] + [body[i:i + 10] for i in range(0, 1000, 10)]

    elapsed, answer = raw_exchange(bare_endpoint, chunks, pause=0.1)  # 10 s to send it all

    assert answer.startswith(b"HTTP/1.0 408 ")
    assert elapsed < READ_TIMEOUT + 2


def test_headers_that_never_end_are_dropped_at_the_deadline(bare_endpoint):
    elapsed, answer = raw_exchange(bare_endpoint, [HEAD + b"Stripe-Signature: t=1,v1="])

    assert answer == b""  # nothing to answer: the request never arrived
    assert elapsed < READ_TIMEOUT + 2


def test_a_body_larger_than_the_maximum_is_refused_413_without_being_read(bare_endpoint):
    elapsed, answer = raw_exchange(bare_endpoint, [HEAD + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode(),
                                                   b"{" * 4096])

    assert answer.startswith(b"HTTP/1.0 413 ")
    assert answer.endswith(f'{{"error": "the body is larger than {MAX_BODY_BYTES} bytes"}}'.encode())
    assert elapsed < 1


@pytest.mark.parametrize("length, status", [("-5", b"400"), ("lots", b"411")])
def test_a_content_length_that_is_not_a_size_is_refused(bare_endpoint, length, status):
    _, answer = raw_exchange(bare_endpoint, [HEAD + f"Content-Length: {length}\r\n\r\n".encode()])

    assert answer.startswith(b"HTTP/1.0 " + status + b" ")


def test_stalled_clients_do_not_keep_the_endpoint_from_answering_others(bare_endpoint):
    stalled = [socket.create_connection(bare_endpoint) for _ in range(5)]
    try:
        for sock in stalled:
            sock.sendall(HEAD + b"Content-Length: 1000\r\n\r\n{")
        host, port = bare_endpoint
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=5) as response:
            assert (response.status, json.loads(response.read())) == (200, {"ok": True})
    finally:
        for sock in stalled:
            sock.close()
