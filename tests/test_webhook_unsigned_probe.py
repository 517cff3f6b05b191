"""endpoint_accepts_unsigned: an opt-in probe, planned by default, audited when sent."""
from __future__ import annotations

import http.server

import pytest

from ops_lib.audit import AuditLog
from ops_lib.demo import lifecycle
from ops_lib.webhooks.unsigned import ACTION, endpoint_accepts_unsigned

from .faulty_http import serving


class _Careless(http.server.BaseHTTPRequestHandler):
    """An endpoint that processes whatever it is sent (the incident)."""
    seen: list = []

    def do_POST(self):
        _Careless.seen.append(dict(self.headers))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def careless_url():
    with serving(_Careless) as url:
        yield f"{url}/stripe/webhook"


def test_an_endpoint_that_accepts_unsigned_deliveries_is_named_and_the_probe_audited(careless_url, tmp_path):
    _Careless.seen.clear()
    audit = AuditLog("run-1", "webhook_failure", "db", path=tmp_path / "audit.jsonl")
    dry = endpoint_accepts_unsigned(careless_url, audit=audit)
    assert dry.finding.severity == "ok" and "Not probed" in dry.finding.title
    assert [(a.action, a.applied) for a in dry.actions] == [(ACTION, False)]
    assert _Careless.seen == [] and audit.entries() == [], "never on by default"

    sent = endpoint_accepts_unsigned(careless_url, enabled=True, run_id="run-1", audit=audit, reason="incident 7")
    assert sent.finding.severity == "critical" and sent.finding.items == [careless_url]
    assert len(_Careless.seen) == 1 and "Stripe-Signature" not in _Careless.seen[0]
    [entry] = audit.entries()
    assert entry["action"] == ACTION and entry["applied"] and entry["reason"] == "incident 7"
    assert entry["outcome"] == "answered HTTP 200"


def test_the_demo_app_refuses_an_unsigned_delivery(demo, tmp_path):
    url = lifecycle.target_of(demo).webhook_url
    audit = AuditLog("run-2", "webhook_failure", "db", path=tmp_path / "audit.jsonl")
    probe = endpoint_accepts_unsigned(url, enabled=True, run_id="run-2", audit=audit)
    assert probe.finding.severity == "ok" and "HTTP 400" in probe.finding.title
    assert len(audit.entries()) == 1
    assert endpoint_accepts_unsigned(None, enabled=True).finding.severity == "ok"
    gone = endpoint_accepts_unsigned("http://127.0.0.1:9/hook", enabled=True, timeout_s=2)
    assert gone.finding.severity == "info"


class _DrippingStatusLine:
    """An endpoint that sends its status line one byte every 0.2 s (a minute in all): each read
    gets a byte well within any per-read timeout."""

    def __init__(self):
        import socket
        import threading

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/stripe/webhook"
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.listener.accept()
        with conn:
            answer = b"HTTP/1.1 200 OK" + b" " * 300 + b"\r\nContent-Length: 0\r\n\r\n"
            for i in range(len(answer)):
                if self.closing.wait(0.2):
                    return
                try:
                    conn.sendall(answer[i:i + 1])
                except OSError:
                    return

    def close(self):
        self.closing.set()
        self.listener.close()
        self.thread.join(5)


def test_the_probe_gives_up_after_its_timeout_on_an_endpoint_that_drips(tmp_path):
    import time

    server = _DrippingStatusLine()
    try:
        started = time.monotonic()
        probe = endpoint_accepts_unsigned(server.url, enabled=True, run_id="run-3", timeout_s=1)
        assert time.monotonic() - started < 4, "timeout_s bounds the request, not each read"
        assert probe.finding.severity == "info" and "did not answer" in probe.finding.title
    finally:
        server.close()
