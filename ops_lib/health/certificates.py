"""TLS certificates of the configured https URLs: days until they expire, and whether they verify."""
from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from datetime import datetime, timezone
from typing import Iterable
from urllib.parse import urlsplit

from ..findings import Finding
from ..webhooks.checks import _display_url


def https_urls(*urls: str | None, extra: Iterable[str] = ()) -> list[str]:
    """The https URLs among the configured ones (and ``extra``), each host:port once."""
    seen, out = set(), []
    for url in [*urls, *extra]:
        if not url or urlsplit(url).scheme.lower() != "https":
            continue
        parts = urlsplit(url)
        key = ((parts.hostname or "").lower(), parts.port or 443)
        if key not in seen:
            seen.add(key)
            out.append(url)
    return out


def _expiry(host: str, port: int, timeout_s: float, cafile: str | None) -> tuple[datetime | None, str | None]:
    """(notAfter, verification problem or None), both handshakes within ``timeout_s`` together."""
    deadline = time.monotonic() + timeout_s
    context = ssl.create_default_context(cafile=cafile)
    try:
        cert = _peer_certificate(host, port, context, deadline, timeout_s, binary=False)
        return datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), timezone.utc), None
    except ssl.SSLCertVerificationError as err:
        problem = f"does not verify: {err.verify_message or err}"
    # Not verified: read the certificate anyway, for its date.
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return _not_after(_peer_certificate(host, port, context, deadline, timeout_s, binary=True)), problem


def _peer_certificate(host: str, port: int, context: ssl.SSLContext, deadline: float, timeout_s: float, *,
                      binary: bool):
    """The server's certificate, by ``deadline`` at the latest. A socket timeout bounds each read,
    not the handshake: a server that sends a byte now and then would hold the check for as long
    as it likes, so the socket is shut down when the time is up."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"no TLS handshake within {timeout_s:g} s")
    with socket.create_connection((host, port), timeout=remaining) as sock:
        alarm = threading.Timer(max(deadline - time.monotonic(), 0.0), _shut, (sock,))
        alarm.daemon = True
        alarm.start()
        try:
            with context.wrap_socket(sock, server_hostname=host) as tls:
                return tls.getpeercert(binary_form=binary)
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no TLS handshake within {timeout_s:g} s") from None
            raise
        finally:
            alarm.cancel()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _not_after(der: bytes | None) -> datetime | None:
    if not der:
        return None
    import os
    import tempfile

    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(ssl.DER_cert_to_PEM_cert(der))
        return datetime.fromtimestamp(ssl.cert_time_to_seconds(decode(path)["notAfter"]), timezone.utc)
    except Exception:
        return None
    finally:
        os.unlink(path)


def certificate_expiring(urls: Iterable[str], *, warn_days: float = 21.0, critical_days: float = 7.0,
                         timeout_s: float = 5.0, now: datetime | None = None, cafile: str | None = None) -> Finding:
    """Each https URL's certificate: expiring within ``critical_days`` or not verifying is
    critical, within ``warn_days`` a warning; an unreachable host is reported in the rows."""
    check = "certificate_expiring"
    now = now or datetime.now(timezone.utc)
    urls = list(urls)
    if not urls:
        return Finding(check, "ok", "No https URL configured to check",
                       note="The health and webhook URLs, and tls_urls, are checked when they are https.")
    rows, worst = [], "ok"
    for url in urls:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 443
        row = {"url": _display_url(url), "expires": None, "days_left": None, "problem": None}
        try:
            expires, problem = _expiry(host, port, timeout_s, cafile)
        except (OSError, ssl.SSLError) as err:
            row["problem"] = f"no TLS answer: {type(err).__name__}: {err}"
            rows.append(row)
            worst = "critical"
            continue
        row["expires"] = expires
        days = None if expires is None else round((expires - now).total_seconds() / 86400, 1)
        row["days_left"], row["problem"] = days, problem
        if problem or (days is not None and days <= critical_days):
            worst = "critical"
            rows.append(row)
        elif days is not None and days <= warn_days:
            worst = "critical" if worst == "critical" else "warning"
            rows.append(row)
    if not rows:
        return Finding(check, "ok", f"All {len(urls)} certificate(s) valid for more than {warn_days:g} days")
    return Finding(check, worst, f"{len(rows)} of {len(urls)} certificate(s) expire within {warn_days:g} days or do not verify",
                   items=[r["url"] for r in rows], rows=rows,
                   remediation="Renew the certificate (check that automatic renewal — certbot, cert-manager, the "
                   "provider's — still runs and that the new certificate was deployed to every server).")
