"""The schema mapping: where the target app keeps each logical entity opsbook reads.

Entity and column names on the left are opsbook's (``organisations.stripe_customer_id``); the
right-hand side is the app's. Identifiers from the mapping are checked against the live catalog
and quoted before they reach SQL; values are always bound parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from sqlalchemy.engine import Connection

from .db import select_all
from .errors import SchemaMappingError
from .parameters import load_yaml_mapping


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableMap:
    entity: str
    table: str  # "table" or "schema.table"
    columns: dict[str, str]
    # fulfilments only: the paid Stripe event types a row of this table is the fulfilment of
    # (``fulfilled_by:`` in the mapping); empty means the default (paid Checkout Sessions)
    fulfilled_by: tuple[str, ...] = ()

    @property
    def schema_and_name(self) -> tuple[str, str]:
        schema, _, name = self.table.rpartition(".")
        return schema or "public", name

    @property
    def sql_table(self) -> str:
        schema, name = self.schema_and_name
        return f"{quote_ident(schema)}.{quote_ident(name)}"

    def col(self, logical: str) -> str:
        try:
            return quote_ident(self.columns[logical])
        except KeyError:
            raise SchemaMappingError(
                f"the schema mapping has no column {logical!r} for entity {self.entity!r} — add it under "
                f"entities.{self.entity}.columns"
            ) from None

    def has(self, logical: str) -> bool:
        return logical in self.columns

    def select_list(self, logical: Iterable[str], *, required: Iterable[str] = ()) -> str:
        """``<column> AS <logical>, …``: each logical column's mapped column, or ``NULL AS <logical>``
        when the mapping has none; a ``required`` one that is not mapped raises SchemaMappingError."""
        required = set(required)
        return ", ".join(
            f"{self.col(name)} AS {name}" if self.has(name) or name in required else f"NULL AS {name}"
            for name in logical
        )


@dataclass(frozen=True)
class SchemaMap:
    path: Path
    entities: dict[str, tuple[TableMap, ...]]

    @classmethod
    def load(cls, path: Path | str) -> "SchemaMap":
        path = Path(path)
        raw = load_yaml_mapping(
            path, what="schema mapping", error=SchemaMappingError,
            missing_hint=" — set OPSBOOK_SCHEMA to a params/schema/*.yaml file", shape="a mapping with 'entities:'",
        )
        if not isinstance(raw.get("entities"), dict):
            raise SchemaMappingError(f"schema mapping {path} must have an 'entities:' mapping")
        entities: dict[str, tuple[TableMap, ...]] = {}
        for entity, spec in raw["entities"].items():
            specs = spec if isinstance(spec, list) else [spec]
            if not specs:  # no table: every check of the entity would look at nothing and find nothing wrong
                raise SchemaMappingError(f"{path}: entities.{entity} is an empty list — give it a table (table: and "
                                         "columns:), or remove the entity")
            tables = []
            for item in specs:
                if not isinstance(item, dict) or "table" not in item or not isinstance(item.get("columns", {}), dict):
                    raise SchemaMappingError(f"{path}: entities.{entity} needs 'table:' and a 'columns:' mapping")
                fulfilled_by = item.get("fulfilled_by") or []
                if not isinstance(fulfilled_by, list) or not all(isinstance(t, str) and t for t in fulfilled_by):
                    raise SchemaMappingError(f"{path}: entities.{entity}.fulfilled_by must be a list of Stripe event types")
                tables.append(TableMap(entity, str(item["table"]), {str(k): str(v) for k, v in (item.get("columns") or {}).items()},
                                       tuple(fulfilled_by)))
            entities[entity] = tuple(tables)
        return cls(path, entities)

    def tables(self, entity: str) -> tuple[TableMap, ...]:
        try:
            return self.entities[entity]
        except KeyError:
            raise SchemaMappingError(f"{self.path}: no entity {entity!r} — add entities.{entity} to the mapping") from None

    def table(self, entity: str) -> TableMap:
        return self.tables(entity)[0]

    def require_columns(self, needed: Mapping[str, Iterable[str]], reader: str, entities: Iterable[str]) -> None:
        """Each of ``entities``' tables must map the columns ``reader`` reads of it (``needed``:
        entity → logical columns); the first it does not is reported."""
        for entity in entities:
            for t in self.tables(entity):
                for logical in needed.get(entity, ()):
                    if logical not in t.columns:
                        which = f" (table {t.table})" if len(self.entities[entity]) > 1 else ""
                        raise SchemaMappingError(
                            f"{self.path}: entities.{entity}{which} maps no column {logical!r}, which {reader} reads "
                            f"— add it under entities.{entity}.columns"
                        )

    def validate(self, conn: Connection, entities: Iterable[str], *, needed: Mapping[str, Iterable[str]] | None = None,
                 reader: str = "the runbook") -> None:
        """The ``needed`` columns must be mapped, and every table and column the given entities name
        must exist; the first that does not is reported."""
        entities = list(entities)
        self.require_columns(needed or {}, reader, entities)
        wanted = [t for entity in entities for t in self.tables(entity)]
        if not wanted:
            return
        # The catalog, not information_schema: information_schema hides the tables this role may not
        # read, and a missing GRANT would read as a missing table.
        rows = select_all(
            conn,
            """
            SELECT n.nspname AS table_schema, c.relname AS table_name, a.attname AS column_name,
                   has_schema_privilege(n.oid, 'USAGE') AS schema_usable,
                   a.attnum IS NOT NULL AND has_column_privilege(c.oid, a.attnum, 'SELECT') AS column_readable
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
              AND (n.nspname, c.relname) IN (SELECT unnest(CAST(:schemas AS text[])), unnest(CAST(:names AS text[])))
            """,
            schemas=[t.schema_and_name[0] for t in wanted],
            names=[t.schema_and_name[1] for t in wanted],
        )
        present: dict[tuple[str, str], dict[str, bool]] = {}
        usable: dict[tuple[str, str], bool] = {}
        role = select_all(conn, "SELECT current_user AS role")[0]["role"]  # (for the GRANT to give)
        for row in rows:
            key = (row["table_schema"], row["table_name"])
            usable[key] = row["schema_usable"]
            columns = present.setdefault(key, {})
            if row["column_name"] is not None:
                columns[row["column_name"]] = row["column_readable"]
        for t in wanted:
            columns = present.get(t.schema_and_name)
            if columns is None:
                raise SchemaMappingError(
                    f"{self.path}: entities.{t.entity} names table {t.table}, which does not exist in the target database — fix the mapping"
                )
            for logical, actual in t.columns.items():
                if actual not in columns:
                    raise SchemaMappingError(
                        f"{self.path}: entities.{t.entity}.columns.{logical} names column {t.table}.{actual}, "
                        "which does not exist — fix the mapping"
                    )
            schema_name = t.schema_and_name[0]
            if not usable[t.schema_and_name]:
                raise SchemaMappingError(
                    f"the role {role} may not use schema {schema_name}, which holds {t.table} (entities.{t.entity}) "
                    f"— GRANT USAGE ON SCHEMA {quote_ident(schema_name)} TO {quote_ident(role)}"
                )
            unreadable = [actual for actual in t.columns.values() if not columns[actual]]
            if not any(columns[actual] for actual in t.columns.values()) if t.columns else not any(columns.values()):
                raise SchemaMappingError(
                    f"the role {role} lacks SELECT on table {t.table} (entities.{t.entity}) "
                    f"— GRANT SELECT ON {t.sql_table} TO {quote_ident(role)}"
                )
            if unreadable:
                raise SchemaMappingError(
                    f"the role {role} lacks SELECT on column {t.table}.{unreadable[0]} (entities.{t.entity}) "
                    f"— GRANT SELECT ON {t.sql_table} TO {quote_ident(role)}"
                )
