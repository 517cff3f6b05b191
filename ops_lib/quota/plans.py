"""Plans and their limits, and the Stripe price → plan mapping, as data.

Two sources, one ``PlanBook``:

* ``params/quota/plans.yaml`` (or any file given as ``plans_file``): plan codes with their usage
  limit per billing period and whether they are paid, and how Stripe prices map to plans
  (by price id, by product id, then by the price's ``metadata["plan"]`` or ``lookup_key``);
* the target's own plan table, when the schema mapping names a ``plans`` entity with
  ``code``, ``usage_limit`` and ``is_paid`` columns: that is what the app enforces, so by default
  (``limits="auto"``) its limits win, and each plan on which the file disagrees is noted.

A price that no rule maps is not guessed: ``plan_for_price`` returns None and the runbook
reports the subscriptions on it.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from sqlalchemy.engine import Connection

from .. import paths
from ..db import select_all
from ..errors import ConfigurationError
from ..findings import rows_to_html
from ..parameters import load_yaml_mapping
from ..schema_map import SchemaMap

DEFAULT_PLANS_FILE = "params/quota/plans.yaml"
LIMIT_SOURCES = ("auto", "database", "params")


@dataclass(frozen=True)
class Plan:
    code: str
    name: str
    usage_limit: int | None  # units per billing period; None: unlimited
    is_paid: bool | None  # None only while reading a plan table without an is_paid column
    source: str  # "params" or "database"


@dataclass
class PlanBook:
    plans: dict[str, Plan]
    prices: dict[str, str] = field(default_factory=dict)    # Stripe price id -> plan code
    products: dict[str, str] = field(default_factory=dict)  # Stripe product id -> plan code
    source: str = "params"
    path: Path | None = None
    notes: list[str] = field(default_factory=list)

    def get(self, code: str | None) -> Plan | None:
        return self.plans.get(code) if code is not None else None

    def limit(self, code: str | None) -> int | None:
        plan = self.get(code)
        return plan.usage_limit if plan else None

    def is_paid(self, code: str | None) -> bool | None:
        plan = self.get(code)
        return plan.is_paid if plan else None

    def plan_for_price(self, price: Mapping[str, Any] | str | None) -> str | None:
        """The plan a Stripe price sells, or None when no rule knows the price."""
        if price is None:
            return None
        if isinstance(price, str):
            return self.prices.get(price)
        if price.get("id") in self.prices:
            return self.prices[price["id"]]
        product = price.get("product")
        product_id = product.get("id") if isinstance(product, Mapping) else product
        if product_id in self.products:
            return self.products[product_id]
        for candidate in ((price.get("metadata") or {}).get("plan"), price.get("lookup_key")):
            if candidate in self.plans:
                return candidate
        return None

    def plan_for_subscription(self, subscription: Mapping[str, Any]) -> tuple[str | None, list[str]]:
        """(plan of the first item whose price maps to a plan, the price ids of the items)."""
        prices = [item.get("price") or {} for item in (subscription.get("items") or {}).get("data", [])]
        price_ids = [p.get("id") for p in prices if p.get("id")]
        for price in prices:
            plan = self.plan_for_price(price)
            if plan is not None:
                return plan, price_ids
        return None, price_ids

    def rows(self) -> list[dict]:
        by_plan: dict[str, list[str]] = {}
        for price, plan in self.prices.items():
            by_plan.setdefault(plan, []).append(price)
        for product, plan in self.products.items():
            by_plan.setdefault(plan, []).append(f"{product} (any price)")
        return [
            {"plan": p.code, "name": p.name, "usage_limit": p.usage_limit, "paid": p.is_paid,
             "limit_from": p.source, "stripe_prices": ", ".join(by_plan.get(p.code, [])) or "—"}
            for p in self.plans.values()
        ]

    def _repr_html_(self) -> str:
        where = f"limits from {html.escape(self.source)}"
        if self.path is not None:
            where += f"; price mapping from <code>{html.escape(_display(self.path))}</code>"
        notes = "".join(f"<div><i>{html.escape(n)}</i></div>" for n in self.notes)
        return f"<div>{where}</div>{notes}{rows_to_html(self.rows())}"


def resolve_path(path: str | Path | None) -> Path:
    """``plans_file`` as given: absolute, or relative to the project (never to the kernel's cwd)."""
    candidate = Path(path or DEFAULT_PLANS_FILE).expanduser()
    return candidate if candidate.is_absolute() else paths.project_root() / candidate


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(paths.project_root()))
    except ValueError:
        return str(path)


def read_plans_file(path: str | Path | None = None) -> dict:
    """The file's plans and Stripe mapping, checked: one clear line for anything wrong."""
    path = resolve_path(path)
    raw = load_yaml_mapping(
        path, what="plans file", error=ConfigurationError,
        missing_hint=f" — set plans_file to a file like {DEFAULT_PLANS_FILE}", shape="a mapping with 'plans:' and 'stripe:'",
    )
    plans: dict[str, Plan] = {}
    for code, spec in (raw.get("plans") or {}).items():
        if not isinstance(spec, dict):
            raise ConfigurationError(f"{path}: plans.{code} must be a mapping like {{usage_limit: 1000, paid: false}}")
        limit = spec.get("usage_limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ConfigurationError(f"{path}: plans.{code}.usage_limit must be a whole number ≥ 0 or null (unlimited), not {limit!r}")
        if not isinstance(spec.get("paid", False), bool):
            raise ConfigurationError(f"{path}: plans.{code}.paid must be true or false")
        plans[str(code)] = Plan(str(code), str(spec.get("name") or code), limit, bool(spec.get("paid", False)), "params")
    stripe = raw.get("stripe") or {}
    if not isinstance(stripe, dict):
        raise ConfigurationError(f"{path}: stripe must be a mapping with 'prices:' and/or 'products:'")
    mapping = {}
    for kind in ("prices", "products"):
        entries = stripe.get(kind) or {}
        if not isinstance(entries, dict):
            raise ConfigurationError(f"{path}: stripe.{kind} must map Stripe ids to plan codes")
        mapping[kind] = {str(k): str(v) for k, v in entries.items()}
    return {"path": path, "plans": plans, **mapping}


def read_plan_table(conn: Connection, schema: SchemaMap) -> dict[str, Plan]:
    """The target's own plan table through the mapping (``plans``: code, usage_limit, is_paid)."""
    table = schema.table("plans")
    schema.validate(conn, ["plans"])
    name = f"{table.col('name')}" if table.has("name") else table.col("code")
    paid = table.col("is_paid") if table.has("is_paid") else "NULL"
    rows = select_all(
        conn,
        f"SELECT {table.col('code')}::text AS code, {name}::text AS name, {table.col('usage_limit')} AS usage_limit, "
        f"{paid} AS is_paid FROM {table.sql_table}",
    )
    return {
        r["code"]: Plan(r["code"], r["name"] or r["code"], None if r["usage_limit"] is None else int(r["usage_limit"]),
                        bool(r["is_paid"]) if r["is_paid"] is not None else None, "database")
        for r in rows
    }


def _has_plan_table(schema: SchemaMap) -> bool:
    tables = schema.entities.get("plans") or ()
    return bool(tables) and tables[0].has("code") and tables[0].has("usage_limit")


def load_plans(conn: Connection | None, schema: SchemaMap | None, plans_file: str | Path | None = None, *,
               limits: str = "auto") -> PlanBook:
    """The plans in force and the Stripe price → plan mapping.

    ``limits``: ``auto`` (the target's plan table when the mapping names one, else the file),
    ``database`` (the table, required) or ``params`` (the file only).
    """
    if limits not in LIMIT_SOURCES:
        raise ConfigurationError(f"plan_limits must be one of {', '.join(LIMIT_SOURCES)}, not {limits!r}")
    parsed = read_plans_file(plans_file)
    book = PlanBook(plans=dict(parsed["plans"]), prices=parsed["prices"], products=parsed["products"],
                    source=f"{_display(parsed['path'])}", path=parsed["path"])
    use_table = limits == "database" or (limits == "auto" and schema is not None and _has_plan_table(schema))
    if use_table:
        if schema is None or conn is None or not _has_plan_table(schema):
            raise ConfigurationError(
                "plan_limits=database needs a `plans` entity with code and usage_limit columns in the schema mapping "
                "— add it, or use plan_limits=params")
        table_plans = read_plan_table(conn, schema)
        for code, plan in list(table_plans.items()):
            if plan.is_paid is None:  # the table does not say: the file does, else unpaid
                from_file = parsed["plans"].get(code)
                table_plans[code] = Plan(code, plan.name, plan.usage_limit, bool(from_file and from_file.is_paid), "database")
        for code, from_file in parsed["plans"].items():
            in_table = table_plans.get(code)
            if in_table is None:
                book.notes.append(f"plan {code!r} is in {_display(parsed['path'])} but not in the target's plan table: the file's limit is used")
                table_plans[code] = from_file
            elif (in_table.usage_limit, in_table.is_paid) != (from_file.usage_limit, from_file.is_paid):
                book.notes.append(
                    f"plan {code!r}: the target's plan table says limit {in_table.usage_limit}, paid {in_table.is_paid}; "
                    f"{_display(parsed['path'])} says {from_file.usage_limit}, {from_file.is_paid} — the table's (what the app enforces) is used")
        book.plans = table_plans
        book.source = f"the target's plan table {schema.table('plans').table}"
    if not book.plans:
        raise ConfigurationError(f"no plans: {_display(parsed['path'])} lists none and the target has no plan table in the mapping")
    for kind, mapping in (("prices", book.prices), ("products", book.products)):
        unknown = sorted({plan for plan in mapping.values() if plan not in book.plans})
        if unknown:
            book.notes.append(f"stripe.{kind} maps to plan(s) {', '.join(unknown)} that no plan list defines")
    return book
