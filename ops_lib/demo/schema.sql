-- The reference SaaS schema of the demo target, modelled on the seeds' apps: organisations on
-- a plan, their users, Stripe subscriptions, metered usage with stored counters, the webhook
-- events the app received and what it fulfilled for them, its own payment records, and an
-- audit log. params/schema/reference.yaml maps these tables for the runbooks.

CREATE TABLE plans (
    code              text PRIMARY KEY,
    name              text NOT NULL,
    monthly_price     integer NOT NULL,           -- minor units, USD
    usage_limit       integer,                    -- events per billing period; NULL = unlimited
    is_paid           boolean NOT NULL
);

CREATE TABLE organizations (
    id                 bigserial PRIMARY KEY,
    name               text NOT NULL,
    plan_code          text NOT NULL REFERENCES plans (code),
    stripe_customer_id text UNIQUE,
    is_blocked         boolean NOT NULL DEFAULT false,   -- the app's quota enforcement
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id               bigserial PRIMARY KEY,
    organization_id  bigint NOT NULL REFERENCES organizations (id),
    email            text NOT NULL UNIQUE,
    name             text NOT NULL,
    role             text NOT NULL DEFAULT 'member',
    last_login_at    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE subscriptions (
    id                      bigserial PRIMARY KEY,
    organization_id         bigint NOT NULL REFERENCES organizations (id),
    stripe_subscription_id  text NOT NULL UNIQUE,
    stripe_price_id         text NOT NULL,
    plan_code               text NOT NULL REFERENCES plans (code),
    status                  text NOT NULL,
    current_period_start    timestamptz NOT NULL,
    current_period_end      timestamptz NOT NULL,
    cancel_at_period_end    boolean NOT NULL DEFAULT false,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE usage_events (
    id               bigserial PRIMARY KEY,
    organization_id  bigint NOT NULL,
    user_id          bigint,
    kind             text NOT NULL,
    quantity         integer NOT NULL DEFAULT 1,
    idempotency_key  text NOT NULL,
    occurred_at      timestamptz NOT NULL
);
CREATE INDEX usage_events_occurred_at_idx ON usage_events (occurred_at);

CREATE TABLE usage_counters (
    organization_id  bigint NOT NULL REFERENCES organizations (id),
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    used             integer NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, period_start)
);

CREATE TABLE webhook_events (
    id                bigserial PRIMARY KEY,
    stripe_event_id   text NOT NULL UNIQUE,
    type              text NOT NULL,
    status            text NOT NULL,              -- received | processed | failed
    error             text,
    raw_body          text,
    signature_header  text,
    received_at       timestamptz NOT NULL DEFAULT now(),
    processed_at      timestamptz
);
CREATE INDEX webhook_events_type_idx ON webhook_events (type);
CREATE INDEX webhook_events_received_at_idx ON webhook_events (received_at);

CREATE TABLE orders (
    id                          bigserial PRIMARY KEY,
    organization_id             bigint NOT NULL REFERENCES organizations (id),
    stripe_event_id             text NOT NULL UNIQUE,
    stripe_checkout_session_id  text,
    stripe_payment_intent_id    text,
    amount                      integer NOT NULL,
    currency                    text NOT NULL,
    status                      text NOT NULL,
    created_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_organization_id_idx ON orders (organization_id);

CREATE TABLE credit_grants (
    id               bigserial PRIMARY KEY,
    organization_id  bigint NOT NULL REFERENCES organizations (id),
    stripe_event_id  text NOT NULL UNIQUE,
    credits          integer NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payments (
    id                  bigserial PRIMARY KEY,
    organization_id     bigint NOT NULL REFERENCES organizations (id),
    stripe_invoice_id   text,
    stripe_charge_id    text UNIQUE,
    amount              integer NOT NULL,
    currency            text NOT NULL,
    status              text NOT NULL,
    paid_at             timestamptz
);

-- integer, not bigint: an old table that the sequence check watches.
CREATE TABLE audit_log (
    id           serial PRIMARY KEY,
    actor        text NOT NULL,
    action       text NOT NULL,
    entity       text NOT NULL,
    entity_id    text,
    details      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
