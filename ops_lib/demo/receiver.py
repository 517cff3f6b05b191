"""The demo app's Stripe webhook endpoint: ``POST /stripe/webhook`` on 127.0.0.1.

It behaves like a careful production endpoint, so that the webhook_failure runbook diagnoses a
real app and a replay really fixes what the runbook found:

1. ``Stripe-Signature`` is verified against the app's secrets (old and new while a secret is
   being rolled) before anything else. A bad signature is answered 400 and nothing is stored:
   the delivery is not Stripe's, and if it is, Stripe retries it.
2. The event is recorded in ``webhook_events`` (status 'received') in a transaction of its own,
   idempotently by Stripe event id, so an authentic delivery is kept even if fulfilment crashes.
3. It is fulfilled in a second transaction holding the event's row lock: the order, the credit
   grant and the status 'processed' are committed together or not at all. An event already
   processed is answered 200 and changes nothing (Stripe delivers at least once), and
   concurrent deliveries of one event fulfil it once.
4. An event the app cannot fulfil is recorded 'failed' with the reason and answered 500.

Why 500 for a failed fulfilment, e.g. a paid checkout for a customer no organization has: the
customer paid and got nothing, so the delivery must not look successful. A non-2xx answer makes
Stripe retry with backoff (for up to three days in live mode), which heals the common race where
the customer id is saved on the organization moments later; it shows the failure in the
Dashboard's delivery log; and it tells a replay whether it fixed the event. A 'failed' event (or
one left 'received' by a crash) is fulfilled again when it is delivered again.

A request must arrive whole within ``READ_TIMEOUT_S`` (its body declared by ``Content-Length``,
at most ``MAX_BODY_BYTES``): a client that stalls or trickles is answered 408 (or dropped, if its
headers never end), one that announces a larger body 413, and no client holds a thread longer.

Run it as ``python -m ops_lib.demo.receiver --port N`` with ``DATABASE_URL`` and
``STRIPE_WEBHOOK_SECRETS`` (comma-separated) in the environment, never on the command line,
where ``ps`` would show them. Once listening it prints its endpoint URL on stdout; it logs one
line per delivery to stderr, without secrets or bodies.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import sqlalchemy_url
from ..errors import EXIT_INVALID
from ..stripe_emulator.server import QuietHangUps
from ..webhooks.signature import HEADER, SignatureError, verify

ENDPOINT_PATH = "/stripe/webhook"
APPLICATION_NAME = "demo-app/webhooks"
MAX_BODY_BYTES = 1 << 20  # Stripe events are a few kB; anything near this is not one
READ_TIMEOUT_S = 10.0  # the whole request (line, headers, body) must arrive within this

log = logging.getLogger("opsbook.demo.webhooks")


class FulfilmentError(Exception):
    """An authentic event the app cannot fulfil as things stand; a re-delivery may, once fixed."""


@dataclass(frozen=True)
class Delivery:
    """What became of one POST: the HTTP answer, and what the log line says."""

    http_status: int
    outcome: str  # rejected | processed | duplicate | failed | error
    detail: str = ""
    event_id: str | None = None
    event_type: str | None = None

    def response_body(self) -> bytes:
        if self.http_status < 300:
            return json.dumps({"received": True, "outcome": self.outcome}).encode()
        return json.dumps({"error": self.detail}).encode()

    def log_line(self, client: str, elapsed_ms: float) -> str:
        event = f"{self.event_id} {self.event_type}" if self.event_id else "-"
        return f"{client} {event} -> {self.http_status} {self.outcome}: {self.detail} ({elapsed_ms:.0f} ms)"


# --------------------------------------------------------------------------- fulfilment


def fulfil(conn: Connection, event: dict[str, Any]) -> str:
    """Do what the app owes for this event; returns what was done, in words."""
    handler = _FULFILMENT.get(event["type"])
    return handler(conn, event) if handler else "ignored (not an event the app acts on)"


def _fulfil_checkout_session(conn: Connection, event: dict[str, Any]) -> str:
    session = event["data"]["object"]
    if session.get("payment_status") != "paid":
        # A delayed payment method completes the session unpaid; Stripe then sends
        # checkout.session.async_payment_succeeded, which is fulfilled here instead.
        return f"nothing to fulfil yet (payment_status {session.get('payment_status')})"
    customer = session.get("customer")
    if isinstance(customer, dict):  # expanded
        customer = customer.get("id")
    if not customer:
        raise FulfilmentError(f"checkout session {session.get('id')} has no customer")
    organization_id = conn.execute(
        sa.text("SELECT id FROM organizations WHERE stripe_customer_id = :customer"),
        {"customer": customer},
    ).scalar()
    if organization_id is None:
        raise FulfilmentError(f"no organization for customer {customer}")
    credits = _credits(session)
    # The unique stripe_event_id makes these no-ops should the event's lock ever be bypassed.
    conn.execute(
        sa.text(
            "INSERT INTO orders (organization_id, stripe_event_id, stripe_checkout_session_id,"
            " stripe_payment_intent_id, amount, currency, status)"
            " VALUES (:organization_id, :event_id, :session_id, :payment_intent, :amount, :currency, 'paid')"
            " ON CONFLICT (stripe_event_id) DO NOTHING"
        ),
        {
            "organization_id": organization_id,
            "event_id": event["id"],
            "session_id": session["id"],
            "payment_intent": _id_of(session.get("payment_intent")),
            "amount": session["amount_total"],
            "currency": session["currency"],
        },
    )
    if not credits:
        return f"order for organization {organization_id}"
    conn.execute(
        sa.text(
            "INSERT INTO credit_grants (organization_id, stripe_event_id, credits)"
            " VALUES (:organization_id, :event_id, :credits)"
            " ON CONFLICT (stripe_event_id) DO NOTHING"
        ),
        {"organization_id": organization_id, "event_id": event["id"], "credits": credits},
    )
    return f"order and {credits} credits for organization {organization_id}"


def _acknowledge_invoice_paid(conn: Connection, event: dict[str, Any]) -> str:
    # Subscriptions are kept in sync from customer.subscription.* events; a paid invoice
    # needs no fulfilment of its own, only an acknowledgement.
    return "nothing to fulfil"


_FULFILMENT: dict[str, Callable[[Connection, dict[str, Any]], str]] = {
    "checkout.session.completed": _fulfil_checkout_session,
    "checkout.session.async_payment_succeeded": _fulfil_checkout_session,
    "invoice.paid": _acknowledge_invoice_paid,
}


def _credits(session: dict[str, Any]) -> int | None:
    raw = (session.get("metadata") or {}).get("credits")
    if raw is None or raw == "":
        return None
    if not re.fullmatch(r"[0-9]{1,9}", str(raw).strip()):
        raise FulfilmentError(f"metadata.credits is not a whole number of credits: {raw!r}")
    return int(raw)


def _id_of(value: Any) -> str | None:
    return value.get("id") if isinstance(value, dict) else value


# --------------------------------------------------------------------------- the endpoint


class WebhookApp:
    """The endpoint's behaviour, apart from HTTP: verify, record, fulfil once."""

    def __init__(self, database_url: str, secrets: Sequence[str]):
        self.secrets = [secrets] if isinstance(secrets, str) else list(secrets)
        if not self.secrets or any(not secret.strip() for secret in self.secrets):
            raise ValueError("the webhook receiver needs its signing secrets (whsec_...), none of them empty")
        self.engine = sa.create_engine(
            sqlalchemy_url(database_url),
            connect_args={
                "application_name": APPLICATION_NAME,
                # A delivery must never hang: Stripe gives up waiting and retries anyway.
                "options": "-c statement_timeout=10000 -c lock_timeout=5000",
                "connect_timeout": 5,
            },
            pool_size=5,
            max_overflow=5,
            pool_pre_ping=True,
        )

    def close(self) -> None:
        self.engine.dispose()

    def deliver(self, body: bytes, signature_header: str | None) -> Delivery:
        try:
            verify(body, signature_header, self.secrets)
        except SignatureError as err:
            return Delivery(400, "rejected", err.reason)
        try:
            raw_body = body.decode("utf-8")
            event = json.loads(raw_body)
            event_id, event_type = event["id"], event["type"]
            if not (isinstance(event_id, str) and event_id and isinstance(event_type, str)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return Delivery(400, "rejected", "the body is not a Stripe event")
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO webhook_events (stripe_event_id, type, status, raw_body, signature_header)"
                    " VALUES (:event_id, :type, 'received', :raw_body, :signature_header)"
                    " ON CONFLICT (stripe_event_id) DO NOTHING"
                ),
                {"event_id": event_id, "type": event_type, "raw_body": raw_body, "signature_header": signature_header},
            )
        return self._fulfil_once(event, raw_body, signature_header)

    def _fulfil_once(self, event: dict[str, Any], raw_body: str, signature_header: str | None) -> Delivery:
        event_id, event_type = event["id"], event["type"]
        with self.engine.begin() as conn:
            # The row lock serialises deliveries of one event: a second waits, then sees 'processed'.
            status = conn.execute(
                sa.text("SELECT status FROM webhook_events WHERE stripe_event_id = :event_id FOR UPDATE"),
                {"event_id": event_id},
            ).scalar_one()
            if status == "processed":
                return Delivery(200, "duplicate", "already processed", event_id, event_type)
            try:
                with conn.begin_nested():  # a failed fulfilment leaves no partial order behind
                    done = fulfil(conn, event)
            except FulfilmentError as err:
                error = str(err)
            except Exception as err:  # a bug or bad data: recorded like any failure, traceback logged
                log.exception("fulfilling %s %s raised", event_id, event_type)
                error = _describe(err)
            else:
                conn.execute(
                    sa.text(
                        "UPDATE webhook_events SET status = 'processed', error = NULL, processed_at = now(),"
                        " raw_body = :raw_body, signature_header = :signature_header WHERE stripe_event_id = :event_id"
                    ),
                    # body and header as last verified, so a stored delivery always verifies as a pair
                    {"event_id": event_id, "raw_body": raw_body, "signature_header": signature_header},
                )
                return Delivery(200, "processed", done, event_id, event_type)
            conn.execute(
                sa.text(
                    "UPDATE webhook_events SET status = 'failed', error = :error,"
                    " raw_body = :raw_body, signature_header = :signature_header WHERE stripe_event_id = :event_id"
                ),
                {"event_id": event_id, "error": error, "raw_body": raw_body, "signature_header": signature_header},
            )
            return Delivery(500, "failed", error, event_id, event_type)


def _describe(err: Exception) -> str:
    # A driver error's own message, without SQLAlchemy's echo of the statement and parameters.
    cause = getattr(err, "orig", None) or err
    first_line = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {first_line}"[:500]


class _DeadlineReader(io.RawIOBase):
    """A connection's bytes, every read bounded by what is left until one deadline.

    A socket timeout bounds each read, so a client that sends a byte now and then, or declares
    more body than it sends, would hold a handler thread for as long as it likes; reading the
    request through this ends it at the deadline whatever the client does.
    """

    def __init__(self, sock: socket.socket, deadline: float):
        super().__init__()
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


def make_app_handler(database_url: str, secrets: Sequence[str],
                     read_timeout: float = READ_TIMEOUT_S) -> type[BaseHTTPRequestHandler]:
    """A request handler class for the endpoint, with its own connection pool (``webhook_app``).

    A request must arrive whole (line, headers and body) within `read_timeout` seconds, and
    its body may not exceed MAX_BODY_BYTES: no client can hold a thread or fill the memory.
    """
    app = WebhookApp(database_url, secrets)

    class StripeWebhookHandler(BaseHTTPRequestHandler):
        webhook_app = app
        server_version = "demo-app"
        sys_version = ""
        timeout = read_timeout  # also bounds writing the answer to a client that does not read it

        def setup(self) -> None:
            super().setup()
            self.rfile = io.BufferedReader(_DeadlineReader(self.connection, time.monotonic() + read_timeout))

        def do_POST(self) -> None:
            started = time.monotonic()
            if self.path.split("?", 1)[0] != ENDPOINT_PATH:
                self._answer(404, {"error": f"no endpoint at {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._answer(411, {"error": "a Content-Length is required"})
                return
            if length < 0:
                self._answer(400, {"error": "the Content-Length is negative"})
                return
            if length > MAX_BODY_BYTES:
                self._answer(413, {"error": f"the body is larger than {MAX_BODY_BYTES} bytes"})
                return
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                self._answer(408, {"error": f"the body did not arrive within {read_timeout:g} s"})
                log.warning("%s -> 408: the body did not arrive within %g s", self.client_address[0], read_timeout)
                return
            if len(body) < length:
                self._answer(400, {"error": "the body ended before its Content-Length"})
                return
            try:
                delivery = self.webhook_app.deliver(body, self.headers.get(HEADER))
            except Exception:
                log.exception("webhook delivery could not be handled")
                delivery = Delivery(500, "error", "the app could not handle the delivery")
            # Logged before answering: once the sender has its answer, the line is written.
            log.info("%s", delivery.log_line(self.client_address[0], (time.monotonic() - started) * 1000))
            self._send(delivery.http_status, delivery.response_body())

        def do_GET(self) -> None:
            if self.path == "/health":
                self._answer(200, {"ok": True})
            else:
                self._answer(404, {"error": f"no endpoint at {self.path}"})

        def _answer(self, status: int, document: dict) -> None:
            self._send(status, json.dumps(document).encode())

        def _send(self, status: int, body: bytes) -> None:
            self.connection.settimeout(read_timeout)  # reading may have left it nearly spent
            self.close_connection = True
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Deliveries log their own line; this only sees protocol errors (bad request lines).
            log.warning("%s %s", self.client_address[0], format % args)

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

    return StripeWebhookHandler


class WebhookServer(QuietHangUps, ThreadingHTTPServer):
    # Stripe delivers concurrently; the default backlog of 5 makes extra connections wait
    # for a SYN retry (a second or more).
    request_queue_size = 64


def endpoint_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}{ENDPOINT_PATH}"


def start_receiver(
    database_url: str, secrets: Sequence[str], port: int = 0, read_timeout: float = READ_TIMEOUT_S
) -> tuple[WebhookServer, threading.Thread, str]:
    """Serve the endpoint on 127.0.0.1 from a background thread; port 0 picks a free one."""
    handler = make_app_handler(database_url, secrets, read_timeout)
    try:
        server = WebhookServer(("127.0.0.1", port), handler)
    except OSError:
        handler.webhook_app.close()
        raise
    # A short poll interval so that stop_receiver returns promptly.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="demo-app-webhooks", daemon=True)
    thread.start()
    return server, thread, endpoint_url(server)


def stop_receiver(server: ThreadingHTTPServer) -> None:
    """Stop serving, wait for deliveries in flight, and close the connection pool."""
    server.shutdown()
    server.server_close()
    server.RequestHandlerClass.webhook_app.close()


def secrets_from_env(value: str | None) -> list[str]:
    return [s.strip() for s in (value or "").split(",") if s.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops_lib.demo.receiver",
        description="The demo app's Stripe webhook endpoint. Reads DATABASE_URL and "
        "STRIPE_WEBHOOK_SECRETS (comma-separated, old and new while rolling) from the environment.",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s webhooks %(message)s")

    database_url = os.environ.get("DATABASE_URL")
    secrets = secrets_from_env(os.environ.get("STRIPE_WEBHOOK_SECRETS"))
    if not database_url:
        print("receiver: DATABASE_URL is not set", file=sys.stderr)
        return EXIT_INVALID
    if not secrets:
        print("receiver: STRIPE_WEBHOOK_SECRETS is not set (the endpoint's whsec_... secrets, comma-separated)",
              file=sys.stderr)
        return EXIT_INVALID

    handler = make_app_handler(database_url, secrets)
    try:
        server = WebhookServer(("127.0.0.1", args.port), handler)
    except OSError as err:
        handler.webhook_app.close()
        print(f"receiver: cannot listen on 127.0.0.1:{args.port}: {err.strerror}", file=sys.stderr)
        return EXIT_INVALID
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    url = endpoint_url(server)
    print(url, flush=True)
    log.info("listening on %s with %d signing secret(s)", url, len(secrets))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        handler.webhook_app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
