"""The safety suite: bad inputs and real faults, through the real command line.

Every case runs `opsbook` in a subprocess, as cron or Airflow would, and asserts what an
operator relies on: the documented exit code, one line on stderr, no traceback, no secret on
stdout or stderr, and a line in the run ledger wherever the archive could be named. Faults are
real: a misbehaving HTTP server for Stripe, a PostgreSQL stopped or frozen mid-run, signals
mid-run, a torn ledger. At the end every archived file the suite wrote is scanned for every
secret it used, and the suite's figures are written into the README's safety section.
"""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import pytest

from ops_lib.demo import lifecycle
from ops_lib.demo.postgres import free_port
from ops_lib.target import TARGET_VARIABLES

from .demo_target import scratch_dir
from .faulty_http import faulty_http

REPO = Path(__file__).resolve().parent.parent
OPSBOOK = [sys.executable, "-m", "ops_lib.cli"]

# Made up for this suite, shaped like the real thing (split so no scanner takes them for live ones).
PASSWORD = "Saf3ty-" + "Suite-pw%41"
STRIPE_KEY = "sk_" + "test_" + "51SafetySuiteKeyNotReal0123456789"
RESTRICTED_KEY = "rk_" + "live_" + "51SafetySuiteRestrictedNotReal987"
WEBHOOK_SECRET = "whsec_" + "SafetySuiteWebhookSecretNotReal42"
SECRETS = (PASSWORD, STRIPE_KEY, RESTRICTED_KEY, WEBHOOK_SECRET)


@dataclass
class Case:
    name: str
    args: list[str]
    exit_code: int = 3
    env: dict[str, str] = field(default_factory=dict)
    ledger: bool = True  # a ledger line is expected (False where no archive can be named)
    say: str = ""  # a word or two the stderr line must contain (case-insensitive)
    setup: Callable[[Path], None] | None = None


@dataclass
class Outcome:
    case: Case
    code: int | None
    stdout: str
    stderr: str
    seconds: float
    out: Path


def _file(name: str, content: bytes) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / name).write_bytes(content)
    return write


def _cases(demo_env: dict[str, str], stripe_base: Callable[[str], str]) -> list[Case]:
    db_url = demo_env["DATABASE_URL"]
    user_db = re.sub(r"://[^@]*@", f"://app:{quote(PASSWORD)}@", db_url)
    dead_db = f"postgresql://app:{quote(PASSWORD)}@127.0.0.1:{free_port()}/app"
    with_stripe = {"DATABASE_URL": db_url, "STRIPE_API_KEY": STRIPE_KEY}
    hundred_k = "x" * 100_000
    schema_dir = scratch_dir("safety-schema")
    (schema_dir / "ghost_column.yaml").write_text(
        (REPO / "params/schema/reference.yaml").read_text().replace("stripe_event_id: stripe_event_id", "stripe_event_id: no_such_column", 1))
    (schema_dir / "ghost_plans.yaml").write_text(
        (REPO / "params/schema/reference.yaml").read_text() + "\n  plans:\n    table: no_such_plans\n    columns: {}\n"
        if "  plans:" not in (REPO / "params/schema/reference.yaml").read_text()
        else (REPO / "params/schema/reference.yaml").read_text().replace("table: plans", "table: no_such_plans", 1))
    return [
        # --- the command line
        Case("unknown runbook", ["run", "no_such_runbook"], say="unknown runbook"),
        Case("no runbook named", ["run"], ledger=False),
        Case("-p with --all", ["run", "--all", "-p", "top_n", "3"], ledger=False),
        Case("unknown option", ["run", "slow_queries", "--frobnicate"], ledger=False),
        Case("--fail-on not a level", ["run", "slow_queries", "--fail-on", "sometimes"], ledger=False),
        Case("--timeout 0", ["run", "slow_queries", "--timeout", "0"], say="--timeout"),
        Case("--timeout negative", ["run", "slow_queries", "--timeout", "-5"], say="--timeout"),
        Case("--timeout fractional", ["run", "slow_queries", "--timeout", "1.5"], say="--timeout"),
        Case("--timeout not a number", ["run", "slow_queries", "--timeout", "soon"], say="--timeout"),
        Case("--timeout nan", ["run", "slow_queries", "--timeout", "nan"], say="--timeout"),
        Case("show an unknown run", ["show", "slow_queries-20000101T000000Z-000000"], ledger=False),
        Case("history -n 0", ["history", "-n", "0"], ledger=False),
        # --- parameters
        Case("unknown parameter", ["run", "slow_queries", "-p", "no_such", "1"], say="no_such"),
        Case("int not a number", ["run", "slow_queries", "-p", "top_n", "ten"], say="top_n"),
        Case("int below minimum", ["run", "slow_queries", "-p", "top_n", "0"], say="top_n"),
        Case("huge integer", ["run", "slow_queries", "-p", "top_n", "1" + "0" * 40], say="top_n"),
        Case("float nan", ["run", "slow_queries", "-p", "min_cache_hit_ratio", "nan"], say="min_cache_hit_ratio"),
        Case("float inf", ["run", "slow_queries", "-p", "min_mean_ms", "inf"], say="min_mean_ms"),
        Case("float -inf", ["run", "slow_queries", "-p", "min_mean_ms", "-inf"], say="min_mean_ms"),
        Case("bool neither", ["run", "slow_queries", "-p", "apply", "maybe"], say="apply"),
        Case("choice not offered", ["run", "slow_queries", "-p", "remediate", "drop_everything"], say="remediate"),
        Case("100 kB value", ["run", "slow_queries", "-p", "top_n", hundred_k], say="top_n"),
        Case("period 9999-12", ["run", "revenue_report", "-p", "period", "9999-12"], say="period"),
        Case("period 0000-01", ["run", "revenue_report", "-p", "period", "0000-01"], say="period"),
        Case("period month 13", ["run", "revenue_report", "-p", "period", "2026-13"], say="period"),
        Case("end_date 9999-12-31", ["run", "revenue_report", "-p", "start_date", "2026-01-01", "-p", "end_date", "9999-12-31"], say="end_date"),
        Case("start_date 0001-01-01", ["run", "revenue_report", "-p", "start_date", "0001-01-01"], say="start_date"),
        Case("plans file without plans:", ["run", "quota_audit", "-p", "plans_file", "{out}/noplans.yaml"],
             setup=_file("noplans.yaml", b"limits: {}\n"), say="plans"),
        # --- parameter files
        Case("-f missing", ["run", "slow_queries", "-f", "{out}/missing.yaml"], say="does not exist"),
        Case("-f a directory", ["run", "slow_queries", "-f", "{out}"], say="directory"),
        Case("-f not UTF-8", ["run", "slow_queries", "-f", "{out}/latin1.yaml"],
             setup=_file("latin1.yaml", "top_n: 5 # caf\xe9\n".encode("latin-1")), say="UTF-8"),
        Case("-f over-long", ["run", "slow_queries", "-f", "{out}/long.yaml"],
             setup=_file("long.yaml", b"# " + b"x" * (3 << 20) + b"\ntop_n: 5\n")),
        Case("-f a list", ["run", "slow_queries", "-f", "{out}/list.yaml"], setup=_file("list.yaml", b"- top_n\n- 5\n")),
        Case("-f invalid YAML", ["run", "slow_queries", "-f", "{out}/bad.yaml"], setup=_file("bad.yaml", b"top_n: [5\n"),
             say="YAML"),
        Case("-f YAML bomb", ["run", "slow_queries", "-f", "{out}/bomb.yaml"],
             setup=_file("bomb.yaml", b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                                      b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
                                      b"e: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n")),
        # --- the archive
        Case("--out with an unknown scheme", ["run", "slow_queries", "--out", "nosuchfs://bucket/runs"], ledger=False,
             say="unknown scheme"),
        Case("--out a file", ["run", "slow_queries", "--out", "{out}/afile"], setup=_file("afile", b"x"), ledger=False,
             say="file"),
        Case("--out under a file", ["run", "slow_queries", "--out", "{out}/afile/sub"], setup=_file("afile", b"x"),
             ledger=False),
        Case("OPSBOOK_OUTPUTS gs:// without gcsfs", ["run", "slow_queries"], env={"OPSBOOK_OUTPUTS": "gs://bucket/x"},
             ledger=False, say="gcsfs"),
        # --- the target
        Case("DATABASE_URL malformed", ["run", "slow_queries"],
             env={"DATABASE_URL": f"postgresql://app:{PASSWORD}@db:port/app"}, say="DATABASE_URL"),
        Case("DATABASE_URL with a space", ["run", "slow_queries"],
             env={"DATABASE_URL": f"postgresql://app:{PASSWORD} x@db/app"}),
        Case("DATABASE_URL not PostgreSQL", ["run", "slow_queries"],
             env={"DATABASE_URL": f"mysql://app:{quote(PASSWORD)}@db/app"}, say="PostgreSQL"),
        Case("DATABASE_URL unknown option", ["run", "slow_queries"],
             env={"DATABASE_URL": db_url + ("&" if "?" in db_url else "?") + "frobnicate=1"}, say="DATABASE_URL"),
        Case("database refuses", ["run", "slow_queries"], env={"DATABASE_URL": dead_db}, say="cannot connect"),
        Case("wrong password", ["run", "slow_queries"], env={"DATABASE_URL": user_db}, say="cannot connect"),
        Case("OPSBOOK_SCHEMA missing", ["run", "webhook_failure"],
             env={**with_stripe, "OPSBOOK_SCHEMA": "{out}/missing.yaml"}, say="schema mapping"),
        Case("mapping names a missing column", ["run", "webhook_failure"],
             env={**with_stripe, "STRIPE_API_BASE": demo_env["STRIPE_API_BASE"],
                  "OPSBOOK_SCHEMA": str(schema_dir / "ghost_column.yaml")}, say="no_such_column"),
        Case("mapping names a missing plans table", ["run", "quota_audit"],
             env={**with_stripe, "STRIPE_API_BASE": demo_env["STRIPE_API_BASE"],
                  "OPSBOOK_SCHEMA": str(schema_dir / "ghost_plans.yaml")}, say="no_such_plans"),
        Case("STRIPE_API_BASE port out of range", ["run", "webhook_failure"],
             env={**with_stripe, "STRIPE_API_BASE": "http://127.0.0.1:99999"}, say="STRIPE_API_BASE"),
        Case("STRIPE_API_BASE port not a number", ["run", "revenue_report"],
             env={**with_stripe, "STRIPE_API_BASE": "http://127.0.0.1:5117x"}, say="STRIPE_API_BASE"),
        Case("OPSBOOK_WEBHOOK_URL port out of range", ["run", "webhook_failure"],
             env={**with_stripe, "STRIPE_API_BASE": demo_env["STRIPE_API_BASE"],
                  "OPSBOOK_WEBHOOK_URL": "http://127.0.0.1:99999/stripe/webhook"}, say="OPSBOOK_WEBHOOK_URL"),
        Case("Stripe key as opsbook masks it", ["run", "webhook_failure"],
             env={**with_stripe, "STRIPE_API_KEY": "sk_test_\u2026wxyz"},
             say="STRIPE_API_KEY"),
        Case("Stripe key with a line break", ["run", "quota_audit"],
             env={**with_stripe, "STRIPE_API_KEY": STRIPE_KEY + "\n"}, say="STRIPE_API_KEY"),
        Case("health_url port out of range", ["run", "service_health", "-p", "health_url", "http://127.0.0.1:99999/x"],
             say="health_url"),
        Case("tls_urls port not a number", ["run", "service_health", "-p", "tls_urls", "https://example.com:443x/"],
             say="tls_urls"),
        Case("no Stripe key", ["run", "webhook_failure"], env={"DATABASE_URL": db_url}, say="STRIPE_API_KEY"),
        Case("publishable Stripe key", ["run", "webhook_failure"],
             env={"DATABASE_URL": db_url, "STRIPE_API_KEY": "pk_test_" + "x" * 24}, say="publishable"),
        Case("replay without a webhook URL", ["run", "webhook_failure", "-p", "apply", "true"],
             env={**with_stripe, "STRIPE_API_BASE": demo_env["STRIPE_API_BASE"], "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET}),
        Case("Stripe 401", ["run", "webhook_failure"],
             env={**with_stripe, "STRIPE_API_BASE": stripe_base("unauthorized")}, say="401"),
        Case("Stripe 429", ["run", "revenue_report"],
             env={**with_stripe, "STRIPE_API_BASE": stripe_base("rate_limited")}, say="429"),
        Case("Stripe 500", ["run", "quota_audit"],
             env={**with_stripe, "STRIPE_API_BASE": stripe_base("server_error")}),
        Case("Stripe garbage", ["run", "webhook_failure"],
             env={**with_stripe, "STRIPE_API_BASE": stripe_base("garbage")}),
        Case("Stripe HTML page", ["run", "webhook_failure"],
             env={**with_stripe, "STRIPE_API_BASE": stripe_base("html")}),
        Case("Stripe accepts and hangs", ["run", "webhook_failure"],
             env={**with_stripe, "STRIPE_API_BASE": stripe_base("hang")}),
        Case("Stripe restricted key, hangs mid-body", ["run", "revenue_report"],
             env={"DATABASE_URL": db_url, "STRIPE_API_KEY": RESTRICTED_KEY, "STRIPE_API_BASE": stripe_base("stall_body")}),
        Case("demo up --scale nan", ["demo", "up", "--scale", "nan"], ledger=False, say="scale"),
        Case("demo up --scale 0", ["demo", "up", "--scale", "0"], ledger=False, say="scale"),
    ]


def _env(case: Case, out: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TARGET_VARIABLES}
    env["OPSBOOK_OUTPUTS"] = str(out)
    env["OPSBOOK_HOME"] = os.environ["OPSBOOK_HOME"]
    env.update({k: v.replace("{out}", str(out)) for k, v in case.env.items()})
    return env


def _run(case: Case, out: Path) -> Outcome:
    out.mkdir(parents=True, exist_ok=True)
    if case.setup:
        case.setup(out)
    args = [a.replace("{out}", str(out)) for a in case.args]
    started = time.monotonic()
    done = subprocess.run([*OPSBOOK, *args], capture_output=True, text=True, env=_env(case, out), timeout=120, cwd=out)
    return Outcome(case, done.returncode, done.stdout, done.stderr, time.monotonic() - started, out)


SUITE: dict[str, object] = {"outcomes": {}, "faults": {}}


@pytest.fixture(scope="module")
def bad_input_outcomes(demo):
    demo_env = lifecycle.target_of(demo).env()
    servers = {}
    with faulty_http("unauthorized") as s401, faulty_http("rate_limited") as s429, \
            faulty_http("server_error") as s500, faulty_http("garbage") as sgarbage, faulty_http("html") as shtml, \
            faulty_http("hang") as shang, faulty_http("stall_body") as sstall:
        servers.update(unauthorized=s401, rate_limited=s429, server_error=s500, garbage=sgarbage, html=shtml,
                       hang=shang, stall_body=sstall)
        cases = _cases(demo_env, lambda behaviour: servers[behaviour].url)
        root = scratch_dir("safety")
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {c.name: pool.submit(_run, c, root / f"case{i:02d}") for i, c in enumerate(cases)}
            outcomes = {name: f.result() for name, f in futures.items()}
    SUITE["outcomes"] = outcomes
    SUITE["root"] = root
    return outcomes


def _case_names() -> list[str]:
    fake = {"DATABASE_URL": "postgresql://x@127.0.0.1:1/x", "STRIPE_API_BASE": "http://127.0.0.1:1"}
    return [c.name for c in _cases(fake, lambda b: "http://127.0.0.1:1")]


def _assert_one_clean_line(outcome: Outcome) -> str:
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {outcome.stderr[:2000]!r}"
    assert "Traceback" not in outcome.stdout + outcome.stderr
    for secret in SECRETS:
        assert secret not in outcome.stdout + outcome.stderr
        assert quote(secret) not in outcome.stdout + outcome.stderr
    assert len(lines[0]) < 600, lines[0][:200]
    return lines[0]


def _ledger(out: Path) -> list[dict]:
    path = out / "runs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("name", _case_names())
def test_a_bad_input_exits_with_one_clear_line_and_a_record(bad_input_outcomes, name):
    outcome = bad_input_outcomes[name]
    case = outcome.case
    assert outcome.code == case.exit_code, (outcome.code, outcome.stderr[:500])
    line = _assert_one_clean_line(outcome)
    assert line.startswith("opsbook: ")
    if case.say:
        assert case.say.lower() in line.lower(), line
    ledger = _ledger(outcome.out)
    if case.ledger:
        assert len(ledger) == 1, ledger
        assert ledger[0]["status"] == "invalid" and ledger[0]["exit_code"] == 3
    else:
        assert ledger == []


def test_a_hanging_stripe_api_ends_the_run_well_under_30_seconds(bad_input_outcomes):
    for name in ("Stripe accepts and hangs", "Stripe restricted key, hangs mid-body"):
        assert bad_input_outcomes[name].seconds < 30, (name, bad_input_outcomes[name].seconds)


# ------------------------------------------------------------------------------------ faults mid-run


def _start(args: list[str], out: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k not in TARGET_VARIABLES}
    full.update(env or {}, OPSBOOK_OUTPUTS=str(out))
    return subprocess.Popen([*OPSBOOK, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full)


def _wait_for_kernel(out: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the run has recorded itself as running and its notebook has a started cell."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        notebooks = list(out.glob("*/*/*.ipynb"))
        if notebooks and '"start_time"' in notebooks[0].read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError("the run never started a cell")


def _finish(proc: subprocess.Popen, timeout: float = 90) -> tuple[int, str, str, float]:
    started = time.monotonic()
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr, time.monotonic() - started


def _record(out: Path) -> dict:
    (path,) = out.glob("*/*/*.json")
    return json.loads(path.read_text())


def _marked_cells(out: Path) -> list[dict]:
    (path,) = out.glob("*/*/*.ipynb")
    nb = json.loads(path.read_text())
    return [c for c in nb["cells"] if "papermill-error-cell-tag" in c.get("metadata", {}).get("tags", [])]


def _fault(name: str, code: int, stderr: str, waited: float, ok: bool) -> None:
    SUITE["faults"][name] = {"code": code, "stderr": stderr, "waited": waited, "ok": ok}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_ends_it_with_a_complete_record(demo, signum):
    out = scratch_dir("safety-signal")
    proc = _start(["run", "revenue_report"], out)
    _wait_for_kernel(out, proc)
    proc.send_signal(signum)
    code, stdout, stderr, waited = _finish(proc)
    _fault(f"{signum.name} mid-run", code, stderr, waited, False)
    assert code == 2
    line = _assert_one_clean_line(Outcome(Case("", []), code, stdout, stderr, waited, out))
    assert f"interrupted by {signum.name}" in line
    record = _record(out)
    assert record["status"] == "error" and record["reason"] == "interrupted"
    assert _marked_cells(out), "the interrupted cell is marked"
    assert (out / record["html"]).is_file()
    assert [r["status"] for r in _ledger(out)] == ["running", "error"]
    assert waited < 30  # the cell is interrupted at once; the kernel is killed 5 s later if it holds on
    _fault(f"{signum.name} mid-run", code, stderr, waited, True)


def test_a_run_killed_outright_shows_as_lost_in_the_history(demo):
    out = scratch_dir("safety-kill9")
    proc = _start(["run", "revenue_report"], out)
    _wait_for_kernel(out, proc)
    proc.kill()
    proc.wait(timeout=30)
    history = subprocess.run([*OPSBOOK, "history"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "OPSBOOK_OUTPUTS": str(out)})
    assert history.returncode == 0
    assert re.search(r"revenue_report\s+lost\s+run\s+revenue_report-", history.stdout), history.stdout
    _fault("kill -9 mid-run", proc.returncode, "", 0.0, True)


@pytest.fixture
def scratch_target(pg18):
    """A database of its own on the test cluster, for faults that must not touch the demo."""
    from .conftest import Database

    db = Database(pg18)
    db.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
    yield db
    db.drop()


def test_a_frozen_database_ends_the_run_at_the_cell_timeout(scratch_target, pg18):
    out = scratch_dir("safety-frozen")
    proc = _start(["run", "slow_queries", "--timeout", "6"], out, {"DATABASE_URL": scratch_target.url})
    _wait_for_kernel(out, proc)
    postmaster = int((pg18.data_dir / "postmaster.pid").read_text().split()[0])
    backends = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(postmaster)],
                                                   capture_output=True, text=True).stdout.split()]
    frozen = [postmaster, *backends]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        code, stdout, stderr, waited = _finish(proc, timeout=120)
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    _fault("database frozen mid-run", code, stderr, waited, False)
    assert code == 2, stderr
    _assert_one_clean_line(Outcome(Case("", []), code, stdout, stderr, waited, out))
    record = _record(out)
    assert record["status"] == "error" and record["reason"] in ("timeout", "cell_error")
    assert _marked_cells(out)
    assert waited < 60
    _fault("database frozen mid-run", code, stderr, waited, True)


def test_a_database_stopped_mid_run_fails_the_run_with_its_record(pg18):
    from ops_lib.demo.postgres import PostgresCluster, embedded_bin_dir

    cluster = PostgresCluster(scratch_dir("safety-stopped") / "pgdata", free_port(), embedded_bin_dir())
    cluster.init().start()
    try:
        out = scratch_dir("safety-stopped-out")
        proc = _start(["run", "slow_queries"], out, {"DATABASE_URL": cluster.url()})
        _wait_for_kernel(out, proc)
        cluster.stop()
        code, stdout, stderr, waited = _finish(proc)
    finally:
        cluster.destroy()
    _fault("database stopped mid-run", code, stderr, waited, False)
    assert code == 2, stderr
    _assert_one_clean_line(Outcome(Case("", []), code, stdout, stderr, waited, out))
    assert _record(out)["status"] == "error" and _marked_cells(out)
    _fault("database stopped mid-run", code, stderr, waited, True)


def test_a_torn_ledger_loses_no_later_run(demo):
    out = scratch_dir("safety-ledger")
    (out / "runs.jsonl").write_text('{"run_id": "a", "runbook": "slow_queries", "status": "ok"}\n'
                                    '[1, 2, 3]\n"just a string"\n{"run_id": "torn", "runb')
    done = subprocess.run([*OPSBOOK, "run", "slow_queries", "-p", "top_n", "0"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OPSBOOK_OUTPUTS": str(out)})
    assert done.returncode == 3
    history = subprocess.run([*OPSBOOK, "history"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "OPSBOOK_OUTPUTS": str(out)})
    assert history.returncode == 0
    assert "slow_queries" in history.stdout and history.stdout.count("\n") == 2, history.stdout
    assert "skipped 3 unreadable line(s)" in history.stderr
    _fault("torn ledger", done.returncode, done.stderr, 0.0, True)


# ------------------------------------------------------------------------------------ the archive


def _forms(secret: str) -> set[str]:
    return {secret, quote(secret), quote(secret, safe=""), json.dumps(secret)[1:-1],
            base64.b64encode(secret.encode()).decode().rstrip("=")}


def test_no_archived_file_holds_a_secret_the_suite_used(bad_input_outcomes):
    demo_secrets = [v for k, v in lifecycle.target_of(lifecycle.read_state()).env().items()
                    if k in ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET")]
    roots = [Path(SUITE["root"]), *Path(SUITE["root"]).parent.glob("safety-*")]
    found, scanned = [], 0
    for root in roots:
        for path in root.rglob("*"):
            if not path.is_file() or path.suffix not in (".ipynb", ".html", ".json", ".jsonl"):
                continue
            scanned += 1
            text = path.read_text(errors="replace")
            for secret in (*SECRETS, *demo_secrets):
                if any(form in text for form in _forms(secret)):
                    found.append((str(path), secret[:6]))
    SUITE["scanned"], SUITE["secrets_found"] = scanned, len(found)
    assert scanned > 0
    assert found == []


@pytest.fixture(scope="module", autouse=True)
def figures_in_the_readme():
    """After the module: the suite's own figures go into the README's safety section."""
    yield
    outcomes: dict = SUITE["outcomes"]
    faults: dict = SUITE["faults"]
    if len(outcomes) < len(_case_names()) or "scanned" not in SUITE:
        return  # a partial run (-k) does not rewrite the figures
    handled = sum(1 for o in outcomes.values() if o.code == o.case.exit_code and len(o.stderr.strip().splitlines()) == 1)
    handled += sum(1 for f in faults.values() if f["ok"])
    waits = [o.seconds for o in outcomes.values()] + [f["waited"] for f in faults.values()]
    block = (
        "<!-- safety-figures: written by tests/test_safety.py -->\n"
        f"- inputs and faults tried: **{len(outcomes) + len(faults)}** "
        f"({len(outcomes)} bad inputs, {len(faults)} faults mid-run)\n"
        f"- handled as documented (exit code, one stderr line, no traceback, no secret): "
        f"**{handled}**\n"
        f"- archived files scanned for the suite's secrets: **{SUITE['scanned']}**; secrets found: "
        f"**{SUITE['secrets_found']}**\n"
        f"- longest wait for an answer: **{max(waits):.1f} s**\n"
        "<!-- /safety-figures -->"
    )
    readme = REPO / "README.md"
    text = readme.read_text()
    updated = re.sub(r"<!-- safety-figures:.*?<!-- /safety-figures -->", block, text, flags=re.S)
    if updated != text:
        readme.write_text(updated)
