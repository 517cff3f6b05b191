"""Whose code PostgreSQL may run in an opsbook session, and whether planning a statement would run other code.

Planning is not inert. To plan a statement PostgreSQL evaluates IMMUTABLE functions with
constant arguments (and STABLE ones, for estimates), inlines SQL functions, expands views,
rules and row-level security policies, adds column defaults to an INSERT, and loads index
expressions, check constraints and extended statistics of the tables it reads. Every function
that runs there runs as opsbook's role, which can read every table (pg_read_all_data). So a role
that can get one statement into pg_stat_statements could have its function read a table it is
denied, stall the session or change its settings, the moment opsbook shows that statement's plan.

Trusted code is code owned by a superuser or by opsbook's own role: what the server's
administrator installed (trusted extensions included: their scripts run as the bootstrap
superuser, who owns their functions) and what opsbook wrote. Every other function is untrusted,
and so is every object through which planning can reach one. ``untrusted_code`` reads both from
the catalogs; ``reason_not_to_plan`` decides, from a statement's text alone, whether it could
name any of them. It errs towards refusing: a false refusal costs a plan, a false acceptance
runs someone else's code.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from sqlalchemy.engine import Connection

from ..db import select_all, select_value

# --------------------------------------------------------------------------------------------
# Reading the catalogs

#: Functions (aggregates and procedures included) whose owner is neither a superuser nor us.
#: No schema is exempt: whoever owns a function can CREATE OR REPLACE its body.
UNTRUSTED_FUNCTIONS = """
    SELECT 'pg_proc'::regclass::oid AS classid, p.oid AS objid
    FROM pg_proc p
    JOIN pg_roles owner ON owner.oid = p.proowner
    WHERE NOT owner.rolsuper
      AND owner.rolname <> current_user
"""

#: Trusted functions whose body is source text (SQL, PL/pgSQL, ...): calls in such a body leave
#: no trace in pg_depend, so the text itself is read for names (as a statement's would be).
#: A SQL body written with BEGIN ATOMIC has its dependencies recorded, and an empty prosrc.
FUNCTION_BODIES = """
    SELECT 'pg_proc'::regclass::oid AS classid, p.oid AS objid, p.prosrc AS body
    FROM pg_proc p
    JOIN pg_language l ON l.oid = p.prolang
    WHERE l.lanname NOT IN ('internal', 'c')
      AND p.prosrc <> ''
"""

#: One step outwards from objects already known to reach an untrusted function: what depends on
#: them, and what they belong to. Each row says which known object it was reached from.
REACHED_FROM = """
    WITH known AS (
        SELECT * FROM unnest(CAST(:classids AS oid[]), CAST(:objids AS oid[])) AS k(classid, objid)
    )
    -- Whatever refers to a known object: a view's rule, a column default, a policy, a check or
    -- domain constraint, an index or statistics expression, an operator, a cast, an aggregate,
    -- a function's body or argument type, a column's type. Triggers are left out: EXPLAIN
    -- never fires them.
    SELECT k.classid AS from_classid, k.objid AS from_objid, d.classid, d.objid
    FROM known k
    JOIN pg_depend d ON d.refclassid = k.classid AND d.refobjid = k.objid
    WHERE d.classid <> 'pg_trigger'::regclass
    UNION
    -- The relation a rule belongs to (a view, or a table with INSERT/UPDATE/DELETE rules).
    SELECT k.classid, k.objid, 'pg_class'::regclass::oid, r.ev_class
    FROM known k JOIN pg_rewrite r ON k.classid = 'pg_rewrite'::regclass AND r.oid = k.objid
    UNION
    -- The table a column default or generated column belongs to: INSERT and UPDATE plan them.
    SELECT k.classid, k.objid, 'pg_class'::regclass::oid, a.adrelid
    FROM known k JOIN pg_attrdef a ON k.classid = 'pg_attrdef'::regclass AND a.oid = k.objid
    UNION
    -- The table a row-level security policy belongs to: its expressions join every plan.
    SELECT k.classid, k.objid, 'pg_class'::regclass::oid, p.polrelid
    FROM known k JOIN pg_policy p ON k.classid = 'pg_policy'::regclass AND p.oid = k.objid
    UNION
    -- The table of a check constraint (constraint exclusion simplifies it while planning).
    SELECT k.classid, k.objid, 'pg_class'::regclass::oid, c.conrelid
    FROM known k JOIN pg_constraint c ON k.classid = 'pg_constraint'::regclass AND c.oid = k.objid
    WHERE c.contype = 'c' AND c.conrelid <> 0
    UNION
    -- The domain of a domain constraint.
    SELECT k.classid, k.objid, 'pg_type'::regclass::oid, c.contypid
    FROM known k JOIN pg_constraint c ON k.classid = 'pg_constraint'::regclass AND c.oid = k.objid
    WHERE c.contypid <> 0
    UNION
    -- The table of an index: the planner loads (and simplifies) every index expression of a table.
    SELECT k.classid, k.objid, 'pg_class'::regclass::oid, i.indrelid
    FROM known k JOIN pg_index i ON k.classid = 'pg_class'::regclass AND i.indexrelid = k.objid
    UNION
    -- The table of extended statistics on expressions, which the planner also loads.
    SELECT k.classid, k.objid, 'pg_class'::regclass::oid, s.stxrelid
    FROM known k JOIN pg_statistic_ext s ON k.classid = 'pg_statistic_ext'::regclass AND s.oid = k.objid
    UNION
    -- The parent of an inheritance child or partition (or of a partition's index): a query on
    -- the parent plans its children too.
    SELECT k.classid, k.objid, 'pg_class'::regclass::oid, h.inhparent
    FROM known k JOIN pg_inherits h ON k.classid = 'pg_class'::regclass AND h.inhrelid = k.objid
    UNION
    -- The types a cast, or an operator class member, applies to, so that columns and values of
    -- those types count as reaching it; a cast can run without being named. Built-in types
    -- are left out (everything depends on them; only a superuser can add to their casts).
    SELECT k.classid, k.objid, 'pg_type'::regclass::oid, t.oid
    FROM known k
    JOIN pg_cast c ON k.classid = 'pg_cast'::regclass AND c.oid = k.objid
    JOIN pg_type t ON t.oid IN (c.castsource, c.casttarget)
    JOIN pg_namespace n ON n.oid = t.typnamespace AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION
    SELECT k.classid, k.objid, 'pg_type'::regclass::oid, t.oid
    FROM known k
    JOIN pg_amop o ON k.classid = 'pg_amop'::regclass AND o.oid = k.objid
    JOIN pg_type t ON t.oid IN (o.amoplefttype, o.amoprighttype)
    JOIN pg_namespace n ON n.oid = t.typnamespace AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    UNION
    SELECT k.classid, k.objid, 'pg_type'::regclass::oid, t.oid
    FROM known k
    JOIN pg_amproc o ON k.classid = 'pg_amproc'::regclass AND o.oid = k.objid
    JOIN pg_type t ON t.oid IN (o.amproclefttype, o.amprocrighttype)
    JOIN pg_namespace n ON n.oid = t.typnamespace AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""

#: The objects a statement can name (functions, relations, types, operators), each with the
#: untrusted function it reaches. Rules, defaults, policies and the like are named by their table.
NAMED_OBJECTS = """
    WITH reached AS (
        SELECT * FROM unnest(CAST(:classids AS oid[]), CAST(:objids AS oid[]), CAST(:functions AS oid[]))
            AS r(classid, objid, function)
    ),
    named AS (
        SELECT r.function, r.objid, 'function' AS kind, p.pronamespace AS namespace, p.proname AS name
        FROM reached r JOIN pg_proc p ON r.classid = 'pg_proc'::regclass AND p.oid = r.objid
        UNION ALL
        SELECT r.function, r.objid,
               CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table' WHEN 'v' THEN 'view'
                              WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table'
                              WHEN 'S' THEN 'sequence' WHEN 'c' THEN 'type' END,
               c.relnamespace, c.relname
        FROM reached r JOIN pg_class c ON r.classid = 'pg_class'::regclass AND c.oid = r.objid
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S', 'c')  -- indexes and TOAST are never named
        UNION ALL
        SELECT r.function, r.objid, 'type', t.typnamespace, t.typname
        FROM reached r JOIN pg_type t ON r.classid = 'pg_type'::regclass AND t.oid = r.objid
        UNION ALL
        SELECT r.function, r.objid, 'operator', o.oprnamespace, o.oprname
        FROM reached r JOIN pg_operator o ON r.classid = 'pg_operator'::regclass AND o.oid = r.objid
    )
    SELECT DISTINCT
        named.kind,
        n.nspname AS schema,
        named.name,
        named.kind = 'function' AND named.objid = named.function AS untrusted_itself,
        fn.nspname || '.' || f.proname || '(' || pg_get_function_identity_arguments(f.oid) || ')' AS function,
        pg_get_userbyid(f.proowner) AS owner,
        f.oid AS function_oid
    FROM named
    JOIN pg_namespace n ON n.oid = named.namespace
    JOIN pg_proc f ON f.oid = named.function
    JOIN pg_namespace fn ON fn.oid = f.pronamespace
    ORDER BY named.kind, schema, named.name, function
"""


@dataclass(frozen=True)
class UntrustedObject:
    """Something a statement may name that runs, or can run, an untrusted function."""

    kind: str  # function, table, view, materialized view, type, operator, ...
    schema: str
    name: str  # as stored in the catalog; an operator's symbol
    untrusted_itself: bool  # the untrusted function itself, not a way to reach one
    function: str  # the untrusted function it reaches, e.g. "mallory.peek()"
    owner: str  # that function's owner

    @property
    def reason(self) -> str:
        distrust = f"owned by role {self.owner}, which opsbook does not trust"
        if self.untrusted_itself:
            return f"calls function {self.function} {distrust}"
        verb = "calls" if self.kind == "function" else "uses"
        return f"{verb} {self.kind} {self.schema}.{self.name}, which can call function {self.function} {distrust}"


@dataclass(frozen=True)
class UntrustedCode:
    """What an opsbook session must not plan: untrusted functions and every way to reach one."""

    role: str  # the role opsbook runs as (trusted, as are superusers)
    objects: tuple[UntrustedObject, ...] = ()

    @cached_property
    def names(self) -> dict[str, UntrustedObject]:
        """Identifier (lower case) -> the object to cite; functions first, then relations, then types."""
        rank = {"function": 0, "operator": 1, "type": 3}
        chosen: dict[str, UntrustedObject] = {}
        for obj in sorted(self.objects, key=lambda o: (rank.get(o.kind, 2), o.schema, o.name)):
            if obj.kind != "operator":
                chosen.setdefault(obj.name.lower(), obj)
        return chosen

    @cached_property
    def operators(self) -> dict[str, UntrustedObject]:
        """Operator symbol -> the object to cite."""
        chosen: dict[str, UntrustedObject] = {}
        for obj in self.objects:
            if obj.kind == "operator":
                chosen.setdefault(obj.name, obj)
        return chosen


def untrusted_code(conn: Connection) -> UntrustedCode:
    """Untrusted functions in this database, and the relations, types, operators and functions that reach them."""
    role = select_value(conn, "SELECT current_user")
    # Which untrusted function each object reaches (the first found, by oid).
    reaches: dict[tuple[int, int], int] = {
        (row["classid"], row["objid"]): row["objid"] for row in select_all(conn, UNTRUSTED_FUNCTIONS)
    }
    new = list(reaches)
    bodies = None
    while True:
        _walk_outwards(conn, reaches, new)
        if not reaches:
            return UntrustedCode(role=role)
        keys = list(reaches)
        rows = select_all(
            conn,
            NAMED_OBJECTS,
            classids=[c for c, _ in keys],
            objids=[o for _, o in keys],
            functions=[reaches[key] for key in keys],
        )
        function_oids = {row["function"]: row.pop("function_oid") for row in rows}
        code = UntrustedCode(role=role, objects=tuple(UntrustedObject(**row) for row in rows))
        # Trusted functions whose source text names any of these reach them too; and then so
        # does whatever uses those functions.
        bodies = bodies if bodies is not None else select_all(conn, FUNCTION_BODIES)
        new = []
        for body in bodies:
            key = (body["classid"], body["objid"])
            mentioned = None if key in reaches else _first_mention(body["body"], code)
            if mentioned is not None:
                reaches[key] = function_oids[mentioned.function]
                new.append(key)
        if not new:
            return code


def _walk_outwards(conn: Connection, reaches: dict[tuple[int, int], int], new: list[tuple[int, int]]) -> None:
    """Add to ``reaches`` everything that depends on, or holds, an object in it, starting from
    ``new``, one step at a time until a step finds nothing more."""
    while new:
        steps = select_all(conn, REACHED_FROM, classids=[c for c, _ in new], objids=[o for _, o in new])
        new = []
        for step in steps:
            target = (step["classid"], step["objid"])
            if target not in reaches:
                reaches[target] = reaches[(step["from_classid"], step["from_objid"])]
                new.append(target)


# --------------------------------------------------------------------------------------------
# Deciding from a statement's text

#: Built-in functions that run SQL, or read whole tables, schemas or databases, or parse a value
#: as a type named in a string, chosen at run time: what they reach cannot be read from the text.
RUNS_OTHER_SQL = frozenset({
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema",
    "cursor_to_xml", "cursor_to_xmlschema",
    "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema",
    "schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema",
    "database_to_xml", "database_to_xmlschema", "database_to_xml_and_xmlschema",
    "ts_stat", "ts_rewrite", "pg_input_is_valid", "pg_input_error_info",
})

#: SQL syntax that makes the parser look an operator up by name without its symbol in the text.
IMPLIED_OPERATORS = {
    "in": ("=", "<>"),  # x IN (...), x NOT IN (...)
    "using": ("=",),  # JOIN ... USING (col)
    "natural": ("=",),  # NATURAL JOIN
    "case": ("=",),  # CASE x WHEN y
    "nullif": ("=",),
    "distinct": ("=",),  # IS [NOT] DISTINCT FROM
    "between": (">=", "<=", "<", ">"),
    "like": ("~~", "!~~"),
    "ilike": ("~~*", "!~~*"),
    "similar": ("~", "!~"),
}

# Identifiers as PostgreSQL reads them (a letter or _, then letters, digits, _ and $), and the
# same split at every $ too: "$" also opens and closes dollar quotes ($q$peek$q$peek). Python's
# \w is a subset of what PostgreSQL accepts in a name (it adds every non-ASCII byte), so a run
# of \w never glues together two words PostgreSQL would read apart.
_WORDS = re.compile(r"[^\W\d][\w$]*")
_WORD_PIECES = re.compile(r"[^\W\d]\w*")
_OPERATOR_RUNS = re.compile(r"[+\-*/<>=~!@#%^&|`?]+")
_UNICODE_IDENTIFIER = re.compile(r'u&"', re.IGNORECASE)


def _mentions(text: str, name: str) -> bool:
    """``name`` appears in ``text`` as a whole word, in any case, quoted or not.

    The whole text is searched, string literals and comments included: no lexer of ours can
    then disagree with PostgreSQL's about where a comment or a string ends. A quoted name with
    a double quote in it is written with the quote doubled.
    """
    spellings = {name, name.replace('"', '""')}
    return any(
        re.search(rf"(?<!\w){re.escape(spelling)}(?!\w)", text, re.IGNORECASE)
        for spelling in spellings
    )


def _words(text: str) -> set[str]:
    return {word.lower() for pattern in (_WORDS, _WORD_PIECES) for word in pattern.findall(text)}


def _first_mention(text: str, untrusted: UntrustedCode, words: set[str] | None = None) -> UntrustedObject | None:
    """The first untrusted object ``text`` may name, or None."""
    words = _words(text) if words is None else words
    for name, obj in untrusted.names.items():
        # A plain word is enough for most names (unquoted ones fold to lower case); a name no
        # plain word can spell (spaces, punctuation, quotes) can only appear quoted.
        if name in words or (not _WORDS.fullmatch(name) and _mentions(text, obj.name)):
            return obj
    if untrusted.operators:
        runs = _OPERATOR_RUNS.findall(text)
        implied = {symbol for word in words & IMPLIED_OPERATORS.keys() for symbol in IMPLIED_OPERATORS[word]}
        for symbol, obj in sorted(untrusted.operators.items()):
            # PostgreSQL splits a run of operator characters into tokens, each a piece of the
            # run: a symbol inside a run may be one of them.
            if symbol in implied or any(symbol in run for run in runs):
                return obj
    return None


def reason_not_to_plan(text: str, untrusted: UntrustedCode) -> str | None:
    """Why planning ``text`` could run untrusted code (None when it cannot).

    Conservative by design: any word of the text that is the name of an untrusted function,
    or of a relation, type or function that reaches one, refuses it, whatever its schema or
    case and wherever it stands; so does any operator symbol that an untrusted operator has,
    written or implied (IN implies ``=``, LIKE ``~~``, ...).
    """
    if _UNICODE_IDENTIFIER.search(text):
        return 'names an identifier in Unicode escapes (U&"…"), which opsbook cannot check against untrusted code'
    words = _words(text)
    runs_sql = sorted(words & RUNS_OTHER_SQL)
    if runs_sql:
        return f"calls {runs_sql[0]}(), which runs SQL chosen at run time that opsbook cannot check for untrusted code"
    mentioned = _first_mention(text, untrusted, words)
    return mentioned.reason if mentioned is not None else None
