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

-- What the app took back for a refund or a dispute (its charge.refunded / charge.dispute.created
-- handler): one row per refund or dispute event, naming the payment it reverses.
CREATE TABLE fulfilment_reversals (
    id                        bigserial PRIMARY KEY,
    organization_id           bigint NOT NULL REFERENCES organizations (id),
    stripe_event_id           text NOT NULL UNIQUE,
    stripe_payment_intent_id  text NOT NULL,
    credits_reversed          integer NOT NULL DEFAULT 0,
    created_at                timestamptz NOT NULL DEFAULT now()
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

-- The app's migrations, as Prisma records them (mapped as entity migrations). Planted: one that
-- failed mid-way and was never resolved (migrations_not_applied); controls: one that failed, was
-- rolled back and applied again, and one retried under the same name after a failure.
CREATE TABLE _prisma_migrations (
    id                   varchar(36) PRIMARY KEY,
    checksum             varchar(64) NOT NULL,
    finished_at          timestamptz,
    migration_name       varchar(255) NOT NULL,
    logs                 text,
    rolled_back_at       timestamptz,
    started_at           timestamptz NOT NULL DEFAULT now(),
    applied_steps_count  integer NOT NULL DEFAULT 0
);
INSERT INTO _prisma_migrations (id, checksum, migration_name, started_at, finished_at, rolled_back_at, logs, applied_steps_count) VALUES
    ('00000000-0000-4000-8000-000000000001', md5('init'), '20240102090000_init',
     now() - interval '700 days', now() - interval '700 days' + interval '2 seconds', NULL, NULL, 1),
    ('00000000-0000-4000-8000-000000000002', md5('usage'), '20250310120000_usage_counters',
     now() - interval '260 days', now() - interval '260 days' + interval '3 seconds', NULL, NULL, 1),
    ('00000000-0000-4000-8000-000000000003', md5('grants-1'), '20251020090000_credit_grants',
     now() - interval '40 days', NULL, now() - interval '40 days' + interval '1 hour',
     'Migration failed: relation "credit_grants" already exists', 0),
    ('00000000-0000-4000-8000-000000000004', md5('grants-2'), '20251020090000_credit_grants',
     now() - interval '40 days' + interval '2 hours', now() - interval '40 days' + interval '2 hours 1 second', NULL, NULL, 1),
    ('00000000-0000-4000-8000-000000000005', md5('reversals'), '20251101100000_fulfilment_reversals',
     now() - interval '20 days', now() - interval '20 days' + interval '1 second', NULL, NULL, 1),
    ('00000000-0000-4000-8000-000000000006', md5('region'), '20251125080000_organization_region',
     now() - interval '3 days', NULL, NULL,
     E'Database error code: 23502\nERROR: column "region" of relation "organizations" contains null values', 0);

-- Background jobs' history, purged daily; autovacuum was turned off on it during an incident
-- and never turned back on: it carries dead rows and empty space (vacuum_lag, table_bloat).
CREATE TABLE job_runs (
    id          bigint NOT NULL,
    job         text NOT NULL,
    output      text,
    finished_at timestamptz NOT NULL
) WITH (autovacuum_enabled = false);

-- Generated export files, loaded in bulk by a job with autovacuum off: never analysed (never_analyzed).
CREATE TABLE export_files (
    id               bigint NOT NULL,
    organization_id  bigint NOT NULL,
    path             text NOT NULL,
    created_at       timestamptz NOT NULL
) WITH (autovacuum_enabled = false);
