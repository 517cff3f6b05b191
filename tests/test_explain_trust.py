"""Showing a plan must not run someone else's code (issue 8).

A hostile role, mallory, owns functions that read a table she is denied and publish it in the
session's application_name. She gets them into pg_stat_statements by running ordinary-looking
statements: calling one directly, through a view of a view, through an operator, through a
column default, and as a zero-argument function. Then the slow_queries runbook plans the worst
statements as production runs it: a non-superuser role with pg_monitor and pg_read_all_data.
``track_functions = 'all'`` counts every call of her functions, planning included; the count must
not move, and each plan row must say why it was not explained.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import psycopg2
import pytest
import sqlalchemy as sa

from ops_lib.db import make_engine, server_version_num
from ops_lib.postgres import queries
from ops_lib.postgres.trust import UntrustedCode, UntrustedObject, reason_not_to_plan, untrusted_code

# Reads a table its owner is denied (as whoever runs it), and publishes it where its owner can
# see it (pg_stat_activity.application_name). In mallory's own session the read is refused and
# the function quietly does nothing, so that her statements succeed and are recorded.
LEAKY_BODY = """
    DECLARE leaked text;
    BEGIN
        BEGIN
            SELECT secret INTO leaked FROM public.secrets ORDER BY id LIMIT 1;
        EXCEPTION WHEN insufficient_privilege THEN
            leaked = NULL;
        END;
        IF leaked IS NOT NULL THEN
            PERFORM set_config('application_name', 'leaked: ' || leaked, false);
        END IF;
        RETURN {result};
    END
"""


@dataclass
class Hostile:
    database: object
    mallory: str
    monitor: str
    monitor_url: str
    #: what mallory ran, by the way it reaches her code
    statements: dict[str, str]
    #: a piece of each statement's normalised text that tells it apart
    fragments: dict[str, str]
    #: the reason each plan row must give
    reasons: dict[str, str]
    #: her functions, as pg_stat_user_functions names them
    functions: tuple[str, ...]


def version(database) -> int:
    with database.admin.connect() as conn:
        return server_version_num(conn)


def function_calls(database) -> dict[str, int]:
    """Calls per function, from a new connection (so a fresh statistics snapshot)."""
    rows = database.execute("SELECT schemaname || '.' || funcname, calls FROM pg_stat_user_functions").all()
    return {name: calls for name, calls in rows}


def flush_statistics(conn) -> None:
    """Make this session's pending function counts visible to others now (PostgreSQL 15+)."""
    conn.execute(sa.text("SELECT pg_stat_force_next_flush()"))


def create_monitor(database) -> tuple[str, str]:
    """The role production runs opsbook as: not a superuser; pg_monitor and pg_read_all_data."""
    monitor, password = f"monitor_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    database.execute(f"CREATE ROLE {monitor} LOGIN PASSWORD '{password}'")
    database.execute(f"GRANT pg_monitor, pg_read_all_data TO {monitor}")
    return monitor, database.cluster.url(database.name, monitor, password)


def drop_roles(database, *roles: str) -> None:
    for role in roles:
        database.execute(f"DROP OWNED BY {role} CASCADE")
        database.execute(f"DROP ROLE {role}")


@pytest.fixture
def hostile(database):
    db = database
    mallory, password = f"mallory_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    # Function calls are counted from the next session on, planning included.
    db.execute(f'ALTER DATABASE "{db.name}" SET track_functions = \'all\'')
    db.execute(
        "CREATE TABLE secrets (id int PRIMARY KEY, secret text);"
        "INSERT INTO secrets VALUES (1, 'hunter2');"
        "CREATE TABLE items (id int PRIMARY KEY, name text);"
        "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g;"
        "ANALYZE items"
    )
    db.execute(f"CREATE ROLE {mallory} LOGIN PASSWORD '{password}'")
    db.execute(f"CREATE SCHEMA {mallory} AUTHORIZATION {mallory}")
    # As every role could, on a database created before PostgreSQL 15.
    db.execute(f"GRANT CREATE ON SCHEMA public TO {mallory}; GRANT SELECT ON items TO {mallory}")
    db.execute(
        f"SET ROLE {mallory};"
        # (a) called directly, schema-qualified
        f"CREATE FUNCTION {mallory}.peek() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $${LEAKY_BODY.format(result=1)}$$;"
        # (b) inside a view, read through another view
        f"CREATE FUNCTION {mallory}.peek_view() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $${LEAKY_BODY.format(result=1)}$$;"
        f"CREATE VIEW public.peeks AS SELECT id, name FROM public.items WHERE {mallory}.peek_view() = 1;"
        "CREATE VIEW public.recent_peeks AS SELECT id, name FROM public.peeks;"
        # (c) behind an operator
        "CREATE FUNCTION public.peek_op(float8, float8) RETURNS bool LANGUAGE plpgsql IMMUTABLE"
        f" AS $${LEAKY_BODY.format(result='true')}$$;"
        "CREATE OPERATOR public.=== (LEFTARG = float8, RIGHTARG = float8, FUNCTION = public.peek_op);"
        # (d) a column default, which every INSERT that leaves the column out plans
        f"CREATE FUNCTION public.stamp() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $${LEAKY_BODY.format(result=1)}$$;"
        "CREATE TABLE public.notes (id serial PRIMARY KEY, body text, stamped int DEFAULT public.stamp());"
        # (e) a zero-argument function with a quoted, mixed-case name
        'CREATE FUNCTION public."Whoami"() RETURNS text LANGUAGE plpgsql IMMUTABLE'
        f" AS $${LEAKY_BODY.format(result=repr('mallory'))}$$;"
        "RESET ROLE"
    )
    # The healthy control: a function the database's administrator wrote.
    db.execute("CREATE FUNCTION public.trusted_one() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN 1; END $$")
    db.execute("SELECT pg_stat_statements_reset()")

    statements = {
        "direct": f"SELECT name FROM items WHERE id = {mallory}.peek()",
        "view": "SELECT name FROM recent_peeks WHERE id = 1",
        "operator": "SELECT name FROM items WHERE pi() === pi()",
        "default": "INSERT INTO notes (body) VALUES ('hello')",
        "zero_argument": 'SELECT "Whoami"(), name FROM items WHERE id = 2',
    }
    fragments = {
        "direct": "peek()",
        "view": "recent_peeks",
        "operator": "===",
        "default": "INSERT INTO notes",
        "zero_argument": '"Whoami"()',
    }
    distrust = f"owned by role {mallory}, which opsbook does not trust"
    reasons = {
        "direct": f"calls function {mallory}.peek() {distrust}",
        "view": f"uses view public.recent_peeks, which can call function {mallory}.peek_view() {distrust}",
        "operator": f"uses operator public.===, which can call function public.peek_op(double precision, double precision) {distrust}",
        "default": f"uses table public.notes, which can call function public.stamp() {distrust}",
        "zero_argument": f"calls function public.Whoami() {distrust}",
    }
    session = psycopg2.connect(db.cluster.url(db.name, mallory, password))
    session.autocommit = True
    try:
        with session.cursor() as cursor:
            for sql in statements.values():
                for _ in range(3):
                    cursor.execute(sql)
            cursor.execute("SELECT pg_stat_force_next_flush()")
    finally:
        session.close()
    # The administrator's own statements, from an ordinary session.
    with db.admin.connect() as conn:
        for sql in ("SELECT name FROM items WHERE id = 7", "SELECT name FROM items WHERE id = trusted_one()"):
            conn.execute(sa.text(sql))
        flush_statistics(conn)

    monitor, monitor_url = create_monitor(db)
    yield Hostile(
        database=db,
        mallory=mallory,
        monitor=monitor,
        monitor_url=monitor_url,
        statements=statements,
        fragments=fragments,
        reasons=reasons,
        functions=(f"{mallory}.peek", f"{mallory}.peek_view", "public.peek_op", "public.stamp", "public.Whoami"),
    )
    drop_roles(db, monitor, mallory)


# ------------------------------------------------------------------------------------------
# end to end: the runbook's plans, as production runs them


def test_plans_for_the_worst_statements_never_run_mallorys_functions(hostile):
    db = hostile.database
    before = function_calls(db)
    assert all(before.get(name, 0) > 0 for name in hostile.functions)  # her own session ran them

    engine = make_engine(hostile.monitor_url, runbook="slow_queries", run_id="trust")
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar() is False
            application_name = conn.execute(sa.text("SHOW application_name")).scalar()
            # The statements exactly as the notebook gets them.
            top = queries.top_statements(conn, by="total", limit=200)

            def pick(fragment, user):
                return next(s for s in top if fragment in s["query"] and s["usename"] == user)

            cases = {case: pick(fragment, hostile.mallory) for case, fragment in hostile.fragments.items()}
            assert len({s["queryid"] for s in cases.values()}) == len(cases)
            healthy = pick("SELECT name FROM items WHERE id = $1", "postgres")
            trusted = pick("trusted_one()", "postgres")
            chosen = [*cases.values(), healthy, trusted]
            plans = queries.statement_plans(conn, chosen, limit=len(chosen))
            assert conn.execute(sa.text("SHOW application_name")).scalar() == application_name
            flush_statistics(conn)
    finally:
        engine.dispose()
    after = function_calls(db)

    by_queryid = {plan["queryid"]: plan for plan in plans}
    assert [plan["queryid"] for plan in plans] == [s["queryid"] for s in chosen]
    for name in hostile.functions:
        assert after[name] == before[name], f"{name} ran in opsbook's session"
    if version(db) >= 160000:
        for case, statement in cases.items():
            plan = by_queryid[statement["queryid"]]
            assert plan["plan"] is None, case
            assert plan["note"] == f"not explained: {hostile.reasons[case]}", case
        assert "Index Scan using items_pkey on items" in by_queryid[healthy["queryid"]]["plan"]
        assert by_queryid[healthy["queryid"]]["note"] is None
        # The control: a trusted function is planned, and its planning-time call is counted,
        # so the counts above would have moved had any of hers been planned.
        assert by_queryid[trusted["queryid"]]["plan"] and by_queryid[trusted["queryid"]]["note"] is None
        assert after["public.trusted_one"] > before.get("public.trusted_one", 0)
    else:
        for plan in plans:
            assert plan["plan"] is None and "needs PostgreSQL 16+" in plan["note"]
        assert after.get("public.trusted_one") == before.get("public.trusted_one")


def test_without_the_check_planning_her_statement_leaks_a_secret_as_the_monitor(hostile):
    """What the check prevents, shown on the same setup: planning alone runs her function."""
    db = hostile.database
    if version(db) < 160000:
        pytest.skip("EXPLAIN (GENERIC_PLAN) needs PostgreSQL 16+")
    before = function_calls(db)
    conn = psycopg2.connect(hostile.monitor_url, options="-c default_transaction_read_only=on")
    try:
        with conn.cursor() as cursor:
            cursor.execute("EXPLAIN (GENERIC_PLAN) " + hostile.statements["direct"])
            cursor.execute("SELECT current_setting('application_name')")
            assert cursor.fetchone()[0] == "leaked: hunter2"  # read from a table she is denied
        conn.rollback()
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_stat_force_next_flush()")
    finally:
        conn.close()
    assert function_calls(db)[f"{hostile.mallory}.peek"] == before[f"{hostile.mallory}.peek"] + 1


def test_untrusted_code_reads_every_way_to_reach_her_functions_from_the_catalogs(hostile):
    db, mallory = hostile.database, hostile.mallory
    db.execute(
        f"SET ROLE {mallory};"
        "CREATE TYPE public.mood AS ENUM ('sad', 'happy');"
        "CREATE FUNCTION public.mood_rank(public.mood) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1';"
        "CREATE CAST (public.mood AS int) WITH FUNCTION public.mood_rank(public.mood) AS IMPLICIT;"
        "CREATE DOMAIN public.checked AS int CHECK (VALUE > public.stamp());"
        "CREATE TABLE public.indexed (id int); CREATE INDEX ON public.indexed ((id + public.stamp()));"
        "CREATE TABLE public.policed (id int); ALTER TABLE public.policed ENABLE ROW LEVEL SECURITY;"
        "CREATE POLICY only_stamped ON public.policed USING (id = public.stamp());"
        "RESET ROLE;"
        # Tables mallory does not own, reaching her code through her types and functions.
        "CREATE TABLE public.diary (id int, mood public.mood);"
        "CREATE TABLE public.guarded (id int, amount public.checked);"
        "CREATE TABLE public.parent (id int);"
        "CREATE TABLE public.child (CHECK (id > public.stamp())) INHERITS (public.parent);"
        # A superuser's functions whose bodies call hers: recorded in pg_depend, and only in the
        # body's text; and a view of the latter.
        "CREATE FUNCTION public.wrapper() RETURNS int LANGUAGE sql IMMUTABLE BEGIN ATOMIC SELECT public.stamp(); END;"
        "CREATE FUNCTION public.relay() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT length(public.\"Whoami\"())';"
        "CREATE VIEW public.relayed AS SELECT public.relay() AS n;"
        # Trusted: a superuser's own, and (below) one owned by the monitor itself.
        "CREATE TABLE public.clean (id int DEFAULT public.trusted_one());"
        "CREATE FUNCTION public.mine() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1'"
    )
    db.execute(f"ALTER FUNCTION public.mine() OWNER TO {hostile.monitor}")
    engine = make_engine(hostile.monitor_url)
    try:
        with engine.connect() as conn:
            code = untrusted_code(conn)
    finally:
        engine.dispose()
    assert code.role == hostile.monitor
    kinds = {(obj.kind, obj.schema, obj.name) for obj in code.objects}
    assert {
        ("function", mallory, "peek"), ("function", "public", "Whoami"), ("function", "public", "mood_rank"),
        ("function", "public", "wrapper"), ("function", "public", "relay"),  # a superuser's, reaching hers
        ("view", "public", "relayed"),
        ("view", "public", "peeks"), ("view", "public", "recent_peeks"),  # a view of a view
        ("operator", "public", "==="),
        ("table", "public", "notes"),  # column default
        ("table", "public", "indexed"),  # index expression
        ("table", "public", "policed"),  # row-level security policy
        ("table", "public", "child"), ("table", "public", "parent"),  # check constraint, inherited
        ("table", "public", "guarded"), ("type", "public", "checked"),  # domain constraint
        ("table", "public", "diary"), ("type", "public", "mood"),  # implicit cast
    } <= kinds
    names = {obj.name for obj in code.objects}
    assert not names & {"items", "secrets", "clean", "trusted_one", "mine"}
    assert code.names["wrapper"].reason == (
        f"calls function public.wrapper, which can call function public.stamp() owned by role {mallory}, "
        "which opsbook does not trust"
    )
    assert code.names["diary"].function == "public.mood_rank(mood)"
    assert code.names["relayed"].function == "public.Whoami()"
    # As a superuser reads it, the monitor's own function is someone else's.
    with db.admin.connect() as conn:
        assert "mine" in untrusted_code(conn).names


# ------------------------------------------------------------------------------------------
# defence in depth: trusted code that misbehaves while being planned


@pytest.fixture
def meddling(database18):
    db = database18
    db.execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text);"
        # Trusted (a superuser's), but badly behaved when planned.
        "CREATE FUNCTION public.retune() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN"
        "  PERFORM set_config('search_path', 'pg_temp, public', false);"
        "  PERFORM set_config('statement_timeout', '0', false);"
        "  PERFORM set_config('application_name', 'meddled', false);"
        "  PERFORM set_config('role', 'pg_read_all_data', false);"
        "  RETURN 1; END $$;"
        "CREATE FUNCTION public.grab_lock() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN"
        "  PERFORM pg_advisory_lock(4242); RETURN 1; END $$;"
        "CREATE FUNCTION public.stall() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN"
        "  PERFORM pg_sleep(30); RETURN 1; END $$"
    )
    monitor, monitor_url = create_monitor(db)
    yield db, monitor_url
    drop_roles(db, monitor)


SESSION = "SELECT current_user, current_setting('search_path'), current_setting('statement_timeout'), current_setting('application_name')"


def plan_of(function: str) -> list[dict]:
    """A statement as statement_plans takes it, calling ``function``."""
    return [{"queryid": None, "query": f"SELECT name FROM items WHERE id = {function}()"}]


PLAIN = [{"queryid": None, "query": "SELECT name FROM items WHERE id = $1"}]


def test_settings_a_planned_function_changes_are_rolled_back_with_its_transaction(meddling):
    db, monitor_url = meddling
    engine = make_engine(monitor_url, runbook="slow_queries", run_id="retune")
    try:
        with engine.connect() as conn:
            pid, session = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar(), conn.execute(sa.text(SESSION)).one()
            [plan] = queries.statement_plans(conn, plan_of("retune"))
            assert plan["plan"] and plan["note"] is None  # it ran (it is trusted)...
            assert conn.execute(sa.text(SESSION)).one() == session  # ...and changed nothing that lasts
            assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar() == pid
            assert conn.execute(sa.text("SHOW default_transaction_read_only")).scalar() == "on"
    finally:
        engine.dispose()


def test_a_session_left_holding_a_lock_is_closed_and_a_stall_is_cut_short(meddling):
    db, monitor_url = meddling
    engine = make_engine(monitor_url, runbook="slow_queries", run_id="lock")
    try:
        with engine.connect() as conn:
            pid, session = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar(), conn.execute(sa.text(SESSION)).one()
            started = time.monotonic()
            locked, stalled, healthy = queries.statement_plans(
                conn, [*plan_of("grab_lock"), *plan_of("stall"), *PLAIN], limit=3, timeout_ms=300,
            )
            assert time.monotonic() - started < 10
            # A session advisory lock outlives a rollback: the session is closed instead.
            assert locked["plan"]
            assert locked["note"] == "planning changed this session (advisory locks), so opsbook closed its connection"
            assert stalled["plan"] is None
            assert stalled["note"] == "not explained: canceling statement due to statement timeout"
            assert healthy["plan"] and healthy["note"] is None  # planned in the fresh session
            assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar() != pid
            assert conn.execute(sa.text(SESSION)).one() == session
    finally:
        engine.dispose()
    deadline = time.monotonic() + 10
    while db.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242").scalar():
        assert time.monotonic() < deadline, "the closed session's advisory lock was never released"
        time.sleep(0.05)


def test_inside_the_callers_transaction_plans_use_a_savepoint_and_a_tampered_session_fails_closed(meddling):
    db, _ = meddling
    engine = make_engine(db.url, runbook="slow_queries", run_id="writable", read_only=False)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("CREATE TEMP TABLE scratch (id int)"))
            session = conn.execute(sa.text(SESSION)).one()
            [plan] = queries.statement_plans(conn, plan_of("retune"))
            assert plan["plan"] and plan["note"] is None
            assert conn.execute(sa.text(SESSION)).one() == session
            conn.execute(sa.text("INSERT INTO scratch VALUES (1)"))  # the plan's read-only savepoint is gone
            locked, after = queries.statement_plans(conn, [*plan_of("grab_lock"), *PLAIN])
            assert "so opsbook closed its connection" in locked["note"]
            assert after["note"] == "not explained: the connection was closed after an earlier plan changed its session"
            # The caller's transaction is gone with the session: its next statement fails
            # rather than running in a session that was changed under it.
            with pytest.raises(sa.exc.PendingRollbackError):
                conn.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------------------
# the decision from a statement's text alone


def _untrusted(*objects: tuple[str, str, str]) -> UntrustedCode:
    return UntrustedCode(
        role="opsbook",
        objects=tuple(
            UntrustedObject(
                kind=kind, schema=schema, name=name, untrusted_itself=kind == "function",
                function=f"{schema}.{name}()" if kind == "function" else "mallory.peek()", owner="mallory",
            )
            for kind, schema, name in objects
        ),
    )


CODE = _untrusted(
    ("function", "mallory", "peek"),
    ("function", "public", "Whoami"),
    ("function", "public", "odd name"),
    ("function", "public", 'we"ird'),
    ("view", "public", "peeks"),
    ("type", "public", "mood"),
    ("operator", "public", "==="),
)


@pytest.mark.parametrize(
    "text, refused",
    [
        ("SELECT name FROM items WHERE id = $1", None),
        ("SELECT peek()", "function mallory.peek()"),
        ("SELECT PEEK()", "function mallory.peek()"),  # unquoted names fold to lower case
        ('SELECT "peek"()', "function mallory.peek()"),
        ("SELECT mallory.peek()", "function mallory.peek()"),
        ('SELECT "mallory"."peek"()', "function mallory.peek()"),
        ("SELECT peeking, peek_count, xpeek FROM t", None),  # whole words only
        ("SELECT 1 -- peek()\n", "function mallory.peek()"),  # comments and strings count too
        ("SELECT '/* peek() */'", "function mallory.peek()"),
        ("SELECT $q$peek$q$", "function mallory.peek()"),
        ('SELECT "Whoami"()', "function public.Whoami()"),
        ("SELECT whoami()", "function public.Whoami()"),  # another function, refused all the same
        ('SELECT "odd name"()', "function public.odd name()"),
        ("SELECT odd, name FROM t", None),
        ('SELECT "we""ird"()', 'function public.we"ird()'),
        ("SELECT * FROM Public.PEEKS WHERE id = $1", "view public.peeks"),
        ("SELECT $1::mood", "type public.mood"),
        ("SELECT a FROM t WHERE a === b", "operator public.==="),
        ("SELECT a FROM t WHERE a OPERATOR(public.===) b", "operator public.==="),
        ("SELECT a FROM t WHERE a ==== b", "operator public.==="),  # may hold the operator
        ("SELECT a FROM t WHERE a == b OR a = b", None),
        ('SELECT U&"\\0070eek"()', "Unicode escapes"),
        ('select u&"x" from t', "Unicode escapes"),
        ("SELECT schema_to_xml($1, true, true, '')", "schema_to_xml()"),
        ("SELECT * FROM TABLE_TO_XML($1::regclass, true, true, '')", "table_to_xml()"),
    ],
)
def test_reason_not_to_plan_reads_names_however_they_are_written(text, refused):
    reason = reason_not_to_plan(text, CODE)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason


def test_reasons_name_the_object_the_function_and_its_owner():
    assert reason_not_to_plan("SELECT peek()", CODE) == (
        "calls function mallory.peek() owned by role mallory, which opsbook does not trust"
    )
    assert reason_not_to_plan("TABLE peeks", CODE) == (
        "uses view public.peeks, which can call function mallory.peek() owned by role mallory, "
        "which opsbook does not trust"
    )


def test_sql_implies_operators_it_does_not_spell():
    equals = _untrusted(("operator", "public", "="))
    for text in (
        "SELECT a FROM t WHERE a IN ($1, $2)",
        "SELECT a FROM t JOIN u USING (id)",
        "SELECT a FROM t NATURAL JOIN u",
        "SELECT CASE a WHEN $1 THEN 1 END FROM t",
        "SELECT nullif(a, $1) FROM t",
        "SELECT a FROM t WHERE a IS DISTINCT FROM $1",
    ):
        assert reason_not_to_plan(text, equals), text
    assert reason_not_to_plan("SELECT a FROM t WHERE a > $1", equals) is None
    assert reason_not_to_plan("SELECT a FROM t WHERE a LIKE $1", _untrusted(("operator", "public", "~~")))
    assert reason_not_to_plan("SELECT a FROM t WHERE a BETWEEN $1 AND $2", _untrusted(("operator", "public", ">=")))


def test_with_no_untrusted_code_every_plain_statement_may_be_planned():
    nobody = UntrustedCode(role="opsbook")
    assert reason_not_to_plan("SELECT peek() FROM peeks WHERE a === b AND c IN ($1)", nobody) is None
    assert reason_not_to_plan('SELECT U&"x" FROM t', nobody)  # still unreadable
    assert reason_not_to_plan("SELECT query_to_xml($1, true, true, '')", nobody)  # still runs other SQL
