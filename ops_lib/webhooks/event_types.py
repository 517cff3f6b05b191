"""The Stripe event types the reference app handles: the webhook_failure runbook's default
``event_types``, and what the demo's endpoint should be subscribed to. A real app lists its own
in a parameter set (``-f params/webhook_failure/….yaml``)."""

HANDLED_EVENT_TYPES = (
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "invoice.paid",
    "invoice.payment_failed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "charge.refunded",
    "charge.dispute.created",
)
