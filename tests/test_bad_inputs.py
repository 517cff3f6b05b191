"""Bad input never runs and never ends in a traceback: one line, exit 3, before any kernel starts.

One row per bad input. Each asserts the error's type and exit code, that its message is one line
under 300 characters, names what was wrong (the parameter, the file, the option) and says the
words that tell the operator what to do.
"""
import os
import shutil
import subprocess
import tempfile
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path

import psycopg2
import pytest

from ops_lib import runbooks
from ops_lib.demo import lifecycle
from ops_lib.demo.incidents import APP_NAMES
from ops_lib.demo.postgres import PostgresCluster, embedded_bin_dir
from ops_lib.errors import EXIT_INVALID, ConfigurationError, InvalidInvocation, ParameterError, SchemaMappingError
from ops_lib.parameters import MAX_FILE_BYTES, load_parameter_file
from ops_lib.quota.plans import read_plans_file
from ops_lib.revenue.period import resolve_period
from ops_lib.schema_map import SchemaMap
from ops_lib.target import TARGET_VARIABLES

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 20, 12, tzinfo=timezone.utc)


def assert_one_clear_line(err: BaseException, kind: type, *words: str) -> str:
    assert isinstance(err, kind), f"{type(err).__name__}: {err}"
    assert err.exit_code == EXIT_INVALID
    message = str(err)
    assert "\n" not in message and "\r" not in message, message
    assert len(message) < 300, f"{len(message)} characters: {message}"
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    return message


def raised(fn, *args, **kwargs) -> BaseException:
    with pytest.raises(InvalidInvocation) as info:
        fn(*args, **kwargs)
    return info.value


# --------------------------------------------------------------------------- parameter values


@pytest.mark.parametrize(
    "runbook, name, value, words",
    [
        # non-finite floats: nan compares false with every bound (a false all-clear), inf turns a check off
        ("slow_queries", "min_cache_hit_ratio", "nan", ["'nan' is not a finite number", "from 0 to 1"]),
        ("slow_queries", "min_cache_hit_ratio", "-inf", ["is not a finite number"]),
        ("slow_queries", "min_mean_ms", "inf", ["'inf' is not a finite number"]),
        ("slow_queries", "min_mean_ms", "1e400", ["'1e400' is not a finite number"]),
        ("revenue_report", "min_success_rate_pct", "NaN", ["is not a finite number", "from 0 to 100"]),
        # numbers past every sane bound, and past PostgreSQL's bigint
        ("slow_queries", "min_calls", str(10**30), ["above the maximum 1000000000"]),
        ("quota_audit", "drift_tolerance", str(2**63), ["above the maximum"]),
        ("slow_queries", "long_running_seconds", "99999999", ["above the maximum 604800"]),
        ("slow_queries", "min_mean_ms", "1e12", ["above the maximum"]),
        ("revenue_report", "revenue_tolerance", "1e20", ["above the maximum"]),
        ("slow_queries", "top_n", "-9223372036854775809", ["below the minimum 1"]),
        ("slow_queries", "min_calls", "9" * 5000, ["far outside the range", "(5000 characters)"]),
        ("slow_queries", "explain_top", "3.5", ["'3.5' is not a whole number", "from 0 to 20"]),
        # text and lists: capped, one line, every item checked
        ("quota_audit", "plans_file", "x" * 5000, ["5,000 characters long", "more than the 1,000 allowed"]),
        ("revenue_report", "period", "2026-11\nrm -rf", ["control character"]),
        ("revenue_report", "currencies", "usd,dollars", ["'dollars' is not a three-letter currency code"]),
        ("revenue_report", "currencies", "x" * 100_000, ["item 1 of the list is 100,000 characters long"]),
        ("revenue_report", "currencies", ",".join(["usd"] * 2000), ["2,000 items, more than the 1,000 allowed"]),
        ("webhook_failure", "event_types", "invoice.paid,DROP TABLE", ["'DROP TABLE' is not a Stripe event type"]),
        ("slow_queries", "remediate", "cancel_everything", ["'cancel_everything' is not one of"]),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None,
)
def test_a_bad_parameter_value_is_one_line(runbook, name, value, words):
    err = raised(runbooks.get(runbook).params.resolve, (), [(name, value)])
    message = assert_one_clear_line(err, ParameterError, f"parameter {name!r} from -p {name}", *words)
    assert value not in message or len(value) < 80, "a long value is never echoed whole"


@pytest.mark.parametrize(
    "runbook, text, words",
    [
        ("slow_queries", "min_cache_hit_ratio: .nan\n", ["min_cache_hit_ratio", "nan is not a finite number"]),
        ("slow_queries", "min_mean_ms: .inf\n", ["min_mean_ms", "inf is not a finite number"]),
        ("slow_queries", "min_calls: 1.0e+30\n", ["min_calls", "above the maximum"]),
        ("slow_queries", "top_n: .inf\n", ["top_n", "is not a whole number"]),
        ("webhook_failure", "event_types: [invoice.paid, 5]\n", ["event_types", "item 2 of the list, 5, is not a non-empty text"]),
        ("webhook_failure", "event_types: [invoice.paid, '']\n", ["event_types", "item 2 of the list"]),
        ("webhook_failure", "event_types: [[invoice.paid]]\n", ["event_types", "item 1 of the list"]),
        ("revenue_report", "currencies: {usd: 1}\n", ["currencies", "is not a list of text items"]),
        ("revenue_report", "period: [2026, 11]\n", ["'period'", "is not text"]),
        ("slow_queries", f"{'z' * 500}: 1\n", ["unknown parameter 'zzz", "(500 characters)", "`opsbook list` shows"]),
    ],
)
def test_a_bad_value_in_a_parameter_file_names_the_parameter_and_the_file(tmp_path, runbook, text, words):
    path = tmp_path / "set.yaml"
    path.write_text(text)
    err = raised(runbooks.get(runbook).params.resolve, [path], ())
    assert_one_clear_line(err, ParameterError, str(path), *words)


@pytest.mark.parametrize("runbook", list(runbooks.all_runbooks().values()), ids=lambda rb: rb.name)
def test_every_number_parameter_is_bounded_and_its_default_passes(runbook):
    for param in runbook.params:
        if param.type in (int, float):
            assert -10**9 <= param.lower <= param.upper <= 10**9, param.name
        assert param.coerce(param.default, "the default") == param.default


# --------------------------------------------------------------------------- the revenue report's period


@pytest.mark.parametrize(
    "given, words",
    [
        (dict(period="9999-12"), ["parameter 'period'", "'9999-12' is outside the years", "2011 to 2027"]),
        (dict(period="0000-01"), ["parameter 'period'", "'0000-01'", "no data before 2011"]),
        (dict(period="2010-12"), ["parameter 'period'", "no data before 2011"]),
        (dict(end_date="9999-12-31"), ["parameter 'end_date'", "'9999-12-31' is outside the years"]),
        (dict(start_date="0001-01-01"), ["parameter 'start_date'", "'0001-01-01' is outside the years"]),
        (dict(start_date="2026-03-01", end_date="2026-02-01"), ["'start_date' 2026-03-01 is after 'end_date' 2026-02-01"]),
        (dict(start_date="2020-01-01", end_date="2022-01-01"), ["start_date", "end_date", "732 days", "at most a year apart"]),
        (dict(start_date="2025-11-01", end_date="2026-11-02"), ["367 days"]),
        (dict(start_date="2012-01-01"), ["start_date", "to now spans", "days"]),
        (dict(period="2026-11" * 2000), ["parameter 'period'", "(14000 characters)", "not a month like 2026-11"]),
        (dict(end_date="2026-02-30"), ["parameter 'end_date'", "not a day like"]),
        (dict(period="٢٠٢٦-١١"), ["parameter 'period'", "not a month"]),  # digits, but not ASCII ones
        (dict(period="2026-12"), ["starts in the future"]),
    ],
)
def test_a_period_out_of_range_is_one_line(given, words):
    err = raised(resolve_period, **given, now=NOW)
    assert_one_clear_line(err, ParameterError, *words)


def test_the_period_bounds_themselves_are_accepted():
    assert resolve_period("2011-01", now=NOW).label == "2011-01"
    leap = resolve_period(start_date="2024-01-01", end_date="2024-12-31", now=NOW)
    assert (leap.end - leap.start).days == 366
    assert resolve_period(start_date="2026-11-01", end_date="2027-06-30", now=NOW).until == NOW


def test_the_runbook_checks_the_period_before_running():
    runbook = runbooks.get("revenue_report")
    params = runbook.params.resolve((), [("period", "9999-12")])
    assert_one_clear_line(raised(runbook.validate, params, None), ParameterError, "parameter 'period'", "9999-12")


# --------------------------------------------------------------------------- files: parameter sets, schema mappings, plans


def billion_laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 "lol"']
    for n in range(1, levels + 1):
        lines.append(f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


BAD_FILES = [
    # (id, make(tmp_path) -> path, words)
    ("missing", lambda d: d / "nope.yaml", ["does not exist"]),
    ("under_a_file", lambda d: (d / "f").write_text("") or d / "f" / "p.yaml", ["does not exist"]),
    ("directory", lambda d: (d / "params.yaml").mkdir() or d / "params.yaml", ["is a directory, not a file"]),
    ("device", lambda d: Path("/dev/zero"), ["/dev/zero is not a regular file"]),
    ("fifo", lambda d: _fifo(d / "pipe.yaml"), ["is not a regular file"]),
    ("not_utf8", lambda d: (d / "latin1.yaml").write_bytes("since_hours: 1 # für\n".encode("latin-1")) and d / "latin1.yaml",
     ["is not UTF-8 text (byte 0xfc on line 1)", "save it as UTF-8"]),
    ("binary", lambda d: (d / "nul.yaml").write_bytes(b"since_hours: 1\x00\x00\n") and d / "nul.yaml", ["holds NUL bytes"]),
    ("over_long", lambda d: (d / "big.yaml").write_text("#" * MAX_FILE_BYTES + "\n") and d / "big.yaml",
     ["1,048,577 bytes, larger than 1024 KiB"]),
    ("a_list", lambda d: (d / "list.yaml").write_text("- since_hours\n- 1\n") and d / "list.yaml", ["must be a mapping", "not a list"]),
    ("a_text", lambda d: (d / "text.yaml").write_text("since_hours 1\n") and d / "text.yaml", ["must be a mapping", "not a single text"]),
    ("bad_yaml", lambda d: (d / "broken.yaml").write_text("since_hours: [1\n") and d / "broken.yaml", ["is not valid YAML at line"]),
    ("yaml_bomb", lambda d: (d / "bomb.yaml").write_text(billion_laughs()) and d / "bomb.yaml",
     ["aliases (*name) expand to more than 100,000 values"]),
    ("self_alias", lambda d: (d / "loop.yaml").write_text("a: &a [1, *a]\n") and d / "loop.yaml", ["refers to the value that contains it"]),
    ("deep", lambda d: (d / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n") and d / "deep.yaml", ["nests", "too deeply"]),
    ("huge_int", lambda d: (d / "int.yaml").write_text("since_hours: " + "9" * 5000 + "\n") and d / "int.yaml",
     ["holds a value opsbook cannot read"]),
    ("python_tag", lambda d: (d / "tag.yaml").write_text("a: !!python/object/apply:os.system [id]\n") and d / "tag.yaml",
     ["is not valid YAML"]),
]


@pytest.mark.parametrize("make, words", [row[1:] for row in BAD_FILES], ids=[row[0] for row in BAD_FILES])
def test_a_bad_parameter_file_is_one_line(tmp_path, make, words):
    path = make(tmp_path)
    err = raised(runbooks.get("slow_queries").params.resolve, [path], ())
    assert_one_clear_line(err, ParameterError, f"parameter file {path}", *words)


@pytest.mark.parametrize(
    "path, words",
    [
        ("/tmp/" + "x" * 5000 + ".yaml", ["cannot be read: File name too long", "(a 5,010-character path)"]),
        ("/tmp/" + "d/" * 3000 + "x.yaml", ["cannot be read", "(a 6,011-character path)"]),
        ("/tmp/a\x00b.yaml", ["parameter file /tmp/a\\x00b.yaml cannot be read"]),
        ("/tmp/new\nline.yaml", ["parameter file /tmp/new\\nline.yaml does not exist"]),
    ],
    ids=["long_name", "long_path", "nul_in_name", "newline_in_name"],
)
def test_a_bad_file_name_is_one_line(path, words):
    err = raised(runbooks.get("slow_queries").params.resolve, [path], ())
    assert_one_clear_line(err, ParameterError, "parameter file", *words)


def test_a_file_just_under_the_cap_loads(tmp_path):
    path = tmp_path / "padded.yaml"
    path.write_text("#" * (MAX_FILE_BYTES - 20) + "\nmin_calls: 5\n")
    assert runbooks.get("slow_queries").params.resolve([path])["min_calls"] == 5


def test_aliases_that_stay_small_are_fine(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {usage_limit: 10, paid: true}\nplans:\n  pro: {<<: *base, name: Pro}\n")
    assert load_parameter_file(path)["plans"]["pro"] == {"usage_limit": 10, "paid": True, "name": "Pro"}


def _load_as(uid: int, path: Path) -> str:
    """Load the file in a child process that dropped to ``uid``: as root, a file's mode stops nothing."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                load_parameter_file(path)
                out = "loaded"
            except InvalidInvocation as err:
                out = f"{type(err).__name__}|{err.exit_code}|{err}"
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                out = f"unexpected {type(err).__name__}: {err}"
            os.write(write_end, out.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read().decode()
    os.waitpid(pid, 0)
    return out


@pytest.mark.parametrize("locked, words", [
    ("file", "cannot be read: permission denied — make it readable (chmod u+r)"),
    ("folder", "permission denied on a folder on its path"),
])
def test_an_unreadable_parameter_file_is_one_line(locked, words):
    base = Path(tempfile.mkdtemp(prefix="opsbook-unreadable-", dir="/tmp"))
    try:
        base.chmod(0o755)
        folder = base / "params"
        folder.mkdir(mode=0o755)
        path = folder / "secret.yaml"
        path.write_text("min_calls: 5\n")
        (path if locked == "file" else folder).chmod(0)
        if os.geteuid() == 0:
            out = _load_as(65534, path)  # nobody
            kind, code, message = out.split("|", 2)
            assert (kind, int(code)) == ("ParameterError", EXIT_INVALID), out
        else:
            err = raised(load_parameter_file, path)
            message = assert_one_clear_line(err, ParameterError)
        assert f"parameter file {path}" in message and words in message and "\n" not in message and len(message) < 300
    finally:
        for p in (base / "params", base / "params" / "secret.yaml"):  # the folder first: then the file is reachable
            with suppress(OSError):
                p.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_schema_mappings_and_plans_files_are_read_the_same_careful_way(tmp_path):
    (tmp_path / "schema").mkdir()
    err = raised(SchemaMap.load, tmp_path / "schema")
    assert_one_clear_line(err, SchemaMappingError, f"schema mapping {tmp_path / 'schema'} is a directory", "OPSBOOK_SCHEMA")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs())
    assert_one_clear_line(raised(SchemaMap.load, bomb), SchemaMappingError, "schema mapping", "aliases")
    assert_one_clear_line(raised(read_plans_file, tmp_path / "schema"), ConfigurationError,
                          "plans file", "is a directory", "set plans_file to a file like params/quota/plans.yaml")
    latin = tmp_path / "plans.yaml"
    latin.write_bytes("plans:\n  pro: {name: Pro für alle, usage_limit: 1, paid: true}\n".encode("latin-1"))
    assert_one_clear_line(raised(read_plans_file, latin), ConfigurationError, f"plans file {latin} is not UTF-8")


# --------------------------------------------------------------------------- the content of a plans file


@pytest.mark.parametrize(
    "text, words",
    [
        ("stripe:\n  prices: {price_pro: pro}\n", ["has no 'plans:'", "as in params/quota/plans.yaml"]),
        ("", ["has no 'plans:'"]),
        ("plan:\n  pro: {usage_limit: 10, paid: true}\n", ["unknown key 'plan'", "'plans:' and 'stripe:'"]),
        ("plans: [pro, team]\n", ["'plans:' must map each plan code"]),
        ("plans: {}\n", ["'plans:' must map each plan code"]),
        ("plans:\n  pro: 1000\n", ["plans.pro must be a mapping"]),
        ("plans:\n  pro: {usage_limit: -1, paid: true}\n", ["plans.pro.usage_limit must be a whole number ≥ 0", "not -1"]),
        ("plans:\n  pro: {usage_limit: lots, paid: true}\n", ["plans.pro.usage_limit", "not 'lots'"]),
        ("plans:\n  pro: {usage_limit: 10.5, paid: true}\n", ["plans.pro.usage_limit", "not 10.5"]),
        ("plans:\n  pro: {usage_limit: .nan, paid: true}\n", ["plans.pro.usage_limit", "not nan"]),
        ("plans:\n  pro: {usage_limit: .inf, paid: true}\n", ["plans.pro.usage_limit", "not inf"]),
        ("plans:\n  pro: {usage_limit: true, paid: true}\n", ["plans.pro.usage_limit", "not True"]),
        (f"plans:\n  pro: {{usage_limit: {2**64}, paid: true}}\n", ["plans.pro.usage_limit", "not 18446744073709551616"]),
        ("plans:\n  pro: {paid: true}\n", ["plans.pro needs usage_limit", "null for unlimited"]),
        ("plans:\n  pro: {limit: 10, usage_limit: 10, paid: true}\n", ["plans.pro: unknown key 'limit'", "name, usage_limit, paid"]),
        ("plans:\n  pro: {usage_limit: 10, paid: 'yes please'}\n", ["plans.pro.paid must be true or false"]),
        ("plans:\n  pro: {usage_limit: 10, paid: true}\nstripe: [price_pro]\n", ["stripe must be a mapping"]),
        ("plans:\n  pro: {usage_limit: 10, paid: true}\nstripe: {price: {p: pro}}\n", ["stripe has unknown key 'price'"]),
        ("plans:\n  pro: {usage_limit: 10, paid: true}\nstripe: {prices: {price_pro: {plan: pro}}}\n",
         ["stripe.prices.price_pro must name a plan code"]),
    ],
)
def test_a_bad_plans_file_is_one_line(tmp_path, text, words):
    path = tmp_path / "plans.yaml"
    path.write_text(text)
    assert_one_clear_line(raised(read_plans_file, path), ConfigurationError, f"plans file {path}", *words)


def test_a_good_plans_file_still_reads(tmp_path):
    path = tmp_path / "plans.yaml"
    path.write_text("plans:\n  free: {usage_limit: 1000.0, paid: false}\n  max: {name: Max, usage_limit: null, paid: true}\n"
                    "stripe: {prices: {price_max: max}}\n")
    parsed = read_plans_file(path)
    assert {c: p.usage_limit for c, p in parsed["plans"].items()} == {"free": 1000, "max": None}
    assert parsed["prices"] == {"price_max": "max"} and parsed["products"] == {}
    assert read_plans_file()["plans"]["pro"].usage_limit == 50_000  # the shipped file


def test_the_runbook_checks_the_plans_file_before_running(tmp_path):
    path = tmp_path / "plans.yaml"
    path.write_text("stripe: {}\n")
    runbook = runbooks.get("quota_audit")
    params = runbook.params.resolve((), [("plans_file", str(path))])
    assert_one_clear_line(raised(runbook.validate, params, None), ConfigurationError, str(path), "has no 'plans:'")


# --------------------------------------------------------------------------- demo up: --scale and --seed


@pytest.mark.parametrize(
    "seed, scale, words",
    [
        (42, float("nan"), ["--scale nan", "from 0.1 to 10"]),
        (42, float("inf"), ["--scale inf"]),
        (42, float("-inf"), ["--scale -inf"]),
        (42, 0.0, ["--scale 0.0"]),
        (42, -1.0, ["--scale -1.0"]),
        (42, 0.05, ["--scale 0.05"]),
        (42, 1e9, ["--scale 1000000000.0"]),
        (-1, 1.0, ["--seed -1 is out of range", "from 0 to 2147483647"]),
        (2**31, 1.0, ["--seed 2147483648"]),
        (10**30, 1.0, ["--seed 1000000000000000000000000000000"]),
    ],
)
def test_demo_up_refuses_a_bad_scale_or_seed_before_starting_anything(tmp_path, monkeypatch, seed, scale, words):
    monkeypatch.setenv("OPSBOOK_HOME", str(tmp_path / "home"))
    err = raised(lifecycle.up, seed=seed, scale=scale)
    assert_one_clear_line(err, InvalidInvocation, *words)
    assert not (tmp_path / "home").exists(), "nothing was created, so no PostgreSQL is left running"


def test_the_demo_accepts_its_bounds():
    lifecycle.check_options(seed=0, scale=0.1)
    lifecycle.check_options(seed=2**31 - 1, scale=10)


# --------------------------------------------------------------------------- the real command line


def opsbook(*args, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in TARGET_VARIABLES}
    env.update(DATABASE_URL="postgresql://nobody:nothing@127.0.0.1:1/none",  # parameters are checked first
               OPSBOOK_OUTPUTS=str(tmp_path / "outputs"), OPSBOOK_HOME=str(tmp_path / "home"))
    return subprocess.run([str(REPO / ".venv" / "bin" / "opsbook"), *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


@pytest.mark.parametrize(
    "args, words",
    [
        (["run", "slow_queries", "-p", "min_cache_hit_ratio", "nan"], ["parameter 'min_cache_hit_ratio'", "not a finite number"]),
        (["run", "slow_queries", "-p", "min_calls", str(10**30)], ["parameter 'min_calls'", "above the maximum"]),
        (["run", "slow_queries", "-f", "/dev/zero"], ["parameter file /dev/zero is not a regular file"]),
        (["run", "slow_queries", "-f", "params"], ["parameter file params is a directory"]),
        (["run", "revenue_report", "-p", "period", "9999-12"], ["parameter 'period'", "'9999-12' is outside the years"]),
        (["run", "revenue_report", "-p", "end_date", "9999-12-31"], ["parameter 'end_date'"]),
        (["run", "quota_audit", "-p", "plans_file", "params/quota"], ["plans file", "is a directory"]),
        (["demo", "up", "--scale", "nan"], ["--scale nan"]),
        (["demo", "up", "--seed", "-5"], ["--seed -5 is out of range"]),
    ],
)
def test_the_command_line_exits_3_with_one_line_and_runs_nothing(tmp_path, args, words):
    done = opsbook(*args, tmp_path=tmp_path)
    assert done.returncode == EXIT_INVALID, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 300, done.stderr
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr
    assert not list(tmp_path.rglob("*.ipynb")), "no kernel ran"
    assert not (tmp_path / "home" / "demo" / "pgdata").exists(), "no PostgreSQL was started"


# --------------------------------------------------------------------------- the demo's live incidents survive a restart


def live_incidents(state: dict) -> dict[str, tuple[str, str | None]]:
    """application_name -> (state, wait_event_type) of the demo app's incident sessions."""
    with psycopg2.connect(state["monitor_url"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT application_name, state, wait_event_type FROM pg_stat_activity WHERE application_name = ANY(%s)",
                    (list(APP_NAMES.values()),))
        rows = cur.fetchall()
    conn.close()
    assert len(rows) == len({r[0] for r in rows}), f"one session per incident, not {rows}"
    return {name: (st, wait) for name, st, wait in rows}


def assert_incidents_planted(state: dict) -> None:
    sessions = live_incidents(state)
    assert sessions.keys() == set(APP_NAMES.values()), sessions
    assert sessions[APP_NAMES["lock_holder"]][0] == "idle in transaction"
    assert sessions[APP_NAMES["long_running"]][0] == "active"
    assert sessions[APP_NAMES["blocked"]] == ("active", "Lock")


def test_ensure_up_plants_incidents_again_after_a_restart_and_rebuilds_another_versions_demo(monkeypatch):
    from tests.demo_target import scratch_dir

    home = scratch_dir("restart-home")
    monkeypatch.setenv("OPSBOOK_HOME", str(home))
    try:
        state = lifecycle.up(seed=7, scale=0.1, history_periods=1)
        assert_incidents_planted(state)
        old_incidents = state["pids"]["incidents"]

        lifecycle._cluster(state).stop()  # the server goes down (a reboot, an operator): the sessions end
        assert lifecycle.read_state() is None

        again = lifecycle.ensure_up()
        assert again["database_url"] == state["database_url"]
        assert_incidents_planted(again)
        assert again["pids"]["incidents"] != old_incidents
        assert not lifecycle._alive(old_incidents), "the old incidents process does not linger"
        assert lifecycle.ensure_up()["pids"] == again["pids"], "a running demo is left as it is"

        # A demo another version of opsbook built (its schema may lack what the runbooks now read)
        older = {**lifecycle._load_state(), "build": "an-older-opsbook"}
        lifecycle._write_state(older)
        rebuilt = lifecycle.ensure_up()
        assert rebuilt["build"] == lifecycle.build_fingerprint()
        assert rebuilt["database_url"] != state["database_url"], "built again, with new credentials"
        assert (rebuilt["seed"], rebuilt["scale"], rebuilt["sizes"]) == (7, 0.1, {"history_periods": 1}), \
            "at the size it was built with"
        assert_incidents_planted(rebuilt)
    finally:
        lifecycle.down(destroy=True)
        shutil.rmtree(home, ignore_errors=True)


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_a_demo_that_fails_half_way_leaves_no_postgres_running(monkeypatch):
    from tests.demo_target import scratch_dir

    home = scratch_dir("failing-home")
    monkeypatch.setenv("OPSBOOK_HOME", str(home))

    def boom(**_):
        assert processes_mentioning(str(home / "demo" / "pgdata")), "PostgreSQL is up when seeding starts"
        raise RuntimeError("seeding failed")

    monkeypatch.setattr(lifecycle.demo_seed, "build", boom)
    try:
        with pytest.raises(RuntimeError, match="seeding failed"):
            lifecycle.up(seed=1, scale=0.1)
        assert processes_mentioning(str(home / "demo" / "pgdata")) == [], "no orphaned PostgreSQL"
        assert lifecycle.read_state() is None
    finally:
        if (home / "demo" / "pgdata").exists():  # the test failed: stop what it started
            PostgresCluster(home / "demo" / "pgdata", 0, embedded_bin_dir()).stop()
        shutil.rmtree(home, ignore_errors=True)
