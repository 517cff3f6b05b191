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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from sqlalchemy.engine import Connection

from .. import paths
from ..db import select_all
from ..errors import ConfigurationError
from ..findings import rows_to_html
from ..literal import html_text, inert
from ..parameters import load_yaml_mapping, quote, show_path
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
        return self.plan_for_prices([item.get("price") for item in (subscription.get("items") or {}).get("data", [])])

    def plan_for_prices(self, prices: Iterable[Mapping[str, Any] | None]) -> tuple[str | None, list[str]]:
        """(plan of the first of a subscription's item prices that maps to a plan, their ids)."""
        prices = [price if isinstance(price, (Mapping, str)) else {} for price in prices]
        price_ids = [p for p in (p if isinstance(p, str) else p.get("id") for p in prices) if p]
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
        # plan codes, names and the table's name come from the target: literal text only
        where = f"limits from {html_text(self.source)}"
        if self.path is not None:
            where += f"; price mapping from <code>{html_text(_display(self.path))}</code>"
        notes = "".join(f"<div><i>{html_text(n, limit=2000)}</i></div>" for n in self.notes)
        return inert(f"<div>{where}</div>{notes}{rows_to_html(self.rows())}")


def resolve_path(path: str | Path | None) -> Path:
    """``plans_file`` as given: absolute, or relative to the project (never to the kernel's cwd)."""
    candidate = Path(path or DEFAULT_PLANS_FILE).expanduser()
    return candidate if candidate.is_absolute() else paths.project_root() / candidate


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(paths.project_root()))
    except ValueError:
        return str(path)


PLAN_KEYS = ("name", "usage_limit", "paid")
MAX_USAGE_LIMIT = 2**63 - 1  # PostgreSQL bigint: the largest counter a target can store


def _key(key: Any) -> str:
    """A YAML key as a message names it: clipped, on one line."""
    text = quote(str(key), 40)
    return text[1:-1] if text.startswith("'") and text.endswith("'") else text


def read_plans_file(path: str | Path | None = None) -> dict:
    """The file's plans and Stripe mapping, checked: one clear line for anything wrong."""
    path = resolve_path(path)
    raw = load_yaml_mapping(
        path, what="plans file", error=ConfigurationError,
        missing_hint=f" — set plans_file to a file like {DEFAULT_PLANS_FILE}", shape="a mapping with 'plans:' and 'stripe:'",
    )
    shown = show_path(path)
    example = f"as in {DEFAULT_PLANS_FILE}"
    unknown = [str(k) for k in raw if k not in ("plans", "stripe")]
    if unknown:
        raise ConfigurationError(f"plans file {shown}: unknown key {quote(unknown[0])} — it takes 'plans:' and 'stripe:', {example}")
    if raw.get("plans") is None:
        raise ConfigurationError(f"plans file {shown} has no 'plans:' — list each plan code with its usage_limit and paid, {example}")
    if not isinstance(raw["plans"], dict) or not raw["plans"]:
        raise ConfigurationError(f"plans file {shown}: 'plans:' must map each plan code to {{usage_limit: 1000, paid: false}}, {example}")
    plans: dict[str, Plan] = {}
    for code, spec in raw["plans"].items():
        where = f"plans file {shown}: plans.{_key(code)}"
        if not isinstance(spec, dict):
            raise ConfigurationError(f"{where} must be a mapping like {{usage_limit: 1000, paid: false}}")
        extra = [str(k) for k in spec if k not in PLAN_KEYS]
        if extra:
            raise ConfigurationError(f"{where}: unknown key {quote(extra[0])} — a plan takes {', '.join(PLAN_KEYS)}")
        if "usage_limit" not in spec:
            raise ConfigurationError(f"{where} needs usage_limit: a whole number ≥ 0, or null for unlimited")
        limit = spec["usage_limit"]
        if isinstance(limit, float) and limit.is_integer() and limit >= 0:
            limit = int(limit)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_USAGE_LIMIT):
            raise ConfigurationError(f"{where}.usage_limit must be a whole number ≥ 0 or null (unlimited), not {quote(limit)}")
        if not isinstance(spec.get("paid", False), bool):
            raise ConfigurationError(f"{where}.paid must be true or false, not {quote(spec['paid'])}")
        name = spec.get("name")
        if name is not None and not isinstance(name, (str, int, float)):
            raise ConfigurationError(f"{where}.name must be a text, not {quote(name)}")
        plans[str(code)] = Plan(str(code), str(name or code), limit, bool(spec.get("paid", False)), "params")
    stripe = raw.get("stripe") or {}
    if not isinstance(stripe, dict):
        raise ConfigurationError(f"plans file {shown}: stripe must be a mapping with 'prices:' and/or 'products:'")
    unknown = [str(k) for k in stripe if k not in ("prices", "products")]
    if unknown:
        raise ConfigurationError(f"plans file {shown}: stripe has unknown key {quote(unknown[0])} — it takes 'prices:' and 'products:'")
    mapping = {}
    for kind in ("prices", "products"):
        entries = stripe.get(kind) or {}
        if not isinstance(entries, dict):
            raise ConfigurationError(f"plans file {shown}: stripe.{kind} must map Stripe ids to plan codes")
        for stripe_id, plan in entries.items():
            if not isinstance(plan, (str, int)) or isinstance(plan, bool):
                raise ConfigurationError(f"plans file {shown}: stripe.{kind}.{_key(stripe_id)} "
                                         f"must name a plan code, not {quote(plan)}")
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
