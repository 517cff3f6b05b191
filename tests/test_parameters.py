"""Parameters are typed and validated before any kernel starts."""
import ast

import pytest

from ops_lib import runbooks
from ops_lib.errors import ParameterError
from ops_lib.parameters import Param, ParamSpec

SPEC = ParamSpec((
    Param("since_hours", int, 24, "the window", minimum=1, maximum=720),
    Param("threshold", float, 0.99, "a ratio", minimum=0, maximum=1),
    Param("apply", bool, False, "do it"),
    Param("types", list, [], "event types", choices=("a", "b")),
    Param("label", str, "x", "a label"),
))


def test_defaults_apply_when_nothing_is_given():
    assert SPEC.resolve() == {"since_hours": 24, "threshold": 0.99, "apply": False, "types": [], "label": "x"}


def test_command_line_strings_are_converted_to_the_parameter_type():
    values = SPEC.resolve(overrides=[("since_hours", "48"), ("apply", "true"), ("types", "a,b"), ("threshold", "0.5")])
    assert values["since_hours"] == 48 and values["apply"] is True
    assert values["types"] == ["a", "b"] and values["threshold"] == 0.5


def test_later_sources_win_files_in_order_then_command_line(tmp_path):
    first = tmp_path / "first.yaml"
    first.write_text("since_hours: 2\nlabel: first\n")
    second = tmp_path / "second.yaml"
    second.write_text("since_hours: 3\n")
    values = SPEC.resolve([first, second], [("label", "cli")])
    assert values["since_hours"] == 3 and values["label"] == "cli"


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("since_hourz", "1", "unknown parameter 'since_hourz'; this runbook takes: since_hours"),
        ("since_hours", "many", "'many' is not a int"),
        ("since_hours", "1.5", "is not a int"),
        ("since_hours", "0", "0 is below the minimum 1"),
        ("since_hours", "721", "721 is above the maximum 720"),
        ("apply", "maybe", "is not a bool"),
        ("types", "a,c", "'c' is not one of a, b"),
    ],
)
def test_a_wrong_parameter_is_one_clear_line(name, value, message):
    with pytest.raises(ParameterError) as err:
        SPEC.resolve(overrides=[(name, value)])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_yaml_bool_is_not_accepted_as_a_number(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("since_hours: true\n")
    with pytest.raises(ParameterError, match=f"from {path}"):
        SPEC.resolve([path])


def test_a_broken_parameter_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("since_hours: [1\n")
    with pytest.raises(ParameterError, match="broken.yaml is not valid YAML at line"):
        SPEC.resolve([path])


def test_a_missing_parameter_file_is_reported(tmp_path):
    with pytest.raises(ParameterError, match="does not exist"):
        SPEC.resolve([tmp_path / "nope.yaml"])


@pytest.mark.parametrize("runbook", list(runbooks.RUNBOOKS.values()), ids=lambda rb: rb.name)
def test_notebook_parameters_cell_matches_the_registry(runbook):
    import papermill as pm

    inferred = pm.inspect_notebook(str(runbook.notebook))
    assert "run_id" in inferred, "the runner injects run_id"
    declared = {p.name: p for p in runbook.params}
    assert set(inferred) - {"run_id"} == set(declared)
    for name, param in declared.items():
        assert ast.literal_eval(inferred[name]["default"]) == param.default, name


@pytest.mark.parametrize("runbook", list(runbooks.RUNBOOKS.values()), ids=lambda rb: rb.name)
def test_every_shipped_parameter_set_is_valid(runbook):
    for path in runbook.parameter_sets():
        runbook.params.resolve([path])
