"""What the demo plants for service_health (the rows themselves are in schema.sql, so the
build stays one set of statements): a Prisma migration that failed mid-way and was never
resolved. Its controls in the same table — a failed migration rolled back and applied again —
must not be named. The demo's other dependencies are healthy: its PostgreSQL answers at once
with no replicas, WAL archiving is off, the Stripe emulator answers, and no URL is https."""

FAILED_MIGRATION = "20251125080000_organization_region"


def planted() -> dict:
    return {"migrations_not_applied": [FAILED_MIGRATION]}
