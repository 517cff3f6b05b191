"""What a schema mapping must give before a run starts: refused with one line and exit 3, never a
check that looks at nothing and says all is well, never a cell that fails half-way."""
from __future__ import annotations

import os

import pytest

from ops_lib import paths, runbooks, runner
from ops_lib.errors import SchemaMappingError

REFERENCE = "schema/reference.yaml"


def reference_text() -> str:
    return (paths.params_dir() / REFERENCE).read_text()


def refused(name: str, mapping, tmp_path, *overrides) -> str:
    """The one line a run of ``name`` with ``mapping`` is refused with, before any kernel runs."""
    with pytest.raises(SchemaMappingError) as raised:
        runner.run(name, overrides=list(overrides), outputs=tmp_path / "out",
                   env={**os.environ, "OPSBOOK_SCHEMA": str(mapping)})
    message = str(raised.value)
    assert raised.value.exit_code == 3 and "\n" not in message
    assert not list((tmp_path / "out").rglob("*.ipynb")), "no notebook ran"
    return message


def test_an_entity_given_as_an_empty_list_is_refused_naming_the_file_and_the_entity(demo, tmp_path):
    text = reference_text()
    start = text.index("  fulfilments:\n")
    end = text.index("  # Optional: where the app records")
    mapping = tmp_path / "empty.yaml"
    mapping.write_text(text[:start] + "  fulfilments: []\n" + text[end:])
    message = refused("webhook_failure", mapping, tmp_path)
    assert str(mapping) in message and "entities.fulfilments" in message and "empty" in message


def mapping_without(tmp_path, entity: str, column: str | None = None):
    """The reference mapping with one column of ``entity`` (of each of its tables) left out, or
    the whole entity when ``column`` is None."""
    import yaml

    document = yaml.safe_load(reference_text())
    if column is None:
        del document["entities"][entity]
    else:
        spec = document["entities"][entity]
        for table in spec if isinstance(spec, list) else [spec]:
            del table["columns"][column]
    path = tmp_path / f"without-{entity}-{column}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


NEEDED = [(name, entity, column) for name in ("webhook_failure", "service_health", "revenue_report", "quota_audit")
          for entity, columns in runbooks.get(name).columns.items() for column in columns]


def test_every_shipped_runbook_that_reads_the_mapping_declares_the_columns_it_needs():
    assert {name for name, _, _ in NEEDED} == {"webhook_failure", "service_health", "revenue_report", "quota_audit"}
    for name in ("webhook_failure", "service_health", "revenue_report", "quota_audit"):
        runbook = runbooks.get(name)
        assert set(runbook.columns) <= {*runbook.entities, *runbook.optional_entities}, name


@pytest.mark.parametrize("name, entity, column", NEEDED)
def test_a_mapping_without_a_column_the_runbook_reads_is_refused_before_the_run(demo, tmp_path, name, entity, column):
    mapping = mapping_without(tmp_path, entity, column)
    message = refused(name, mapping, tmp_path)
    assert str(mapping) in message and f"entities.{entity}" in message and repr(column) in message
    assert f"add it under entities.{entity}.columns" in message


def test_plan_limits_database_without_a_plans_entity_is_refused_before_the_run(demo, tmp_path):
    mapping = mapping_without(tmp_path, "plans")
    message = refused("quota_audit", mapping, tmp_path, ("plan_limits", "database"))
    assert str(mapping) in message and "plan_limits=database needs a plans entity" in message


def test_plan_limits_database_with_a_plans_entity_without_limits_is_refused_before_the_run(demo, tmp_path):
    mapping = mapping_without(tmp_path, "plans", "usage_limit")
    message = refused("quota_audit", mapping, tmp_path, ("plan_limits", "database"))
    assert str(mapping) in message and "'usage_limit'" in message and "plan_limits=database" in message


@pytest.mark.parametrize("name", ["webhook_failure", "service_health", "revenue_report", "quota_audit"])
def test_a_mapping_with_only_the_declared_columns_runs_the_runbook_to_the_end(demo, tmp_path, name):
    # The other side of the declaration: nothing the runbook's code needs is left out of it.
    import yaml

    needed = runbooks.get(name).columns
    document = yaml.safe_load(reference_text())
    for entity, columns in needed.items():
        spec = document["entities"][entity]
        for table in spec if isinstance(spec, list) else [spec]:
            table["columns"] = {k: v for k, v in table["columns"].items() if k in columns}
    mapping = tmp_path / "only-needed.yaml"
    mapping.write_text(yaml.safe_dump(document, sort_keys=False))
    record = runner.run(name, outputs=tmp_path / "out", env={**os.environ, "OPSBOOK_SCHEMA": str(mapping)}).record
    assert record["status"] in ("ok", "findings"), record.get("error")


# --------------------------------------------------------------------------- privileges, not existence


@pytest.fixture
def monitor_only(app_db):
    """A role with pg_monitor only, as production might first run opsbook: it may not read the app's tables."""
    import uuid

    import sqlalchemy as sa

    from ops_lib.db import sqlalchemy_url

    role, password = f"monitor_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    app_db.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    app_db.execute(f"GRANT pg_monitor TO {role}")
    engine = sa.create_engine(sqlalchemy_url(app_db.cluster.url(app_db.name, role, password)))
    yield role, engine
    engine.dispose()
    app_db.execute(f"DROP OWNED BY {role} CASCADE")
    app_db.execute(f"DROP ROLE {role}")


def validate_as(engine, entities):
    from ops_lib.schema_map import SchemaMap

    with engine.connect() as conn, pytest.raises(SchemaMappingError) as raised:
        SchemaMap.load(paths.params_dir() / REFERENCE).validate(conn, entities)
    return str(raised.value)


def test_a_table_the_role_may_not_read_is_reported_as_a_missing_grant_not_a_missing_table(monitor_only):
    role, engine = monitor_only
    message = validate_as(engine, ["webhook_events"])
    assert "does not exist" not in message and "\n" not in message
    assert f"the role {role} lacks SELECT on table webhook_events" in message
    assert f'GRANT SELECT ON "public"."webhook_events" TO "{role}"' in message


def test_a_mapped_column_the_role_may_not_read_is_named_with_the_grant(app_db, monitor_only):
    role, engine = monitor_only
    app_db.execute(f"GRANT SELECT (stripe_event_id, type, status) ON webhook_events TO {role}")
    message = validate_as(engine, ["webhook_events"])
    assert f"the role {role} lacks SELECT on column webhook_events.error" in message and "GRANT SELECT ON" in message


def test_a_schema_the_role_may_not_use_is_named_with_the_grant(app_db, monitor_only):
    role, engine = monitor_only
    app_db.execute("CREATE SCHEMA billing; CREATE TABLE billing.payments (LIKE public.payments)")
    app_db.execute(f"GRANT SELECT ON billing.payments TO {role}")
    from ops_lib.schema_map import SchemaMap

    schema = SchemaMap.load(paths.params_dir() / REFERENCE)
    moved = SchemaMap(schema.path, {**schema.entities, "payments": tuple(
        type(t)(t.entity, "billing.payments", t.columns) for t in schema.entities["payments"])})
    with engine.connect() as conn, pytest.raises(SchemaMappingError, match=f'GRANT USAGE ON SCHEMA "billing" TO "{role}"'):
        moved.validate(conn, ["payments"])


def test_a_role_that_may_read_the_tables_passes(app_db, monitor_only):
    from ops_lib.schema_map import SchemaMap

    role, engine = monitor_only
    app_db.execute(f"GRANT SELECT ON webhook_events, payments TO {role}")
    with engine.connect() as conn:
        SchemaMap.load(paths.params_dir() / REFERENCE).validate(conn, ["webhook_events", "payments"])


def test_a_run_as_a_role_without_select_is_refused_before_it_starts_with_the_grant(app_db, monitor_only, tmp_path):
    from ops_lib.target import TARGET_VARIABLES

    role, engine = monitor_only
    env = {k: v for k, v in os.environ.items() if k not in TARGET_VARIABLES}
    env["DATABASE_URL"] = engine.url.render_as_string(hide_password=False).replace("postgresql+psycopg2://", "postgresql://")
    with pytest.raises(SchemaMappingError) as raised:
        runner.run("webhook_failure", outputs=tmp_path / "out", env=env)
    assert raised.value.exit_code == 3 and f"the role {role} lacks SELECT on table webhook_events" in str(raised.value)
    assert not list((tmp_path / "out").rglob("*.ipynb")), "no notebook ran"
