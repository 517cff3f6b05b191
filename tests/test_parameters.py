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
    Param("count", int, 1, "no bounds declared: the default ones apply"),
    Param("ratio", float, 1.0, "no bounds declared either"),
    Param("codes", list, [], "three-letter codes", pattern="[a-z]{3}", pattern_hint="a code of three letters"),
))


def test_defaults_apply_when_nothing_is_given():
    assert SPEC.resolve() == {"since_hours": 24, "threshold": 0.99, "apply": False, "types": [], "label": "x",
                              "count": 1, "ratio": 1.0, "codes": []}


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
        ("since_hours", "many", "'many' is not a whole number — give one from 1 to 720"),
        ("since_hours", "1.5", "is not a whole number"),
        ("since_hours", "0", "0 is below the minimum 1"),
        ("since_hours", "721", "721 is above the maximum 720"),
        ("since_hours", str(10**30), "is above the maximum 720"),
        ("threshold", "nan", "'nan' is not a finite number — give one from 0 to 1"),
        ("threshold", "inf", "'inf' is not a finite number"),
        ("threshold", "-Infinity", "'-Infinity' is not a finite number"),
        ("count", "1e9", "'1e9' is not a whole number"),
        ("count", str(10**9 + 1), "is above the maximum 1000000000"),
        ("count", str(-10**9 - 1), "is below the minimum -1000000000"),
        ("ratio", "1e300", "is above the maximum 1000000000"),
        ("ratio", "1e309", "is not a finite number"),
        ("apply", "maybe", "'maybe' is not true or false"),
        ("types", "a,c", "'c' is not one of a, b"),
        ("label", "x" * 1001, "1,001 characters long, more than the 1,000 allowed"),
        ("label", "two\nlines", "holds a control character"),
        ("codes", "ab,abc", "'ab' is not a code of three letters"),
        ("codes", ",".join(["abc"] * 1001), "the list has 1,001 items, more than the 1,000 allowed"),
    ],
)
def test_a_wrong_parameter_is_one_clear_line(name, value, message):
    with pytest.raises(ParameterError) as err:
        SPEC.resolve(overrides=[(name, value)])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_values_at_the_bounds_are_accepted():
    values = SPEC.resolve(overrides=[("since_hours", "720"), ("threshold", "0"), ("count", str(-10**9)),
                                     ("ratio", "1e9"), ("label", "x" * 1000), ("codes", "abc, xyz")])
    assert (values["since_hours"], values["threshold"], values["count"], values["ratio"]) == (720, 0.0, -10**9, 1e9)
    assert values["codes"] == ["abc", "xyz"] and len(values["label"]) == 1000


@pytest.mark.parametrize(
    "text, message",
    [
        ("threshold: .nan\n", "nan is not a finite number"),
        ("ratio: -.inf\n", "-inf is not a finite number"),
        ("count: 1.0e+30\n", "is above the maximum 1000000000"),
        ("codes: [abc, 7]\n", "item 2 of the list, 7, is not a non-empty text"),
        ("codes: [abc, {a: b}]\n", "item 2 of the list"),
        ("label: [a, b]\n", "is not text"),
    ],
)
def test_a_wrong_value_in_a_file_names_the_parameter_and_the_file(tmp_path, text, message):
    path = tmp_path / "set.yaml"
    path.write_text(text)
    with pytest.raises(ParameterError) as err:
        SPEC.resolve([path])
    assert message in str(err.value) and f"from {path}" in str(err.value)
    assert "\n" not in str(err.value)


def test_an_unquoted_day_in_a_file_is_the_text_of_that_day(tmp_path):
    path = tmp_path / "range.yaml"
    path.write_text("label: 2026-11-30\n")
    assert SPEC.resolve([path])["label"] == "2026-11-30"


def test_an_unknown_name_in_a_file_names_the_file_and_the_likely_one(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("since_hourz: 2\n")
    with pytest.raises(ParameterError) as err:
        SPEC.resolve([path])
    message = str(err.value)
    assert message.startswith(f"unknown parameter 'since_hourz' in {path}; this runbook takes: since_hours, threshold")
    assert message.endswith(" — did you mean 'since_hours'?")


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


@pytest.mark.parametrize("runbook", list(runbooks.all_runbooks().values()), ids=lambda rb: rb.name)
def test_a_runbooks_parameters_are_what_its_notebook_declares(runbook):
    import papermill as pm

    inferred = pm.inspect_notebook(str(runbook.notebook))
    assert "run_id" in inferred, "the runner injects run_id"
    declared = {p.name: p for p in runbook.params}
    assert set(inferred) - {"run_id"} == set(declared)
    for name, param in declared.items():
        assert ast.literal_eval(inferred[name]["default"]) == param.default, name
        assert param.help and param.help == inferred[name]["help"], name
        assert isinstance(param.default, param.type), name


@pytest.mark.parametrize("runbook", list(runbooks.all_runbooks().values()), ids=lambda rb: rb.name)
def test_every_shipped_parameter_set_resolves_to_the_values_it_names(runbook):
    import yaml

    sets = runbook.parameter_sets()
    assert sets, f"{runbook.name} ships no parameter set"
    for path in sets:
        named = yaml.safe_load(path.read_text()) or {}
        resolved = runbook.params.resolve([path])
        assert set(resolved) == {p.name for p in runbook.params}
        for name, value in named.items():
            assert resolved[name] == runbook.params.get(name).coerce(value, str(path)), (path.name, name)
        untouched = set(resolved) - set(named)
        assert all(resolved[name] == runbook.params.get(name).default for name in untouched)


@pytest.mark.parametrize("url, problem", [
    ("https://app.example.com/healthz", None),
    ("http://[::1]:8080/x", None),
    ("https://app.example.com:99999/", "its port is not a number from 1 to 65535"),
    ("https://app.example.com:443x/", "its port is not a number from 1 to 65535"),
    ("https://app.example.com:0/", "port 0"),
    ("ftp://app.example.com/", "does not start with http:// or https://"),
    ("https:///healthz", "names no host"),
    ("https://user:pw@app.example.com/", "credentials"),
    ("https://app.example.com/?token=1", "query or fragment"),
])
def test_a_url_parameter_is_refused_in_words_when_it_cannot_be_called(url, problem):
    from ops_lib.parameters import url_problem
    found = url_problem(url, ("http", "https"))
    assert (found is None) if problem is None else (problem in found)
    if problem in ("credentials", "query or fragment"):
        assert url_problem(url, ("http", "https"), bare=False) is None  # (a target's URL may carry them)
