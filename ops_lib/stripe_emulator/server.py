"""The emulator's HTTP server: Stripe's authentication, version pin, errors and faults.

Every /v1 request goes through, in order: the request counter, a switchable fault, the API key
(`Authorization: Bearer <key>`, one of the state's `api_keys`), the `Stripe-Version` pin
(2023-08-16: the shapes the objects have), routing, and a restricted key's permissions.

Control endpoints for tests and the demo (no key needed, 127.0.0.1 only):
    GET    /_emulator/health      object counts per type
    GET    /_emulator/requests    {path: number of requests}     DELETE resets it
    GET    /_emulator/faults      the active faults
    POST   /_emulator/faults      {"status": 401|403|429|500, "count": N or null,
                                   "path_prefix": "/v1/events"}   (prefix optional)
    DELETE /_emulator/faults      clear every fault (the state file's until it next changes)
A fault answers the next `count` matching requests (null: until cleared) with that status, the
way Stripe does for a revoked key, a restricted key, rate limiting or an outage.
"""
from __future__ import annotations

import json
import os
import random
import string
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from .api import Account, ApiError, list_objects, parse_query, retrieve_object, route
from .objects import API_VERSION
from .state import read_state
from .store import SqliteAccount, is_sqlite_state, read_sqlite_meta

ACCOUNT_ID = "acct_1NnlkGGPxmnHQRkJ"
FAULT_STATUSES = (401, 403, 429, 500)


def stripe_masked_key(key: str) -> str:
    """How Stripe quotes a key back: its prefix and last four characters (sk_test_****abcd)."""
    prefix = ""
    for candidate in ("sk_test_", "sk_live_", "rk_test_", "rk_live_", "pk_test_", "pk_live_"):
        if key.startswith(candidate):
            prefix = candidate
    return f"{prefix}****{key[-4:]}" if len(key) > len(prefix) + 4 else f"{prefix}****"


class Emulator:
    """The account served from a state file (JSON, or SQLite: store.py), reloaded whenever the
    file changes."""

    def __init__(self, state_path: str | os.PathLike):
        self.state_path = Path(state_path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self.account = Account({})
        self.api_keys: dict[str, frozenset[str] | None] = {}
        self._file_faults: list[dict[str, Any]] = []
        self._posted_faults: list[dict[str, Any]] = []
        self.requests: Counter[str] = Counter()
        self.reload_if_changed()

    # -- state

    def reload_if_changed(self) -> None:
        st = os.stat(self.state_path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        if is_sqlite_state(self.state_path):  # a benchmark's account: read in place (store.py)
            state = read_sqlite_meta(self.state_path)
            account: Account = SqliteAccount(self.state_path, state)
        else:
            state = read_state(self.state_path)
            account = Account(state["objects"])
        api_keys = _parse_api_keys(state.get("api_keys", []))
        faults = [_parse_fault(f) for f in state.get("faults") or []]
        with self._lock:
            self.account, self.api_keys, self._file_faults = account, api_keys, faults
            self._stamp = stamp

    # -- faults

    def add_fault(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        fault = _parse_fault(spec)
        with self._lock:
            self._posted_faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._posted_faults.clear()
            self._file_faults.clear()

    def active_faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(f) for f in self._posted_faults + self._file_faults]

    def _take_fault(self, path: str) -> dict[str, Any] | None:
        with self._lock:
            for faults in (self._posted_faults, self._file_faults):
                for fault in faults:
                    if path.startswith(fault["path_prefix"]):
                        if fault["count"] is not None:
                            fault["count"] -= 1
                            if fault["count"] == 0:
                                faults.remove(fault)
                        return fault
        return None

    # -- requests

    def handle(self, method: str, target: str, headers: Mapping[str, str],
               body: bytes) -> tuple[int, Any]:
        """Answer one request: (HTTP status, JSON body)."""
        url = urlsplit(target)
        if url.path.startswith("/_emulator/"):
            return self._control(method, url.path, body)
        with self._lock:
            self.requests[url.path] += 1
        try:
            try:
                self.reload_if_changed()
            except (OSError, ValueError) as exc:  # a half-edited file: keep serving the last one
                raise ApiError(500, f"The emulator's state file {self.state_path} cannot be "
                                    f"loaded: {exc}", type="api_error") from exc
            return 200, self._stripe(method, url.path, url.query, headers)
        except ApiError as error:
            return error.status, error.body()
        except Exception as exc:  # an emulator bug: answer like Stripe's 500, not a dropped socket
            return 500, ApiError(500, f"The Stripe emulator failed: {exc!r}", type="api_error").body()

    def _stripe(self, method: str, path: str, query: str, headers: Mapping[str, str]) -> Any:
        key = _bearer_key(headers.get("Authorization"))
        fault = self._take_fault(path)
        if fault is not None:
            raise _fault_error(fault["status"], key, path)
        if key is None:
            raise ApiError(401, "You did not provide an API key. You need to provide your API "
                                "key in the Authorization header, using Bearer auth (e.g. "
                                "'Authorization: Bearer YOUR_SECRET_KEY'). See "
                                "https://stripe.com/docs/api#authentication for details, or we "
                                "can help at https://support.stripe.com/.")
        if key not in self.api_keys:
            raise ApiError(401, f"Invalid API Key provided: {stripe_masked_key(key)}")
        version = headers.get("Stripe-Version")
        if version != API_VERSION:
            asked = f"asked for version {version!r}" if version else "has no Stripe-Version header"
            raise ApiError(400, f"This Stripe emulator answers in the shapes of API version "
                                f"{API_VERSION} only, and the request {asked}. Pin the version: "
                                f"stripe.StripeClient(key, stripe_version=\"{API_VERSION}\").",
                           param="Stripe-Version")
        routed = route(path)
        if routed is None or method != "GET":
            raise ApiError(404, f"Unrecognized request URL ({method}: {path}). The Stripe "
                                "emulator serves GET list and retrieve requests only; please see "
                                "https://stripe.com/docs or we can help at "
                                "https://support.stripe.com/.")
        collection, object_id = routed
        permissions = self.api_keys[key]
        if permissions is not None and collection.object_type not in permissions:
            raise _permission_error(key, collection.object_type)
        params = parse_query(query)
        if object_id is None:
            return list_objects(self.account, collection, params)
        return retrieve_object(self.account, collection, object_id, params)

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        name = path.removeprefix("/_emulator/")
        if (method, name) == ("GET", "health"):
            return 200, {"ok": True, "api_version": API_VERSION, "state": str(self.state_path),
                         "objects": self.account.counts()}
        if (method, name) == ("GET", "requests"):
            with self._lock:
                return 200, dict(self.requests)
        if (method, name) == ("DELETE", "requests"):
            with self._lock:
                self.requests.clear()
            return 200, {}
        if (method, name) == ("GET", "faults"):
            return 200, {"faults": self.active_faults()}
        if (method, name) == ("POST", "faults"):
            try:
                fault = self.add_fault(json.loads(body or b"{}"))
            except (ValueError, TypeError) as exc:
                return 400, {"error": {"type": "invalid_request_error", "message": str(exc)}}
            return 200, {"fault": fault, "faults": self.active_faults()}
        if (method, name) == ("DELETE", "faults"):
            self.clear_faults()
            return 200, {"faults": []}
        return 404, {"error": {"type": "invalid_request_error",
                               "message": f"Unknown emulator endpoint {method} {path}"}}


def _parse_api_keys(entries: Any) -> dict[str, frozenset[str] | None]:
    keys: dict[str, frozenset[str] | None] = {}
    for entry in entries:
        if isinstance(entry, str):
            keys[entry] = None
        elif isinstance(entry, dict) and isinstance(entry.get("key"), str):
            keys[entry["key"]] = frozenset(entry.get("permissions") or ())
        else:
            raise ValueError('api_keys entries are key strings or '
                             '{"key": ..., "permissions": [object types]}')
    return keys


def _parse_fault(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise ValueError("a fault is a JSON object: {\"status\": 500, \"count\": 1}")
    unknown = set(spec) - {"status", "count", "path_prefix"}
    if unknown:
        raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
    status, count = spec.get("status"), spec.get("count")
    path_prefix = spec.get("path_prefix") or "/v1/"
    if status not in FAULT_STATUSES:
        raise ValueError(f"fault status must be one of {FAULT_STATUSES}, not {status!r}")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise ValueError(f"fault count must be a positive integer or null, not {count!r}")
    if not isinstance(path_prefix, str) or not path_prefix.startswith("/v1"):
        raise ValueError(f"fault path_prefix must start with /v1, not {path_prefix!r}")
    return {"status": status, "count": count, "path_prefix": path_prefix}


def _bearer_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return key.strip() or None


def _permission_error(key: str, object_type: str) -> ApiError:
    permission = f"rak_{object_type.replace('.', '_')}_read"
    return ApiError(403, f"The provided key '{stripe_masked_key(key)}' does not have the required "
                         f"permissions for this endpoint on account '{ACCOUNT_ID}'. Having the "
                         f"'{permission}' permission would allow this request to continue.")


def _fault_error(status: int, key: str | None, path: str) -> ApiError:
    if status == 401:
        return ApiError(401, f"Invalid API Key provided: {stripe_masked_key(key or '')}")
    if status == 403:
        routed = route(path)
        return _permission_error(key or "", routed[0].object_type if routed else "resource")
    if status == 429:
        return ApiError(429, "Request rate limit exceeded. Learn more about rate limits here "
                             "https://stripe.com/docs/rate-limits.", code="rate_limit")
    return ApiError(500, "An unknown error occurred", type="api_error")


def _request_id() -> str:
    return "req_" + "".join(random.choices(string.ascii_letters + string.digits, k=14))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the SDK reuses its connection
    disable_nagle_algorithm = True  # else each small response waits out a delayed ACK
    server_version = "stripe-emulator"
    server: "EmulatorServer"

    def _respond(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, payload = self.server.emulator.handle(
            self.command, self.path, self.headers, body)
        # Compact: json's C encoder (indent=2 would force the pure-Python one, ~50x slower:
        # 140 ms for a page of 100 invoices against 3 ms).
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", _request_id())
        self.send_header("Stripe-Version", API_VERSION)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _respond

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write(f"stripe-emulator: {format % args}\n")


class QuietHangUps:
    """A socketserver mixin: a client that hung up or gave up mid-answer is its own business (no
    traceback on the server's stderr); any other error in a handler is printed as before."""

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class EmulatorServer(QuietHangUps, ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, emulator: Emulator, host: str = "127.0.0.1", port: int = 0,
                 verbose: bool = False):
        self.emulator = emulator
        self.verbose = verbose
        super().__init__((host, port), _Handler)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def start_emulator(state_path: str | os.PathLike, port: int = 0, *, host: str = "127.0.0.1",
                   verbose: bool = False) -> tuple[EmulatorServer, threading.Thread, str]:
    """Serve `state_path` in a background thread: (server, thread, base URL)."""
    server = EmulatorServer(Emulator(state_path), host, port, verbose)
    # A short poll interval keeps stop_emulator() quick.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="stripe-emulator", daemon=True)
    thread.start()
    return server, thread, server.base_url


def stop_emulator(server: EmulatorServer, thread: threading.Thread | None = None) -> None:
    server.shutdown()
    server.server_close()
    if thread is not None:
        thread.join(timeout=5)


stop = stop_emulator
