"""What the demo app's webhook handler leaves in its tables, for the planted incidents."""
from __future__ import annotations

import json

import sqlalchemy as sa

from ..webhooks.signature import sign


def record_event(conn, event: dict, secret: str, *, processed: bool = True) -> None:
    """The app received ``event`` (signed as Stripe signs it) and stored it; ``processed``: its
    handler then finished the work (else the event stays 'received', as after a crash)."""
    body = json.dumps(event)
    at = event["created"] + 3
    conn.execute(sa.text(
        "INSERT INTO webhook_events (stripe_event_id, type, status, raw_body, signature_header, received_at, "
        "processed_at) VALUES (:id, :type, :status, :body, :header, to_timestamp(:at), "
        "CASE WHEN :processed THEN to_timestamp(:at + 1) END)"
    ), {"id": event["id"], "type": event["type"], "status": "processed" if processed else "received", "body": body,
        "header": sign(body, secret, at), "at": at, "processed": processed})
