"""What the demo app's webhook handler leaves in its tables, for the planted incidents."""
from __future__ import annotations

import json

import sqlalchemy as sa

from ..webhooks.signature import sign


def record_processed_event(conn, event: dict, secret: str) -> None:
    """The app received ``event`` (signed as Stripe signs it), stored it and marked it processed."""
    body = json.dumps(event)
    conn.execute(sa.text(
        "INSERT INTO webhook_events (stripe_event_id, type, status, raw_body, signature_header, received_at, "
        "processed_at) VALUES (:id, :type, 'processed', :body, :header, to_timestamp(:at), to_timestamp(:at + 1))"
    ), {"id": event["id"], "type": event["type"], "body": body,
        "header": sign(body, secret, event["created"] + 3), "at": event["created"] + 3})
