"""What a schema mapping must give before a run starts: refused with one line and exit 3, never a
check that looks at nothing and says all is well, never a cell that fails half-way."""
from __future__ import annotations

import os

import pytest

from ops_lib import paths, runner
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
