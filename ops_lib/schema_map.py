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
        rows = select_all(
            conn,
            """
            SELECT c.table_schema, c.table_name, c.column_name
            FROM information_schema.columns c
            WHERE (c.table_schema, c.table_name) IN (SELECT unnest(CAST(:schemas AS text[])), unnest(CAST(:names AS text[])))
            """,
            schemas=[t.schema_and_name[0] for t in wanted],
            names=[t.schema_and_name[1] for t in wanted],
        )
        present: dict[tuple[str, str], set[str]] = {}
        for row in rows:
            present.setdefault((row["table_schema"], row["table_name"]), set()).add(row["column_name"])
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
