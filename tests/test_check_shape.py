"""Every domain package exposes its checks one way: ``CHECKS`` (check id -> function, in report
order) and ``run_checks(...)``, which runs them all through ``findings.run_checks``."""
import pytest

from ops_lib import postgres, quota, revenue, webhooks
from ops_lib.errors import ParameterError
from ops_lib.findings import Finding, run_checks

DOMAINS = {"postgres": postgres, "quota": quota, "revenue": revenue, "webhooks": webhooks}


@pytest.mark.parametrize("name", DOMAINS)
def test_each_domain_maps_check_ids_to_their_functions(name):
    checks = DOMAINS[name].CHECKS
    assert isinstance(checks, dict) and checks
    assert {check_id: fn.__name__ for check_id, fn in checks.items()} == {c: c for c in checks}
    assert callable(DOMAINS[name].run_checks)


def test_run_checks_passes_the_inputs_each_check_names_and_its_options():
    def seen(rows, *, limit=1):
        return Finding.from_rows("seen", rows[:limit], severity="warning", title="seen", ok_title="none", item="id")

    def other(conn):
        return Finding("other", "ok" if conn == "c" else "critical", "conn given")

    found = run_checks({"seen": seen, "other": other}, {"rows": [{"id": 1}, {"id": 2}], "conn": "c"},
                       {"seen": {"limit": 2}})
    assert [(f.check, f.severity, f.items) for f in found] == [("seen", "warning", [1, 2]), ("other", "ok", [])]
    with pytest.raises(ParameterError, match="unknown check id"):
        run_checks({"seen": seen}, {}, {"sen": {}})


def test_revenue_runs_every_check_on_empty_data():
    found = revenue.run_checks({"charges": [], "rows": [], "history": [], "results": []})
    assert [f.check for f in found] == list(revenue.CHECKS)
    assert all(not f.is_problem for f in found), [f.title for f in found]
