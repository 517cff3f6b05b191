"""The app's migration table, mapped like every other table (entity ``migrations``; e.g. Prisma's
``_prisma_migrations``): migrations that started and never finished, failed ones, and names the
deployed code expects that were never applied."""
from __future__ import annotations

from typing import Sequence

from sqlalchemy.engine import Connection

from ..db import select_all
from ..errors import SchemaMappingError
from ..findings import Finding
from ..schema_map import SchemaMap

LOG_CHARS = 500  # of a failed migration's log, shown literally


def migrations_not_applied(conn: Connection, schema: SchemaMap, *, expected: Sequence[str] = ()) -> Finding:
    """Rows not finished (``finished_at`` empty) and not rolled back, and ``expected`` names
    missing from the table: the app runs against a schema its code does not expect."""
    check = "migrations_not_applied"
    try:
        table = schema.table("migrations")
    except SchemaMappingError:
        return Finding(check, "ok", "Not checked: the schema mapping has no migrations entity",
                       note="Map entities.migrations (e.g. table _prisma_migrations, columns name: migration_name, "
                       "started_at, finished_at, rolled_back_at, logs) to check migrations.")
    name, finished = table.col("name"), table.col("finished_at")
    started = f"m.{table.col('started_at')}" if table.has("started_at") else "NULL"
    logs = f"left(m.{table.col('logs')}, {LOG_CHARS})" if table.has("logs") else "NULL"
    not_rolled_back = f"m.{table.col('rolled_back_at')} IS NULL" if table.has("rolled_back_at") else "true"
    # (PostgreSQL refuses a constant in ORDER BY: without started_at, by name alone)
    order = f"{started} NULLS LAST, m.{name}" if table.has("started_at") else f"m.{name}"
    unfinished = select_all(
        conn,
        f"SELECT m.{name} AS migration, {started} AS started_at, {logs} AS logs "
        f"FROM {table.sql_table} m WHERE m.{finished} IS NULL AND {not_rolled_back} "
        # a failed migration applied again later under the same name is resolved
        f"AND NOT EXISTS (SELECT 1 FROM {table.sql_table} d WHERE d.{name} = m.{name} AND d.{finished} IS NOT NULL) "
        f"ORDER BY {order}",
    )
    rows = [{**r, "problem": "started, never finished (failed)"} for r in unfinished]
    if expected:
        present = {r["migration"] for r in select_all(
            conn, f"SELECT DISTINCT {name} AS migration FROM {table.sql_table} WHERE {finished} IS NOT NULL "
                  f"AND {name} = ANY(CAST(:names AS text[]))", names=list(expected))}
        failed = {r["migration"] for r in rows}
        rows += [{"migration": m, "started_at": None, "logs": None, "problem": "expected by the code, never applied"}
                 for m in expected if m not in present and m not in failed]
    return Finding.from_rows(
        check, rows, severity="critical",
        title=f"{len(rows)} migration(s) not applied: the database is not at the schema the code expects",
        ok_title="Every migration in the table finished" + (f", and all {len(expected)} expected ones are applied"
                                                            if expected else ""),
        item="migration",
        remediation="Read the failed migration's log, fix it, then resolve it the tool's way (Prisma: "
        "`prisma migrate resolve --rolled-back NAME` after repairing, then `prisma migrate deploy`); apply the "
        "missing ones with the deploy step that skipped them.",
    )
