"""A misbehaving HTTP server on 127.0.0.1, for tests of what a client does when a service fails.

    from tests.faulty_http import faulty_http, Reply

    with faulty_http("hang") as server:          # every request: accepted, never answered
        make_client(KEY, server.url)...           # server.url is the base URL, no trailing /
        assert server.count == 2                  # requests received (first try and one retry)

    with faulty_http(Reply(200, page), "hang"):   # one behaviour per request in turn; the last
        ...                                       # one repeats: here a first page, then a hang

Behaviours (plain strings, or a `Reply` for an explicit answer):

    unauthorized   401 with Stripe's error JSON, quoting the request's key masked as Stripe does
    rate_limited   429 with Stripe's error JSON
    server_error   500 with Stripe's error JSON
    unavailable    503 with Stripe's error JSON
    garbage        200, Content-Type application/json, a body that is not JSON (nor UTF-8)
    html           200, Content-Type text/html: a proxy's sign-in page
    truncated      200 announcing a JSON body, then half of it, then the connection closed
    hang           the request is read, then nothing: no status line, ever
    stall_body     status line, headers and the first bytes of the body, then nothing
    drip           status line and headers, then the body one byte every `drip_interval` s

Error answers carry a `Request-Id` header, as Stripe's do. Every connection runs on its own
thread; leaving the `with` block wakes the ones that hang, closes every connection and joins
every thread, and raises if one did not end, so a test never leaves a thread behind.
The `faulty_server` pytest fixture gives the same as a factory closed at teardown.
"""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Union

import pytest

BEHAVIOURS = ("unauthorized", "rate_limited", "server_error", "unavailable", "garbage", "html",
              "truncated", "hang", "stall_body", "drip")

_POLL_S = 0.05  # how often a waiting connection thread looks whether the server is closing
_JOIN_S = 5.0


@dataclass(frozen=True)
class Reply:
    """An explicit answer: `body` a dict (sent as JSON), bytes or str."""

    status: int = 200
    body: Any = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def payload(self) -> tuple[bytes, str]:
        if isinstance(self.body, (dict, list)):
            return json.dumps(self.body).encode(), "application/json"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return bytes(self.body), "application/json"


Behaviour = Union[str, Reply]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


def _stripe_error(status: int, type_: str, message: str, code: str | None = None) -> Reply:
    error = {"type": type_, "message": message}
    if code:
        error["code"] = code
    return Reply(status, {"error": error}, {"Request-Id": "req_faultyHTTP0001"})


def _masked_key(authorization: str) -> str:
    # Stripe quotes a rejected key back with all but its prefix and last four characters starred.
    key = authorization.removeprefix("Bearer ").strip()
    prefix = key[:8] if key[:3] in ("sk_", "rk_", "pk_") else ""
    return prefix + "*" * max(len(key) - len(prefix) - 4, 0) + key[-4:] if len(key) > 12 else "****"


_LIST_PAGE = json.dumps({"object": "list", "url": "/v1/customers", "has_more": False,
                         "data": [{"id": "cus_faulty", "object": "customer",
                                   "description": "x" * 1000}]}).encode()
_HTML = (b"<!DOCTYPE html><html><head><title>Sign in</title></head>"
         b"<body><form action=\"/login\">Corporate proxy: sign in to continue</form></body></html>")


class FaultyHTTPServer:
    """The running server: `url`, `count`, `requests`; use it through `faulty_http`."""

    def __init__(self, behaviours: tuple[Behaviour, ...], drip_interval: float = 0.2):
        for behaviour in behaviours:
            if not isinstance(behaviour, Reply) and behaviour not in BEHAVIOURS:
                raise ValueError(f"unknown behaviour {behaviour!r}: one of {', '.join(BEHAVIOURS)} or a Reply")
        self.behaviours = behaviours or ("hang",)
        self.drip_interval = drip_interval
        self.requests: list[Request] = []
        self.connections = 0
        self._heads = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(_POLL_S)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept, name=f"faulty-http-{self.port}", daemon=True)
        self._acceptor.start()

    @property
    def count(self) -> int:
        """Requests received so far (a request counts once its head has arrived)."""
        with self._lock:
            return self._heads

    def paths(self) -> list[str]:
        """The paths (with query strings) of the requests whose body has arrived, in order."""
        with self._lock:
            return [r.path for r in self.requests]

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Wake every waiting connection, close them all, and join every thread."""
        self._closing.set()
        self._acceptor.join(_JOIN_S)
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + _JOIN_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads + [self._acceptor] if t.is_alive()]
        if alive:
            raise RuntimeError(f"faulty HTTP server on port {self.port} left threads running: {alive}")

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                      name=f"faulty-http-{self.port}-conn{self.connections}")
            with self._lock:
                self.connections += 1
                self._threads.append(thread)
                self._sockets.add(conn)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(_POLL_S)
            read = self._read_request(conn)
            if read is None:
                return
            behaviour, request = read
            self._behave(conn, behaviour, request)
        except OSError:
            pass  # the client went away, or the server is closing
        finally:
            with self._lock:
                self._sockets.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    # ------------------------------------------------------------------ requests

    def _recv(self, conn: socket.socket, size: int = 65536) -> bytes | None:
        """The next bytes, waiting as long as the server is open; None once it is closing."""
        while not self._closing.is_set():
            try:
                return conn.recv(size)
            except socket.timeout:
                continue
        return None

    def _read_request(self, conn: socket.socket) -> tuple[Behaviour, Request] | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self._recv(conn)
            if not chunk:
                return None
            data += chunk
            if len(data) > 1 << 16:
                return None
        head, _, rest = data.partition(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _version = (request_line.split(" ") + ["", ""])[:3]
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("expect", "").lower() == "100-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        with self._lock:
            behaviour = self.behaviours[min(self._heads, len(self.behaviours) - 1)]
            self._heads += 1
        length = int(headers.get("content-length") or 0)
        body = rest
        while len(body) < length:
            chunk = self._recv(conn)
            if not chunk:
                return None
            body += chunk
        request = Request(method, path, headers, body[:length])
        with self._lock:
            self.requests.append(request)
        return behaviour, request

    # ------------------------------------------------------------------ behaviours

    def _behave(self, conn: socket.socket, behaviour: Behaviour, request: Request) -> None:
        if isinstance(behaviour, Reply):
            body, content_type = behaviour.payload()
            self._answer(conn, behaviour.status, body, content_type, behaviour.headers)
            return
        if behaviour == "hang":
            self._closing.wait()
            return
        if behaviour == "unauthorized":
            key = _masked_key(request.headers.get("authorization", ""))
            reply = _stripe_error(401, "invalid_request_error", f"Invalid API Key provided: {key}")
        elif behaviour == "rate_limited":
            reply = _stripe_error(429, "invalid_request_error",
                                  "Request rate limit exceeded. Learn more about rate limits here "
                                  "https://stripe.com/docs/rate-limits.", code="rate_limit")
        elif behaviour == "server_error":
            reply = _stripe_error(500, "api_error", "An unknown error occurred")
        elif behaviour == "unavailable":
            reply = _stripe_error(503, "api_error", "Stripe is temporarily unavailable")
        elif behaviour == "garbage":
            reply = Reply(200, b"\x8b\x1f\x00\xff<<garbage>> {not: json", {})
        elif behaviour == "html":
            self._answer(conn, 200, _HTML, "text/html; charset=utf-8", {})
            return
        elif behaviour == "truncated":
            self._head(conn, 200, "application/json", len(_LIST_PAGE), {})
            conn.sendall(_LIST_PAGE[: len(_LIST_PAGE) // 2])
            return  # and the connection is closed
        elif behaviour == "stall_body":
            self._head(conn, 200, "application/json", len(_LIST_PAGE), {})
            conn.sendall(_LIST_PAGE[:20])
            self._closing.wait()
            return
        elif behaviour == "drip":
            self._head(conn, 200, "application/json", len(_LIST_PAGE), {})
            for i in range(len(_LIST_PAGE)):
                if self._closing.wait(self.drip_interval):
                    return
                conn.sendall(_LIST_PAGE[i:i + 1])
            return
        else:  # pragma: no cover - checked in __init__
            raise AssertionError(behaviour)
        body, content_type = reply.payload()
        self._answer(conn, reply.status, body, content_type, reply.headers)

    def _head(self, conn: socket.socket, status: int, content_type: str, length: int,
              headers: Mapping[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
                 f"Content-Type: {content_type}", f"Content-Length: {length}", "Connection: close",
                 *(f"{name}: {value}" for name, value in headers.items())]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _answer(self, conn: socket.socket, status: int, body: bytes, content_type: str,
                headers: Mapping[str, str]) -> None:
        self._head(conn, status, content_type, len(body), headers)
        conn.sendall(body)


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable"}


@contextlib.contextmanager
def faulty_http(*behaviours: Behaviour, drip_interval: float = 0.2) -> Iterator[FaultyHTTPServer]:
    """A running FaultyHTTPServer; each request gets the next behaviour, the last one repeats."""
    server = FaultyHTTPServer(behaviours, drip_interval=drip_interval)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def faulty_server():
    """A factory: `faulty_server("hang")` starts a server, closed (threads joined) at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda *behaviours, **options: stack.enter_context(faulty_http(*behaviours, **options))


@contextlib.contextmanager
def serving(handler: type) -> Iterator[str]:
    """A plain well-behaved server with ``handler`` (an http.server request handler class) on
    127.0.0.1; yields its base URL and shuts it down afterwards."""
    import http.server

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(_JOIN_S)
