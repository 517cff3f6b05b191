"""Read access to Stripe for the runbooks: a pinned, bounded client, filtered listings as plain
dicts, and one-line errors.

Every request pins `Stripe-Version: 2023-08-16`, so real Stripe and the demo emulator answer in
the same shapes (those of shared/stripe-openapi). The `list_*` helpers push their filters to
the API (Stripe filters server-side and pages with `auto_paging_iter()`), so a runbook reads
only what it asks about; each yields plain JSON-like dicts. Failures to reach or use Stripe
become `StripeAccessError` with one line saying what is wrong and how to fix it, and never the
API key itself.

Every request is bounded. The SDK's own HTTP clients take one timeout that applies to each
socket operation (the connection, then every read), not to the request: an API that accepts
and never answers costs that timeout per try, and retries multiply it (80 s by default, or
91 s with the 30 s and two retries this module used to pass), while one that drips its answer
a byte at a time is never timed out at all. `make_client` gives the SDK a `BoundedHTTPClient`
instead: a connection must open within `connect_timeout`, the answer must not go silent for
`read_timeout`, and the whole request, retries and the pauses between them included, ends
within `timeout` (15 s by default): once the budget is spent, the socket is shut down even
mid-answer, and no retry starts that could not finish in time.
"""
from __future__ import annotations

import contextlib
import heapq
import io
import itertools
import json
import os
import queue
import random
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import urlsplit

import requests
import stripe
import urllib3
import urllib3.connection

from ops_lib import stripe_mirror
from ops_lib.errors import ConfigurationError, StripeAccessError
from ops_lib.secrets import mask_key, mask_secrets  # noqa: F401 - Stripe-key masking lives in secrets
from ops_lib.utc import to_epoch

API_VERSION = "2023-08-16"
CONNECT_TIMEOUT_S = 5.0   # to open a TCP (and TLS) connection
READ_TIMEOUT_S = 10.0     # the longest silence while waiting for, or reading, an answer
DEFAULT_TIMEOUT_S = 15.0  # one request, from its first try to the end of its last retry
MIN_ATTEMPT_S = 2.0       # a retry starts only if this much of the budget is left after its pause
PREFLIGHT_TIMEOUT_S = 10.0  # for a one-read probe before a run: one try's worth, no second chance
PAGE_SIZE = 100  # Stripe's maximum: fewest round trips

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})  # this machine: no proxy, "emulator" mode


def mode_of(api_key: str, api_base: str | None = None) -> str:
    """"emulator" when the API base is this machine, else "live" or "test" by the key."""
    if api_base:
        host = urlsplit(api_base).hostname or ""
        if host in LOOPBACK_HOSTS:
            return "emulator"
    return "live" if api_key.startswith(("sk_live_", "rk_live_")) else "test"


def make_client(api_key: str, api_base: str | None = None, max_network_retries: int = 2,
                timeout: float = DEFAULT_TIMEOUT_S, *, connect_timeout: float = CONNECT_TIMEOUT_S,
                read_timeout: float = READ_TIMEOUT_S, mirror: bool | None = None) -> stripe.StripeClient:
    """A StripeClient pinned to API_VERSION; `api_base` points it elsewhere (the emulator).

    Each request ends within `timeout` seconds, its `max_network_retries` retries included
    (see `BoundedHTTPClient`); past that it raises, and `stripe_errors` says what happened.

    `mirror`: whether the `list_*` helpers answer from the account's local mirror, kept current
    from the events API (ops_lib.stripe_mirror; OPSBOOK_STRIPE_MIRROR says when). By default a
    run's client (the full `timeout`) uses it for Stripe itself, not for an API on this machine;
    a probe's client (a shorter budget: the preflight, the health check) reads Stripe directly.
    """
    if not api_key:
        raise ConfigurationError("No Stripe API key: set STRIPE_API_KEY to a secret (sk_) or "
                                 "restricted (rk_) key from Dashboard → Developers → API keys")
    if api_key.startswith("pk_"):
        raise ConfigurationError(f"STRIPE_API_KEY {mask_key(api_key)} is a publishable key, which "
                                 "cannot read account data: use a secret (sk_) or restricted "
                                 "(rk_) key")
    client = stripe.StripeClient(
        api_key,
        stripe_version=API_VERSION,
        base_addresses={"api": api_base} if api_base else None,
        max_network_retries=max_network_retries,
        http_client=BoundedHTTPClient(timeout, connect_timeout=connect_timeout,
                                      read_timeout=read_timeout),
    )
    if mirror if mirror is not None else timeout >= DEFAULT_TIMEOUT_S:
        stripe_mirror.attach(client, api_key, api_base, emulator=mode_of(api_key, api_base) == "emulator",
                             asked=mirror is True)
    return client


# --------------------------------------------------------------------------- bounded HTTP


class NetworkFailure(stripe.APIConnectionError):
    """A request that got no complete answer: where to, what happened, after how many tries.

    `kind` is one of: unreachable (refused, unknown host), connect_timeout, tls, closed (the
    connection closed before any answer), no_answer (accepted, then silence), stalled (the
    answer began, then stopped or crawled past the deadline), truncated (the connection closed
    mid-answer), error (anything else).
    """

    def __init__(self, kind: str, where: str, detail: str, *, status: int | None = None,
                 should_retry: bool = True):
        super().__init__(f"{where}: {detail}", should_retry=should_retry)
        self.kind, self.where, self.detail, self.status = kind, where, detail, status
        self.attempts = 1
        self.elapsed = 0.0


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes


_watching = threading.local()


class _Watchdog:
    """Shuts the socket of one attempt down when its deadline passes, whatever it is doing.

    A socket timeout bounds each read, not a request: a server that sends a byte now and then
    holds a plain client for as long as it likes. The connection classes below hand their
    socket to the attempt's watchdog once the request is sent; shutting it down makes the
    blocked read return at once, and the attempt fails. (Connecting, TLS handshake included,
    is bounded by the connect timeout, which is never more than the time left.)
    """

    def __init__(self, seconds: float):
        self.fired = False
        self._lock = threading.Lock()
        self._sock: Any = None
        self._over = False
        self._seconds = max(seconds, 0.0)

    def __enter__(self) -> "_Watchdog":
        _watching.current = self
        _deadlines.add(time.monotonic() + self._seconds, self)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        with self._lock:
            self._over = True  # the deadlines' thread drops it unfired
        _watching.current = None

    def watch(self, sock: Any) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            if self._over:
                return
            self.fired = True
            if self._sock is not None:
                _shut(self._sock)


class _Deadlines:
    """One thread for the watchdogs of the process, asleep until the nearest deadline.

    A thread per attempt (``threading.Timer``) cost 1–6 ms to start on a busy 2-core machine:
    a quarter of a page's time when a million customers are listed 100 at a time. Watchdogs
    whose attempt ended are dropped unfired; the thread ends once none has been live for
    ``LINGER_S`` (a listing's next page comes sooner), so an idle process keeps no thread."""

    LINGER_S = 0.5

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._queue: list[tuple[float, int, _Watchdog]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def forget(self) -> None:
        """In a forked child: the parent's thread and attempts are not this process's, and its
        lock may have been held at the fork."""
        self._ready = threading.Condition()
        self._queue, self._thread = [], None

    def add(self, when: float, watchdog: _Watchdog) -> None:
        with self._ready:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="opsbook-stripe-deadlines", daemon=True)
                self._thread.start()
            heapq.heappush(self._queue, (when, next(self._order), watchdog))
            if self._queue[0][2] is watchdog:
                self._ready.notify()

    def _run(self) -> None:
        idle_since = None
        with self._ready:
            while True:
                now = time.monotonic()
                while self._queue and (self._queue[0][2]._over or self._queue[0][0] <= now):
                    _, _, watchdog = heapq.heappop(self._queue)
                    watchdog._fire()  # (does nothing when its attempt is over)
                if any(not w._over for _, _, w in self._queue):
                    idle_since = None
                elif idle_since is None:
                    idle_since = now
                elif now - idle_since >= self.LINGER_S:
                    self._queue, self._thread = [], None
                    return
                wait = self.LINGER_S if not self._queue else min(self._queue[0][0] - now, self.LINGER_S)
                self._ready.wait(max(wait, 0.0))


_deadlines = _Deadlines()
os.register_at_fork(after_in_child=_deadlines.forget)


def _shut(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Watched:
    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        watchdog = getattr(_watching, "current", None)
        if watchdog is not None and getattr(self, "sock", None) is not None:
            watchdog.watch(self.sock)
        return super().getresponse(*args, **kwargs)


class _HTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, with connections that report their socket to the watchdog."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if not proxy.lower().startswith("socks"):  # SOCKS has connection classes of its own
            manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        return manager


class BoundedTransport:
    """One HTTP attempt with a hard deadline, over requests (proxies, TLS, pooling as usual).

    The connection must open within `connect_timeout`, the answer must never be silent for
    `read_timeout`, and the attempt ends by `deadline` (a `time.monotonic()` value) at the
    latest. Failures raise `NetworkFailure`; any HTTP status is an `Answer`.
    `trust_env=False` ignores proxy variables (for an app on this machine).
    """

    def __init__(self, connect_timeout: float = CONNECT_TIMEOUT_S,
                 read_timeout: float = READ_TIMEOUT_S, *, trust_env: bool = True):
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.trust_env = trust_env
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = self.trust_env
            session.mount("http://", _WatchedAdapter())
            session.mount("https://", _WatchedAdapter())
            self._local.session = session
        return session

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    def send(self, method: str, url: str, *, deadline: float, headers: Mapping[str, str] | None = None,
             body: bytes | str | None = None, verify: bool | str = True, allow_redirects: bool = True,
             max_body: int | None = None, read_timeout: float | None = None) -> Answer:
        """One attempt; `max_body` keeps only the answer's first bytes, `read_timeout` overrides."""
        where = _where(url)
        started = time.monotonic()
        remaining = deadline - started
        if remaining <= 0:
            raise NetworkFailure("no_answer", where, "no time was left to send the request",
                                 should_retry=False)
        timeout = (min(self.connect_timeout, remaining),
                   min(read_timeout or self.read_timeout, remaining))
        status: int | None = None
        with _Watchdog(remaining) as watchdog:
            try:
                response = self._session().request(
                    method, url, headers=headers, data=body, timeout=timeout, stream=True,
                    verify=verify, allow_redirects=allow_redirects)
                status = response.status_code
                try:
                    content = _read_body(response, max_body)
                finally:
                    response.close()
            except requests.exceptions.RequestException as exc:
                raise _failure(exc, where, status, timeout[0], watchdog.fired,
                               time.monotonic() - started) from exc
        return Answer(status, response.reason or "", response.headers, content)


def _read_body(response: requests.Response, limit: int | None) -> bytes:
    if limit is None:
        return response.content
    chunks, size = [], 0
    for chunk in response.iter_content(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _where(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it wraps: causes, contexts, urllib3's `reason`, requests' args."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        # (ssl.SSLError's `reason` is a text, urllib3's an exception)
        todo += [cause for cause in (current.__cause__, current.__context__, getattr(current, "reason", None),
                                     *current.args) if isinstance(cause, BaseException)]


def _failure(exc: requests.exceptions.RequestException, where: str, status: int | None,
             connect_timeout: float, fired: bool, elapsed: float) -> NetworkFailure:
    causes = list(_causes(exc))
    if isinstance(exc, requests.exceptions.SSLError):
        reason = next((str(c.reason) for c in causes if isinstance(c, ssl.SSLError)
                       and getattr(c, "reason", None)), "TLS handshake failed")
        return NetworkFailure("tls", where, f"TLS failed: {reason}", should_retry=False)
    if status is not None:  # the answer had begun
        timed_out = fired or any(isinstance(c, (TimeoutError, urllib3.exceptions.ReadTimeoutError))
                                 for c in causes)
        if timed_out:
            return NetworkFailure("stalled", where, f"began its answer (HTTP {status}) but stopped "
                                  f"sending it ({elapsed:.1f} s)", status=status)
        return NetworkFailure("truncated", where, f"cut its answer (HTTP {status}) short by "
                              "closing the connection", status=status)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return NetworkFailure("connect_timeout", where, f"no connection within {connect_timeout:g} s")
    if fired or isinstance(exc, requests.exceptions.ReadTimeout):
        return NetworkFailure("no_answer", where, f"accepted the connection but sent no answer "
                              f"({elapsed:.1f} s)")
    if isinstance(exc, requests.exceptions.ConnectionError):
        if any(isinstance(c, urllib3.exceptions.NewConnectionError) for c in causes):
            reason = next((c.strerror for c in causes if isinstance(c, OSError) and c.strerror), None)
            return NetworkFailure("unreachable", where, reason or _squeezed(str(exc))[:120])
        return NetworkFailure("closed", where, "closed the connection without answering")
    return NetworkFailure("error", where, f"{type(exc).__name__}", should_retry=False)


class BoundedHTTPClient(stripe.HTTPClient):
    """The stripe SDK's HTTP client, with a budget per request that retries cannot exceed.

    Retries follow the SDK's rules (network failures, 409, 5xx, or `Stripe-Should-Retry`) and
    its backoff, but a retry starts only if at least MIN_ATTEMPT_S of the budget is left after
    its pause, and each try may only use what is left.
    """

    name = "opsbook-bounded"

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S, *,
                 connect_timeout: float = CONNECT_TIMEOUT_S, read_timeout: float = READ_TIMEOUT_S):
        super().__init__()
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.timeout = timeout
        self._transport = BoundedTransport(min(connect_timeout, timeout), min(read_timeout, timeout))

    # The SDK's entry points.
    def request_with_retries(self, method: str, url: str, headers: Mapping[str, str],
                             post_data: Any = None, max_network_retries: int | None = None,
                             *, _usage: Any = None) -> tuple[bytes, int, Mapping[str, str]]:
        return self._with_retries(method, url, headers, post_data, max_network_retries)

    def request_stream_with_retries(self, method: str, url: str, headers: Mapping[str, str],
                                    post_data: Any = None, max_network_retries: int | None = None,
                                    *, _usage: Any = None) -> tuple[Any, int, Mapping[str, str]]:
        content, status, headers = self._with_retries(method, url, headers, post_data,
                                                      max_network_retries)
        return io.BytesIO(content), status, headers

    def request(self, method: str, url: str, headers: Mapping[str, str] | None,
                post_data: Any = None, *, _usage: Any = None) -> tuple[bytes, int, Mapping[str, str]]:
        return self._with_retries(method, url, headers or {}, post_data, 0)

    def request_stream(self, method: str, url: str, headers: Mapping[str, str] | None,
                       post_data: Any = None, *, _usage: Any = None) -> tuple[Any, int, Mapping[str, str]]:
        content, status, rheaders = self._with_retries(method, url, headers or {}, post_data, 0)
        return io.BytesIO(content), status, rheaders

    def close(self) -> None:
        self._transport.close()

    def _with_retries(self, method: str, url: str, headers: Mapping[str, str], post_data: Any,
                      max_network_retries: int | None) -> tuple[bytes, int, Mapping[str, str]]:
        started = time.monotonic()
        deadline = started + self.timeout
        tries = 0
        while True:
            tries += 1
            answer: Answer | None = None
            failure: NetworkFailure | None = None
            try:
                answer = self._transport.send(method, url, deadline=deadline, headers=headers,
                                              body=post_data, verify=stripe.ca_bundle_path)
            except NetworkFailure as exc:
                failure = exc
            if tries <= (max_network_retries or 0) and _retryable(answer, failure):
                pause = _backoff(tries)
                if deadline - time.monotonic() - pause >= MIN_ATTEMPT_S:
                    time.sleep(pause)
                    continue
            if failure is not None:
                failure.attempts, failure.elapsed = tries, time.monotonic() - started
                raise failure
            assert answer is not None
            return _utf8(answer.body), answer.status, answer.headers


def _retryable(answer: Answer | None, failure: NetworkFailure | None) -> bool:
    """The SDK's rule (stripe._http_client.HTTPClient._should_retry)."""
    if answer is None:
        return bool(failure and failure.should_retry)
    should = (answer.headers.get("stripe-should-retry") or "").lower()
    if should in ("true", "false"):
        return should == "true"
    return answer.status == 409 or answer.status >= 500


def _backoff(retry: int) -> float:
    """The SDK's pause before retry number `retry`: 0.5 s, then 0.5-1 s, 1-2 s, … at most 5 s."""
    pause = min(0.5 * 2 ** (retry - 1), 5.0) * 0.5 * (1 + random.random())
    return max(0.5, pause)


def _utf8(body: bytes) -> bytes:
    # Stripe answers UTF-8 JSON. The SDK logs every body as UTF-8 before parsing it and would
    # raise UnicodeDecodeError out of the request; a body that is not UTF-8 is not Stripe's, so
    # it goes on with its undecodable bytes replaced, to fail as "not JSON".
    try:
        body.decode("utf-8")
        return body
    except UnicodeDecodeError:
        return body.decode("utf-8", "replace").encode("utf-8")


# --------------------------------------------------------------------------- errors


@contextlib.contextmanager
def stripe_errors(resource: str | None = None) -> Iterator[None]:
    """Turn Stripe access failures into a one-line StripeAccessError.

    Bad or revoked keys, missing permissions of a restricted key, rate limiting that outlasted
    the retries, Stripe outages and unreachable API bases are the target's problem, not the
    runbook's: the message says which, and what to change. Invalid requests (a bad parameter,
    an unknown id) pass through unchanged: they are the caller's to handle.
    """
    try:
        yield
    except stripe.AuthenticationError as exc:
        raise _access_error(
            exc, f"Stripe rejected the API key{_quoted_key(exc)} (401: revoked, expired or "
                 "mistyped): set STRIPE_API_KEY to a current secret or restricted key from "
                 "Dashboard → Developers → API keys") from None
    except stripe.PermissionError as exc:
        permission = re.search(r"'(rak_\w+)'", str(exc))
        what = resource or (permission.group(1) if permission else "this resource")
        needed = f" (it needs the {permission.group(1)} permission)" if permission else ""
        raise _access_error(
            exc, f"The restricted Stripe key may not read {what}{needed}: grant it read access "
                 f"to {what} in Dashboard → Developers → API keys, or use a key that has "
                 "it") from None
    except stripe.RateLimitError as exc:
        raise _access_error(
            exc, f"Stripe is rate-limiting this key (429) while reading {resource or 'data'}: "
                 "another job is probably using the same key heavily; re-run later or give the "
                 "runbooks their own restricted key") from None
    except NetworkFailure as exc:
        raise _access_error(exc, _network_failure(exc, resource)) from None
    except stripe.APIConnectionError as exc:
        raise _access_error(
            exc, f"Could not reach the Stripe API {_network_problem(exc)}: check the network "
                 "or proxy, or STRIPE_API_BASE (is the demo emulator running? "
                 "`opsbook demo up`)") from None
    except stripe.APIError as exc:
        if not _is_json(exc.http_body):  # not Stripe's answer
            raise _access_error(exc, _not_json(exc, resource)) from None
        raise _access_error(
            exc, f"Stripe failed to answer (HTTP {exc.http_status or '?'}, retries included) "
                 f"while reading {resource or 'data'}: Stripe may be having an incident "
                 "(https://status.stripe.com); re-run later") from None


def _network_failure(exc: NetworkFailure, resource: str | None) -> str:
    tries = f"gave up after {exc.attempts} tr{'y' if exc.attempts == 1 else 'ies'} in {exc.elapsed:.0f} s"
    reading = f" while reading {resource}" if resource else ""
    if exc.kind in ("unreachable", "connect_timeout", "tls"):
        return (f"Could not reach the Stripe API at {exc.where} ({exc.detail}){reading}, {tries}: "
                "check the network or proxy, or STRIPE_API_BASE (is the demo emulator running? "
                "`opsbook demo up`)")
    what = {
        "no_answer": "accepted the connection but never answered",
        "closed": "closed the connection without answering",
        "stalled": f"began its answer (HTTP {exc.status}) but never finished it",
        "truncated": f"cut its answer (HTTP {exc.status}) short by closing the connection",
    }.get(exc.kind, f"failed ({exc.detail})")
    return (f"The Stripe API at {exc.where} {what}{reading} ({tries}): Stripe, or a proxy in "
            "between, is not answering properly; check https://status.stripe.com and the network "
            "or proxy (or STRIPE_API_BASE), then re-run")


def _is_json(body: str | None) -> bool:
    try:
        json.loads(body or "")
    except ValueError:
        return False
    return True


def _not_json(exc: stripe.APIError, resource: str | None) -> str:
    content_type = ""
    # The SDK passes the answer's headers as `json_body` when the body is not JSON.
    for headers in (exc.headers, exc.json_body):
        if isinstance(headers, Mapping):
            found = {str(k).lower(): str(v) for k, v in headers.items()}.get("content-type")
            if found:
                content_type = found.split(";")[0].strip()
                break
    what = "an HTML page instead of Stripe's JSON" if "html" in content_type else "a body that is not JSON"
    status = exc.http_status or 0
    if status >= 500:
        hint = ("a proxy or load balancer in between is failing, or Stripe is having an incident "
                "(https://status.stripe.com); re-run later")
    else:
        hint = ("STRIPE_API_BASE, or a proxy in between (a sign-in or error page?), is not "
                "Stripe's API: check them")
    return f"The Stripe API answered HTTP {status or '?'} with {what} while reading {resource or 'data'}: {hint}"


def _access_error(exc: stripe.StripeError, message: str) -> StripeAccessError:
    if exc.request_id:
        message += f" [request {exc.request_id}]"
    return StripeAccessError(mask_secrets(_squeezed(message)))


_QUOTED_KEY = re.compile(r"\b((?:sk|rk)_(?:live|test)_)\*+([A-Za-z0-9]{4})\b")


def _quoted_key(exc: stripe.StripeError) -> str:
    # Stripe quotes the key back masked (sk_test_****abcd): say which key, our way.
    match = _QUOTED_KEY.search(str(exc))
    return f" {match.group(1)}…{match.group(2)}" if match else ""


def _network_problem(exc: stripe.APIConnectionError) -> str:
    """"at 127.0.0.1:12111 (Connection refused)", from the SDK's long network error."""
    text = _squeezed(exc.user_message)
    host = re.search(r"host='([^']+)', port=(\d+)", text)
    reason = re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)
    if reason:
        why = reason.group(1).strip()
    elif "timed out" in text.lower():
        why = "timed out"
    else:
        kind = re.search(r"Network error: (\w+)", text)
        why = kind.group(1) if kind else "network error"
    return f"at {host.group(1)}:{host.group(2)} ({why})" if host else f"({why})"


def _squeezed(text: str | None) -> str:
    """All of ``text`` on one line, runs of whitespace as one space (the SDK's network error
    spreads the host and the reason over several lines)."""
    return " ".join((text or "").split())


# --------------------------------------------------------------------------- listings


_ts = to_epoch  # a naive datetime is UTC (ops_lib.utc)


def _created(since: datetime | int | None,
             until: datetime | int | None = None) -> dict[str, int] | None:
    """Stripe's `created` range: [since, until)."""
    bounds = {"gte": _ts(since), "lt": _ts(until)}
    bounds = {op: ts for op, ts in bounds.items() if ts is not None}
    return bounds or None


def _plain(obj: Any) -> dict[str, Any]:
    return obj.to_dict(for_json=True)


# The list endpoint behind each resource label `_paged` is called with.
_LIST_PATHS = {
    "events": "/v1/events", "subscriptions": "/v1/subscriptions", "invoices": "/v1/invoices",
    "charges": "/v1/charges", "refunds": "/v1/refunds", "disputes": "/v1/disputes",
    "balance transactions": "/v1/balance_transactions",
    "webhook endpoints": "/v1/webhook_endpoints", "customers": "/v1/customers",
    "prices": "/v1/prices", "checkout sessions": "/v1/checkout/sessions",
}


def _page(service: Any, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """One list page as the JSON Stripe sent, through the client's own requestor (its key,
    pinned version, bounded HTTP client, retries and error mapping), without building SDK objects."""
    requestor = service._requestor
    body, code, headers = requestor.request_raw("get", path, params=params, options={},
                                                base_address="api", api_mode="V1",
                                                usage=["opsbook_paged"])
    # (the SDK's parse makes OrderedDicts; plain dicts are what callers get and half the size)
    return json.loads(requestor._interpret_response(body, code, headers, "V1").body)


def _paged(service: Any, resource: str, params: Mapping[str, Any],
           fields: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every object of a listing, page by page, as the plain JSON Stripe sent (no SDK objects:
    each page is parsed once and dropped when the next is asked for). `fields` keeps only those
    top-level properties of each object, for callers that hold many of them."""
    params = {"limit": PAGE_SIZE, **{k: v for k, v in params.items() if v is not None}}
    path = _LIST_PATHS[resource]
    keep = tuple(fields) if fields is not None else None
    with stripe_errors(resource):
        while True:
            page = _page(service, path, params)
            data = page.get("data") or []
            for obj in data:
                yield obj if keep is None else {k: obj[k] for k in keep if k in obj}
            if not page.get("has_more") or not data:
                return
            params = {**params, "starting_after": data[-1]["id"]}


def _listing(client: Any, object_type: str, direct: Callable[[], Iterator[dict[str, Any]]],
             **query: Any) -> Iterator[dict[str, Any]]:
    """From the client's mirror when it has one and can answer (`stripe_mirror.Mirror.listing`
    takes `query`), else `direct()`: Stripe itself. Lazy, like a direct listing."""
    mirror = stripe_mirror.of(client)
    served = None
    if mirror is not None:
        try:
            served = mirror.listing(object_type, **query)
        except stripe_mirror.Unavailable:
            served = None
    yield from (direct() if served is None else served)


SUBSCRIPTION_STATUSES = ("active", "all", "canceled", "ended", "incomplete", "incomplete_expired",
                         "past_due", "paused", "trialing", "unpaid")


def _subscription_status(status: str | None) -> tuple[dict[str, Any], Callable[[dict], bool] | None]:
    """Stripe's `status` filter for subscriptions, as the mirror's (where, keep)."""
    if status == "all":
        return {}, None
    if status is None:  # Stripe hides canceled subscriptions unless asked
        return {}, lambda sub: sub.get("status") != "canceled"
    if status == "ended":
        return {"status": ("canceled", "incomplete_expired")}, None
    return {"status": status}, None


def _all(*predicates: Callable[[dict], bool] | None) -> Callable[[dict], bool] | None:
    checks = [p for p in predicates if p is not None]
    if not checks:
        return None
    return lambda obj: all(check(obj) for check in checks)


def _ref_is(key: str, value: str | None) -> Callable[[dict], bool] | None:
    if value is None:
        return None
    return lambda obj: (obj.get(key).get("id") if isinstance(obj.get(key), Mapping) else obj.get(key)) == value


def list_events(client: stripe.StripeClient, since: datetime | int,
                types: list[str] | None = None, delivery_success: bool | None = None,
                until: datetime | int | None = None) -> Iterator[dict[str, Any]]:
    """Events created in [since, until), newest first; `types` may use `invoice.*` families.

    Stripe keeps events for 30 days. `delivery_success=False` keeps events that some webhook
    endpoint has not acknowledged (still pending or failed).
    """
    if delivery_success is None and stripe_mirror.of(client) is not None:
        exact = [t for t in types or [] if not t.endswith("*")]
        families = [t[:-1] for t in types or [] if t.endswith("*")]
        where = {"kind": tuple(exact)} if types and not families else {}
        keep = (lambda e: e.get("type") in exact or any(e.get("type", "").startswith(f) for f in families)
                ) if families else None
        yield from _listing(client, "event", lambda: list_events(_direct(client), since, types, None, until),
                            gte=_ts(since), lt=_ts(until), where=where, keep=keep)
        return
    params: dict[str, Any] = {"created": _created(since, until),
                              "delivery_success": delivery_success}
    if types:
        if len(types) == 1:
            params["type"] = types[0]  # the only form that takes a `family.*` wildcard
        elif any(t.endswith("*") for t in types):
            # `types[]` takes exact names only: one listing per type, merged newest first.
            yield from _merged_newest_first(
                [list_events(client, since, [t], delivery_success, until) for t in types])
            return
        else:
            params["types"] = list(types)
    yield from _paged(client.v1.events, "events", params)


def _direct(client: Any) -> Any:
    """The same client, reading Stripe directly (no mirror)."""
    if stripe_mirror.of(client) is None:
        return client
    import copy

    plain = copy.copy(client)
    plain._opsbook_mirror = None
    return plain


def _merged_newest_first(listings: list[Iterator[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    events = [e for listing in listings for e in listing]
    for event in sorted(events, key=lambda e: (e["created"], e["id"]), reverse=True):
        if event["id"] not in seen:
            seen.add(event["id"])
            yield event


def retrieve_event(client: stripe.StripeClient, event_id: str) -> dict[str, Any] | None:
    """The event, or None when Stripe has no such event (never sent, or older than 30 days)."""
    with stripe_errors("events"):
        try:
            return _plain(client.v1.events.retrieve(event_id))
        except stripe.InvalidRequestError as exc:
            if exc.code == "resource_missing":
                return None
            raise


def list_subscriptions(client: stripe.StripeClient, status: str = "all",
                       created_since: datetime | int | None = None,
                       customer: str | None = None, price: str | None = None,
                       expand_customer: bool = False,
                       fields: Iterable[str] | None = None,
                       customer_fields: Iterable[str] | None = None,
                       form: stripe_mirror.RowForm | None = None) -> Iterator[dict[str, Any] | list]:
    """Subscriptions in `status` ("all" includes canceled ones, which Stripe hides by default).
    `fields`: keep only these top-level properties (see `_paged`). Items keep what the runbooks
    read of them and of their prices (`stripe_mirror.project_items`), mirrored or not. An expanded
    customer keeps `customer_fields` when given. `form`: from the mirror, objects the form
    describes come as their rows (`stripe_mirror.RowForm`)."""
    customer_fields = tuple(customer_fields) if customer_fields is not None else None

    def trimmed(sub: dict) -> dict:
        sub = stripe_mirror.project_items(sub)
        if customer_fields is not None and isinstance(sub.get("customer"), dict):
            sub["customer"] = {k: v for k, v in sub["customer"].items() if k in customer_fields}
        return sub

    direct = lambda: map(trimmed, _paged(  # noqa: E731
        client.v1.subscriptions, "subscriptions", {
            "status": status, "created": _created(created_since), "customer": customer,
            "price": price, "expand": ["data.customer"] if expand_customer else None}, fields))
    if status not in (None, *SUBSCRIPTION_STATUSES):
        return direct()  # Stripe says what is wrong with it
    where, keep = _subscription_status(status)
    if customer is not None:
        where["customer"] = customer
    has_price = (lambda sub: any((item.get("price") or {}).get("id") == price
                                 for item in (sub.get("items") or {}).get("data") or [])) if price else None
    return _listing(client, "subscription", direct, gte=_ts(created_since), where=where,
                    keep=_all(keep, has_price), fields=fields, expand_customer=expand_customer,
                    customer_fields=customer_fields, form=form)


SUBSCRIPTION_ROW = ("id", "customer", "status", "current_period_start", "current_period_end", "prices")
SHARED_PRICES_AT_MOST = 10_000  # distinct sets of prices kept to be shared


def list_subscription_rows(client: stripe.StripeClient, status: str = "all") -> Iterator[tuple]:
    """Subscriptions in `status` as ``SUBSCRIPTION_ROW`` tuples: id, customer id, status, current
    period start and end (as Stripe sends them: epoch seconds), and the items' prices in order
    (each projected as a listing serves it), one tuple shared by every subscription whose prices
    are equal. For a caller that reads these of every subscription (quota_audit's join): the
    mirror serves them with SQL, without decoding the objects; from Stripe, as listed. Lazy,
    like a listing."""
    where, keep = _subscription_status(status)
    shared: dict[str | None, tuple] = {}

    def prices_of(items_text: str | None) -> tuple:
        prices = shared.get(items_text)
        if prices is None:
            items = json.loads(items_text) if items_text is not None else []
            prices = tuple(item.get("price") if isinstance(item, Mapping) else None
                           for item in (items if isinstance(items, list) else ()))
            if len(shared) < SHARED_PRICES_AT_MOST:  # (an account whose every subscription differs keeps none)
                shared[items_text] = prices
        return prices

    rows = None
    mirror = stripe_mirror.of(client)
    if mirror is not None and keep is None and status in SUBSCRIPTION_STATUSES:
        try:  # (kept by the mirror as rows: made once per change, a page decoded at a time)
            rows = mirror.listing("subscription", where=where, fields=_SUBSCRIPTION_ROW_FIELDS,
                                  form=_SUBSCRIPTION_ROW_FORM)
        except stripe_mirror.Unavailable:
            rows = None
    if rows is None:
        rows = list_subscriptions(client, status=status, fields=_SUBSCRIPTION_ROW_FIELDS)
    for row in rows:
        if type(row) is not list:
            row = _subscription_row(row)
        yield (*row[:5], prices_of(row[5]))


_SUBSCRIPTION_ROW_FIELDS = ("id", "customer", "status", "current_period_start", "current_period_end", "items")
# What the mirror keeps of each subscription for ``list_subscription_rows``: the same row
_SUBSCRIPTION_ROW_FORM = stripe_mirror.RowForm("quota.subscription.1", lambda sub: list(_subscription_row(sub)))


# How long a caller of ``in_background`` waits between two items before it looks whether the
# reading thread is still alive (the thread's own waits are bounded: HTTP deadlines, the mirror's).
_BACKGROUND_POLL_S = 1.0
_BACKGROUND_CHUNK = 1000


def in_background(listing: Iterable[Any], name: str = "opsbook-listing") -> Iterator[Any]:
    """`listing` read to its end at once by a thread of its own, its items handed over in order as
    they come: what the caller does meanwhile (quota_audit reads the app's rows from PostgreSQL)
    overlaps the listing (SQLite's JSON work or Stripe's pages, which wait outside the GIL). An
    error reading is raised where the caller reaches it; a caller that stops early, or is
    interrupted, stops the thread. Items are buffered without bound: for a caller that keeps them
    all anyway."""
    handed: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()
    done = object()

    def read() -> None:
        source = iter(listing)
        chunk: list = []
        try:
            for item in source:
                chunk.append(item)
                if len(chunk) >= _BACKGROUND_CHUNK:
                    handed.put(chunk)
                    chunk = []
                    if stop.is_set():
                        return
            handed.put(chunk)
            handed.put(done)
        except BaseException as exc:  # (raised in the caller's thread)
            handed.put(chunk)
            handed.put(exc)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # (a listing left early releases its snapshot)

    thread = threading.Thread(target=read, name=name, daemon=True)
    thread.start()

    def handed_over() -> Iterator[Any]:
        try:
            while True:
                try:
                    item = handed.get(timeout=_BACKGROUND_POLL_S)
                except queue.Empty:
                    if not thread.is_alive() and handed.empty():
                        raise StripeAccessError(f"{name} stopped without a word: re-run") from None
                    continue
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield from item
        finally:
            stop.set()

    return handed_over()


def _subscription_row(sub: Mapping[str, Any]) -> tuple:
    """A listed subscription as ``list_subscription_rows`` reads it: ``SUBSCRIPTION_ROW``, its
    items as JSON (each reduced to its price: text equal on every subscription that sells the same
    prices, decoded once)."""
    items = sub.get("items")
    items = items.get("data") if isinstance(items, Mapping) else None
    customer = sub.get("customer")
    return (sub.get("id"), customer.get("id") if isinstance(customer, Mapping) else customer, sub.get("status"),
            sub.get("current_period_start"), sub.get("current_period_end"),
            json.dumps([{"price": item["price"]} if isinstance(item, Mapping) and "price" in item
                        else {} if isinstance(item, Mapping) else item for item in items], separators=(",", ":"))
            if isinstance(items, list) else None)


def list_invoices(client: stripe.StripeClient, paid_since: datetime | int | None = None,
                  status: str | None = None, customer: str | None = None,
                  subscription: str | None = None,
                  created_since: datetime | int | None = None,
                  fields: Iterable[str] | None = None,
                  form: stripe_mirror.RowForm | None = None) -> Iterator[dict[str, Any] | list]:
    """Invoices, optionally only those paid at or after `paid_since`; `fields`: see `_paged`;
    `form`: see `list_subscriptions` (not with `paid_since`, which reads the objects).

    Stripe cannot filter on the payment time, so `paid_since` asks for `status=paid` and keeps
    invoices whose `status_transitions.paid_at` is late enough. Lines keep what the runbooks read
    of them and of their prices (`stripe_mirror.project_lines`), mirrored or not.
    """
    if paid_since is not None and status not in (None, "paid"):
        raise ValueError(f"paid_since lists paid invoices: it cannot go with status={status!r}")
    if paid_since is not None and form is not None:
        raise ValueError("paid_since reads each invoice's status_transitions: it cannot go with a row form")
    threshold = _ts(paid_since)
    if threshold is not None and fields is not None:
        fields = (*fields, "status_transitions")  # (read here, whether asked for or not)
    wanted = "paid" if threshold is not None else status
    where = {k: v for k, v in (("status", wanted), ("customer", customer)) if v is not None}
    invoices = _listing(client, "invoice", lambda: map(stripe_mirror.project_lines, _paged(
        client.v1.invoices, "invoices", {"status": wanted, "customer": customer, "subscription": subscription,
                                         "created": _created(created_since)}, fields)),
        gte=_ts(created_since), where=where, keep=_ref_is("subscription", subscription), fields=fields,
        form=form)
    for invoice in invoices:
        if threshold is None or (invoice["status_transitions"]["paid_at"] or 0) >= threshold:
            yield invoice


def list_charges(client: stripe.StripeClient, since: datetime | int | None = None,
                 until: datetime | int | None = None, customer: str | None = None,
                 payment_intent: str | None = None,
                 fields: Iterable[str] | None = None,
                 form: stripe_mirror.RowForm | None = None) -> Iterator[dict[str, Any] | list]:
    """Charges (succeeded, failed and pending) created in [since, until); `fields`: see `_paged`;
    `form`: see `list_subscriptions`."""
    return _listing(client, "charge", lambda: _paged(client.v1.charges, "charges", {
        "created": _created(since, until), "customer": customer,
        "payment_intent": payment_intent}, fields),
        gte=_ts(since), lt=_ts(until), where={"customer": customer} if customer else {},
        keep=_ref_is("payment_intent", payment_intent), fields=fields, form=form)


def list_refunds(client: stripe.StripeClient, since: datetime | int | None = None,
                 until: datetime | int | None = None,
                 charge: str | None = None, fields: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    return _listing(client, "refund", lambda: _paged(client.v1.refunds, "refunds", {
        "created": _created(since, until), "charge": charge}, fields),
        gte=_ts(since), lt=_ts(until), where={"ref": charge} if charge else {}, fields=fields)


def list_disputes(client: stripe.StripeClient, since: datetime | int | None = None,
                  until: datetime | int | None = None,
                  charge: str | None = None, fields: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    return _listing(client, "dispute", lambda: _paged(client.v1.disputes, "disputes", {
        "created": _created(since, until), "charge": charge}, fields),
        gte=_ts(since), lt=_ts(until), where={"ref": charge} if charge else {}, fields=fields)


def list_balance_transactions(client: stripe.StripeClient, since: datetime | int | None = None,
                              until: datetime | int | None = None, type: str | None = None,
                              source: str | None = None, currency: str | None = None,
                              expand_source: bool = False,
                              fields: Iterable[str] | None = None,
                              form: stripe_mirror.RowForm | None = None) -> Iterator[dict[str, Any] | list]:
    """Balance transactions (amount, fee, net per movement); `type` e.g. "charge", "refund";
    `fields`: see `_paged`; `form`: see `list_subscriptions`."""
    direct = lambda: _paged(client.v1.balance_transactions, "balance transactions", {  # noqa: E731
        "created": _created(since, until), "type": type, "source": source,
        "currency": currency, "expand": ["data.source"] if expand_source else None}, fields)
    if expand_source:  # sources of every kind: not mirrored
        return direct()
    where = {k: v for k, v in (("kind", type), ("ref", source)) if v is not None}
    in_currency = (lambda bt: bt.get("currency") == currency) if currency else None
    return _listing(client, "balance_transaction", direct, gte=_ts(since), lt=_ts(until),
                    where=where, keep=in_currency, fields=fields, form=form)


def list_webhook_endpoints(client: stripe.StripeClient) -> Iterator[dict[str, Any]]:
    return _paged(client.v1.webhook_endpoints, "webhook endpoints", {})


def list_customers(client: stripe.StripeClient, created_since: datetime | int | None = None,
                   email: str | None = None,
                   fields: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Customers (deleted ones are not listed); `fields`: see `_paged`."""
    return _listing(client, "customer", lambda: _paged(client.v1.customers, "customers", {
        "created": _created(created_since), "email": email}, fields),
        gte=_ts(created_since), where={"deleted": 0},
        keep=(lambda c: c.get("email") == email) if email is not None else None, fields=fields)


def list_customer_ids(client: stripe.StripeClient) -> Iterator[str]:
    """Every customer's id (deleted ones are not listed), newest first: from the mirror's id column
    without any JSON (a million ids: ~0.3 s instead of ~2 s as objects), else listed."""
    rows = None
    mirror = stripe_mirror.of(client)
    if mirror is not None:
        try:
            rows = mirror.rows("customer", {"id": "o.id"}, lambda customer: (customer.get("id"),),
                               where={"deleted": 0})
        except stripe_mirror.Unavailable:
            rows = None
    if rows is None:
        rows = ((customer.get("id"),) for customer in list_customers(client, fields=("id",)))
    for (customer_id,) in rows:
        yield customer_id


# Past this many customers asked for by id, Stripe is listed whole instead (⌈N/100⌉ requests).
RETRIEVE_AT_MOST = 100
_IDS_PER_QUERY = 500  # (SQLite's bound parameters per statement)


def customers_by_id(client: stripe.StripeClient, ids: Iterable[str],
                    fields: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """The customers among ``ids`` that Stripe has (deleted ones are not listed), in no promised
    order; `fields`: see `_paged`. From the mirror when the client has one; from Stripe, one
    request each up to ``RETRIEVE_AT_MOST`` of them, else one listing of every customer."""
    wanted = list(dict.fromkeys(ids))
    fields = tuple(fields) if fields is not None else None

    def direct() -> Iterator[dict[str, Any]]:
        if len(wanted) > RETRIEVE_AT_MOST:
            chosen = set(wanted)
            yield from (c for c in _paged(client.v1.customers, "customers", {}, fields) if c.get("id") in chosen)
            return
        with stripe_errors("customers"):
            for customer_id in wanted:
                try:
                    customer = _plain(client.v1.customers.retrieve(customer_id))
                except stripe.InvalidRequestError as exc:
                    if exc.code == "resource_missing":
                        continue
                    raise
                if not customer.get("deleted"):
                    yield customer if fields is None else {k: customer[k] for k in fields if k in customer}

    def mirrored(mirror: stripe_mirror.Mirror) -> Iterator[dict[str, Any]]:
        for start in range(0, len(wanted), _IDS_PER_QUERY):
            try:
                chunk = mirror.listing("customer", where={"deleted": 0, "id": wanted[start:start + _IDS_PER_QUERY]},
                                       fields=fields)
            except stripe_mirror.Unavailable:
                if start:
                    raise
                yield from direct()
                return
            yield from chunk

    mirror = stripe_mirror.of(client)
    return direct() if mirror is None else mirrored(mirror)


def list_prices(client: stripe.StripeClient, active: bool | None = None,
                product: str | None = None, expand_product: bool = False,
                include_tiers: bool = False) -> Iterator[dict[str, Any]]:
    """Prices; `include_tiers` adds the tiers of tiered prices (Stripe omits them by default)."""
    expand = (["data.product"] if expand_product else []) + (["data.tiers"] if include_tiers else [])
    return _paged(client.v1.prices, "prices", {"active": active, "product": product,
                                               "expand": expand or None})


def list_checkout_sessions(client: stripe.StripeClient, customer: str | None = None,
                           payment_intent: str | None = None,
                           subscription: str | None = None) -> Iterator[dict[str, Any]]:
    return _paged(client.v1.checkout.sessions, "checkout sessions", {
        "customer": customer, "payment_intent": payment_intent, "subscription": subscription})
