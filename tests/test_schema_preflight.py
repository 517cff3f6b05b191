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
