"""service_health: each check on a real target piece (a scratch database, local HTTP and TLS
servers, the Stripe emulator), and the runbook on the demo finding exactly what was planted."""
from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ops_lib import runner
from ops_lib.db import make_engine
from ops_lib.demo import lifecycle
from ops_lib.findings import Finding
from ops_lib.health import certificates, database, endpoint, migrations, stripe_check
from ops_lib.schema_map import SchemaMap
from ops_lib.stripe_emulator import new_state, start_emulator, stop_emulator, write_state

from .faulty_http import faulty_server, serving  # noqa: F401  (faulty_server: a fixture)

REPO = Path(__file__).resolve().parent.parent
MAPPING = SchemaMap.load(REPO / "params" / "schema" / "reference.yaml")
CHECKS = ("health_endpoint_down", "database_slow_to_answer", "replication_lag", "wal_archiving_failing",
          "migrations_not_applied", "stripe_unreachable", "certificate_expiring")
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- the runbook on the demo


def test_the_runbook_finds_exactly_the_planted_incidents(demo, tmp_path):
    record = runner.run("service_health", outputs=tmp_path).record
    assert record["status"] == "findings", record.get("error")
    assert set(CHECKS) <= {c["check"] for c in record["checks"]}, "every check ran"
    found = {f["check"]: f for f in record["findings"]}
    problems = {c: sorted(f["items"]) for c, f in found.items() if f["severity"] != "ok"}
    assert problems == lifecycle.planted()["service_health"]
    # the controls in the same table: failed, rolled back and applied again — not named
    assert "20251020090000_credit_grants" not in found["migrations_not_applied"]["items"]
    assert 'contains null values' in found["migrations_not_applied"]["rows"][0]["logs"]


# --------------------------------------------------------------------------- health endpoint


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status = 503 if self.path.startswith("/down") else 200
        body = b'{"status":"db unreachable"}' if status == 503 else b'{"status":"ok"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    with serving(_Handler) as url:
        yield url


def test_health_endpoint_down(http_server):
    down = endpoint.health_endpoint_down(f"{http_server}/down?token=abc", timeout_s=2)
    assert down.severity == "critical" and "HTTP 503" in down.title
    assert down.items == [f"{http_server}/down?***"], "a query string may hold a token: never shown"
    assert down.rows[0]["answer"] == '{"status":"db unreachable"}'
    assert endpoint.health_endpoint_down(f"{http_server}/healthz", timeout_s=2).severity == "ok"
    assert endpoint.health_endpoint_down("http://127.0.0.1:9/healthz", timeout_s=2).severity == "critical"
    assert endpoint.health_endpoint_down(None).severity == "ok"
    assert endpoint.health_url("", {"OPSBOOK_HEALTH_URL": "http://x/h"}) == "http://x/h"
    assert endpoint.health_url("http://y/h", {"OPSBOOK_HEALTH_URL": "http://x/h"}) == "http://y/h"


# --------------------------------------------------------------------------- database


def test_database_checks_on_a_real_server(database18):
    engine = make_engine(database18.url)
    try:
        with engine.connect() as conn:
            assert database.database_slow_to_answer(conn, warn_ms=10_000).severity == "ok"
            slow = database.database_slow_to_answer(conn, warn_ms=0)
            assert slow.severity == "warning" and slow.rows[0]["samples"] == 5
            data = database.replication_rows(conn)
            assert data == {"role": "primary", "rows": []}
            assert database.replication_lag(data).severity == "ok"
            status = database.archiver_status(conn)
            assert status["archive_mode"] == "off"
            assert database.wal_archiving_failing(status).severity == "ok"
    finally:
        engine.dispose()


def test_replication_lag_names_lagging_and_broken_standbys():
    rows = [{"application_name": "replica-a", "state": "streaming", "replay_lag_s": 0.4},
            {"application_name": "replica-b", "state": "streaming", "replay_lag_s": 300.0},
            {"application_name": "replica-c", "state": "catchup", "replay_lag_s": None}]
    found = database.replication_lag({"role": "primary", "rows": rows}, warn_seconds=60)
    assert found.severity == "warning" and found.items == ["replica-b", "replica-c"]
    assert database.replication_lag({"role": "primary", "rows": rows[:1]}).severity == "ok"


def test_wal_archiving_failing_reads_pg_stat_archiver():
    ok = {"archive_mode": "on", "last_archived_wal": "0000000100000000000000A1", "last_archived_time": NOW - timedelta(minutes=5),
          "last_failed_wal": "0000000100000000000000A0", "last_failed_time": NOW - timedelta(hours=2), "failed_count": 3}
    assert database.wal_archiving_failing(ok, now=NOW).severity == "ok", "an old failure, archived since"
    failing = {**ok, "last_failed_wal": "0000000100000000000000A2", "last_failed_time": NOW - timedelta(minutes=1)}
    found = database.wal_archiving_failing(failing, now=NOW)
    assert found.severity == "critical" and found.items == ["0000000100000000000000A2"]
    silent = {**ok, "last_archived_time": NOW - timedelta(hours=30), "last_failed_time": None}
    assert database.wal_archiving_failing(silent, now=NOW, max_silence_hours=24).severity == "warning"


# --------------------------------------------------------------------------- migrations


PRISMA = """
CREATE TABLE _prisma_migrations (id text PRIMARY KEY, checksum text NOT NULL, finished_at timestamptz,
    migration_name text NOT NULL, logs text, rolled_back_at timestamptz, started_at timestamptz NOT NULL DEFAULT now(),
    applied_steps_count int NOT NULL DEFAULT 0);
INSERT INTO _prisma_migrations (id, checksum, migration_name, finished_at, rolled_back_at, logs) VALUES
  ('1', 'c', '001_init', now(), NULL, NULL),
  ('2', 'c', '002_failed_then_fixed', NULL, NULL, 'boom'),
  ('3', 'c', '002_failed_then_fixed', now(), NULL, NULL),
  ('4', 'c', '003_rolled_back', NULL, now(), 'undone'),
  ('5', 'c', '004_failed', NULL, NULL, 'ERROR: <b>column</b> contains null values');
"""


def test_migrations_not_applied(database18):
    with database18.admin.connect() as conn:
        conn.exec_driver_sql(PRISMA)
    engine = make_engine(database18.url)
    try:
        with engine.connect() as conn:
            found = migrations.migrations_not_applied(conn, MAPPING)
            assert found.severity == "critical" and found.items == ["004_failed"]
            assert found.rows[0]["logs"] == "ERROR: <b>column</b> contains null values"
            found = migrations.migrations_not_applied(conn, MAPPING, expected=["001_init", "005_not_deployed", "004_failed"])
            assert found.items == ["004_failed", "005_not_deployed"]
            unmapped = SchemaMap(MAPPING.path, {k: v for k, v in MAPPING.entities.items() if k != "migrations"})
            assert "Not checked" in migrations.migrations_not_applied(conn, unmapped).title
            conn.rollback()
        database18.execute("DELETE FROM _prisma_migrations WHERE id = '5'")
        with engine.connect() as conn:
            assert migrations.migrations_not_applied(conn, MAPPING).severity == "ok"
    finally:
        engine.dispose()


def test_the_health_check_gives_up_after_its_timeout_on_an_answer_that_drips(faulty_server):
    import time

    dripping = faulty_server("drip", drip_interval=0.05)  # the whole answer would take ~55 s
    started = time.monotonic()
    down = endpoint.health_endpoint_down(f"{dripping.url}/health", timeout_s=1)
    assert time.monotonic() - started < 4, "health_timeout_seconds bounds the request, not each read"
    assert down.severity == "critical" and "within 1 s" in down.title


def test_a_dripping_health_endpoint_is_a_critical_finding_and_the_later_checks_still_run(demo, tmp_path,
                                                                                         faulty_server):
    dripping = faulty_server("drip", drip_interval=1.0)
    result = runner.run("service_health", overrides=[("health_url", f"{dripping.url}/health"),
                                                     ("health_timeout_seconds", 2)], outputs=tmp_path, timeout=40)
    record = result.record
    assert record["status"] == "findings", record.get("error")
    assert set(CHECKS) <= {c["check"] for c in record["checks"]}, "every check after it ran"
    found = {f["check"]: f for f in record["findings"]}
    assert found["health_endpoint_down"]["severity"] == "critical"
    assert record["duration_s"] < 40


# --------------------------------------------------------------------------- Stripe


def test_stripe_unreachable(tmp_path):
    key = "sk_test_health" + "0" * 20
    state = tmp_path / "stripe.json"
    write_state(state, new_state([key]))
    server, thread, api_base = start_emulator(state)
    try:
        ok = stripe_check.stripe_unreachable(key, api_base)
        assert ok.severity == "ok" and "emulator" in ok.title
        rejected = stripe_check.stripe_unreachable("sk_test_other" + "1" * 20, api_base)
        assert rejected.severity == "critical" and "rejected" in rejected.title
        assert "1111111111" not in str(rejected.to_dict())
    finally:
        stop_emulator(server, thread)
    gone = stripe_check.stripe_unreachable(key, api_base, timeout_s=3)
    assert gone.severity == "critical"
    wrong = stripe_check.stripe_unreachable("sk_live_" + "2" * 24, "https://api.stripe.com", expected_mode="test")
    assert wrong.severity == "critical" and "live-mode" in wrong.title and "2222222222" not in str(wrong.to_dict())
    assert stripe_check.stripe_unreachable(None).severity == "ok"


# --------------------------------------------------------------------------- certificates


class _QuietTLSServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # (a client refusing the certificate ends the handshake: expected here, not news)


def _tls_server(tmp_path: Path, name: str, days: int):
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", str(days), "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = _QuietTLSServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"https://localhost:{server.server_address[1]}/healthz", cert


class _SlowTLSServer:
    """A TLS server (a self-signed certificate: it does not verify) that waits ``delay`` seconds
    before each handshake; every connection on a thread of its own."""

    def __init__(self, tmp_path: Path, delay: float):
        import socket

        cert, key = tmp_path / "slow.pem", tmp_path / "slow.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "400", "-subj", "/CN=localhost"], check=True, capture_output=True)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.closing = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.closing.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            thread = threading.Thread(target=self._handshake, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _handshake(self, conn):
        with conn:
            if self.closing.wait(self.delay):
                return
            try:
                conn.settimeout(5)
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except OSError:
                pass  # (the client refusing the certificate, or giving up: expected here)

    def close(self):
        self.closing.set()
        for thread in self.threads:
            thread.join(6)
        self.listener.close()


def test_a_certificate_check_takes_no_longer_than_its_timeout_in_all(tmp_path):
    import time

    # Each handshake alone is within the timeout; the certificate does not verify, so the check
    # connects twice (the second time to read its date): 2 × 1.5 s without a budget for both.
    server = _SlowTLSServer(tmp_path, delay=1.5)
    try:
        started = time.monotonic()
        found = certificates.certificate_expiring([f"https://127.0.0.1:{server.port}/"], timeout_s=2)
        assert time.monotonic() - started < 2.7, "timeout_s bounds the whole check of a URL"
        assert found.severity == "critical" and "within 2 s" in found.rows[0]["problem"]
    finally:
        server.close()


def test_certificate_expiring_on_real_tls_servers(tmp_path):
    soon, soon_url, soon_cert = _tls_server(tmp_path, "soon", 10)
    later, later_url, later_cert = _tls_server(tmp_path, "later", 400)
    bundle = tmp_path / "ca.pem"
    bundle.write_text(soon_cert.read_text() + later_cert.read_text())
    try:
        urls = certificates.https_urls(soon_url, "http://127.0.0.1:1/plain", None, extra=[later_url, soon_url])
        assert urls == [soon_url, later_url]
        found = certificates.certificate_expiring(urls, warn_days=21, cafile=str(bundle))
        assert found.severity == "warning" and found.items == [soon_url]
        assert 9 <= found.rows[0]["days_left"] <= 10
        assert certificates.certificate_expiring(urls, warn_days=5, cafile=str(bundle)).severity == "ok"
        assert certificates.certificate_expiring(urls, warn_days=30, critical_days=15, cafile=str(bundle)).severity == "critical"
        unverified = certificates.certificate_expiring([later_url], warn_days=21)  # self-signed: not in the system store
        assert unverified.severity == "critical" and "does not verify" in unverified.rows[0]["problem"]
        assert unverified.rows[0]["days_left"] is None or unverified.rows[0]["days_left"] > 300
    finally:
        for server in (soon, later):
            server.shutdown()
            server.server_close()
    assert certificates.certificate_expiring([]).severity == "ok"
    assert isinstance(certificates.certificate_expiring(["https://127.0.0.1:9/"], timeout_s=2), Finding)
