"""The demo target's life: up (init, seed, services, live incidents), env, down.

Its state — ports, credentials, process ids, what was planted — is one JSON file under
``.opsbook/demo/`` (git-ignored, mode 0600). The credentials are generated per demo and are
masked like any other target's.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from .. import paths
from ..db import sqlalchemy_url
from ..errors import DemoError, InvalidInvocation
from ..errors import quote
from ..stripe_emulator.state import write_state as write_stripe_state
from . import billing_history, health_data, quota_data, receiver, stripe_account, usage_trend_data
from . import seed as demo_seed
from .incidents import APP_NAMES
from .postgres import PostgresCluster, embedded_bin_dir, free_port

APP_DB = "app"
APP_ROLE = "app"
MONITOR_ROLE = "opsbook_monitor"
# params/slow_queries/demo.yaml flags incidents this old
INCIDENT_MIN_AGE_S = 2.0
# --scale: below 0.1 the data set has too few organisations for its planted incidents (30 buyers);
# at 10 it is 3,000 organisations and 4 million usage events, already minutes to seed.
MIN_SCALE, MAX_SCALE = 0.1, 10.0
MAX_SEED = 2**31 - 1
SIZE_KNOBS = ("organisations", "usage_events_per_org", "usage_events", "stripe_events", "history_periods")
# Above this many organisations the Stripe account is a SQLite state (stripe_emulator/store.py),
# streamed while it is built: a JSON document of a million customers fits neither in memory nor
# in the emulator's start-up.
SQLITE_STATE_ABOVE = 20_000


def demo_dir() -> Path:
    return paths.home() / "demo"


def state_path() -> Path:
    return demo_dir() / "state.json"


def manifest_path() -> Path:
    return demo_dir() / "planted.json"


@contextmanager
def _lock():
    demo_dir().mkdir(parents=True, exist_ok=True)
    with open(demo_dir() / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _cluster(state: dict) -> PostgresCluster:
    return PostgresCluster(Path(state["pg"]["data_dir"]), int(state["pg"]["port"]), Path(state["pg"]["bin_dir"]))


def _write_state(state: dict) -> None:
    path = state_path()
    tmp = path.with_suffix(".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        json.dump(state, handle, indent=2)
    tmp.replace(path)


def _load_state() -> dict | None:
    try:
        return json.loads(state_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_state() -> dict | None:
    """The running demo's state, or None when it is not up."""
    state = _load_state()
    if state is None or not _cluster(state).running:
        return None
    return state


def target_of(state: dict, schema: str | None = None):
    from ..target import Target, _schema_path

    return Target(
        database_url=state["database_url"],
        stripe_api_key=state.get("stripe_api_key"),
        stripe_webhook_secret=state.get("stripe_webhook_secret"),
        stripe_api_base=state.get("stripe_api_base"),
        webhook_url=state.get("webhook_url"),
        schema_path=_schema_path(schema) if schema else paths.params_dir() / "schema" / "reference.yaml",
        is_demo=True,
    )


def env_exports(state: dict) -> str:
    """Shell lines that point any opsbook command (or a notebook) at this demo."""
    lines = [f"export {name}={value}" for name, value in target_of(state).env().items()]
    return "\n".join(lines)


def build_fingerprint() -> str:
    """What the demo was built from: its code, schema and mapping. A demo left by another version
    of opsbook would not match what the runbooks read (a mapped table it lacks), so it is rebuilt."""
    import hashlib

    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    sources = [*sorted(package.glob("*.py")), package / "schema.sql", paths.params_dir() / "schema" / "reference.yaml"]
    for source in sources:
        if source.is_file():
            digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def ensure_up() -> dict:
    """The running demo; started (its live incidents planted again) when it is not running, and
    rebuilt when another version of opsbook built it — at the seed, scale and sizes it was built
    with (a benchmark's million organisations stay a million)."""
    state = read_state()
    if state is not None and state.get("build") == build_fingerprint():
        return state
    built = _load_state() or {}
    return up(seed=built.get("seed", 42), scale=built.get("scale", 1.0), **(built.get("sizes") or {}))


def check_options(*, seed: object, scale: object) -> None:
    """``--seed`` and ``--scale`` as the demo can use them, or InvalidInvocation before anything starts."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
            or not MIN_SCALE <= scale <= MAX_SCALE:
        raise InvalidInvocation(
            f"--scale {quote(scale)} is not a size the demo can have — give a number from {MIN_SCALE:g} to {MAX_SCALE:g} "
            "(1 is 300 organisations and 400,000 usage events)")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidInvocation(f"--seed {quote(seed)} is out of range — give a whole number from 0 to {MAX_SEED}")


def up(*, seed: int = 42, scale: float = 1.0, fresh: bool = False, incidents: bool = True, quiet: bool = True,
       **sizes: int | float | None) -> dict:
    """Start the demo, creating and seeding it first when needed (or when ``fresh``).

    The live incidents are planted again whenever they are not all there: after PostgreSQL was
    stopped (their sessions ended with it) or their process ended.

    ``sizes`` (benchmarks): ``organisations``, ``usage_events_per_org`` or ``usage_events``,
    ``stripe_events``, ``history_periods``, passed to ``seed.build`` when the demo is created."""
    check_options(seed=seed, scale=scale)
    unknown = set(sizes) - set(SIZE_KNOBS)
    if unknown:
        raise TypeError(f"up() got unknown sizes: {', '.join(sorted(unknown))}")
    with _lock():
        state = _load_state()
        if state is not None and fresh:
            _stop(state, destroy=True)
            state = None
        if state is not None and not Path(state["pg"]["data_dir"], "PG_VERSION").exists():
            state = None
        if state is not None and state.get("build") != build_fingerprint():
            if not quiet:
                print("the demo was built by another version of opsbook: building it again", file=sys.stderr)
            _stop(state, destroy=True)
            state = None
        if state is None:
            state = _create(seed=seed, scale=scale, quiet=quiet, sizes=sizes)
        else:
            _cluster(state).start()
            _start_services(state)
        _write_state(state)  # known before the incidents start: `demo down` can stop what runs
        pids = state.setdefault("pids", {})
        if incidents and not (_alive(pids.get("incidents")) and incidents_live(state)):
            _end_process(pids.get("incidents"))  # its sessions died with the server: it holds nothing
            pids["incidents"] = _start_incidents(state)
        _write_state(state)
        return state


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _create(*, seed: int, scale: float, quiet: bool, sizes: dict | None = None) -> dict:
    started = time.monotonic()
    cluster = PostgresCluster(demo_dir() / "pgdata", free_port(), embedded_bin_dir())
    if cluster.data_dir.exists():
        cluster.destroy()
    _say(quiet, f"demo: initialising PostgreSQL in {cluster.data_dir}")
    state: dict = {"pids": {}}
    try:
        cluster.init().start()
        return _populate(cluster, state, seed=seed, scale=scale, quiet=quiet, started=started, sizes=sizes)
    except BaseException:
        # Half a demo is no demo: nothing may keep running (a PostgreSQL nobody knows the port of).
        for pid in state["pids"].values():
            _end_process(pid)
        with suppress(Exception):  # the original error is the one to report
            cluster.destroy()
        for partial in demo_dir().glob(".stripe.sqlite.*.tmp"):  # a large account's unfinished state
            partial.unlink(missing_ok=True)
        raise


# The build's own statements (a million organisations by COPY, five million usage events by
# generate_series, their indexes) may run for minutes on a busy machine. The server bounds them
# at this, and the client's wait for any one answer (ops_lib.db.bounded_wait, installed for the
# process once any opsbook connection is made) follows the session's statement_timeout: without
# one it would give up after 45 s and close the connection mid-build.
BUILD_STATEMENT_TIMEOUT_MS = 30 * 60_000


def _build_engine(url: str, **kwargs) -> sa.Engine:
    return sa.create_engine(sqlalchemy_url(url), connect_args={
        "options": f"-c statement_timeout={BUILD_STATEMENT_TIMEOUT_MS}"}, **kwargs)


def _populate(cluster: PostgresCluster, state: dict, *, seed: int, scale: float, quiet: bool, started: float,
              sizes: dict | None = None) -> dict:
    app_password = secrets.token_urlsafe(18)
    monitor_password = secrets.token_urlsafe(18)
    admin = _build_engine(cluster.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        # Role names are constants; passwords go through format() with %L quoting server-side.
        conn.exec_driver_sql(
            conn.execute(sa.text(f"SELECT format('CREATE ROLE {APP_ROLE} LOGIN PASSWORD %L', :pw)"), {"pw": app_password}).scalar()
        )
        conn.exec_driver_sql(
            conn.execute(sa.text(f"SELECT format('CREATE ROLE {MONITOR_ROLE} LOGIN PASSWORD %L', :pw)"), {"pw": monitor_password}).scalar()
        )
        conn.exec_driver_sql(f"GRANT pg_monitor, pg_read_all_data TO {MONITOR_ROLE}")
        # The app's own role sees every session (pg_monitor) and may reset statement statistics.
        conn.exec_driver_sql(f"GRANT pg_monitor, pg_signal_backend TO {APP_ROLE}")
        conn.exec_driver_sql(f"CREATE DATABASE {APP_DB} OWNER {APP_ROLE}")
    admin.dispose()

    data = demo_seed.build(seed=seed, scale=scale, **{k: v for k, v in (sizes or {}).items() if v is not None})
    app_url = cluster.url(APP_DB, APP_ROLE, app_password)
    super_app = _build_engine(cluster.url(APP_DB))
    _say(quiet, f"demo: seeding {len(data.organizations)} organisations, {data.usage_event_count} usage events")
    with super_app.begin() as conn:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    with super_app.begin() as conn:
        conn.exec_driver_sql(f"SET LOCAL ROLE {APP_ROLE}")
        demo_seed.load(conn, data)
    with super_app.begin() as conn:
        conn.exec_driver_sql(f"GRANT EXECUTE ON FUNCTION pg_stat_statements_reset TO {APP_ROLE}")
    planted = {"slow_queries": demo_seed.plant_slow_queries(super_app)}

    receiver_port, emulator_port = free_port(), free_port()
    state.update({
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build": build_fingerprint(),
        "seed": seed,
        "scale": scale,
        "sizes": {k: v for k, v in (sizes or {}).items() if v is not None},
        "pg": {"data_dir": str(cluster.data_dir), "port": cluster.port, "bin_dir": str(cluster.bin_dir)},
        "database_url": app_url,
        "monitor_url": cluster.url(APP_DB, MONITOR_ROLE, monitor_password),
        "stripe_api_key": "sk_test_demo" + secrets.token_hex(12),
        "stripe_webhook_secret": "whsec_" + secrets.token_hex(16),
        "stripe_api_base": f"http://127.0.0.1:{emulator_port}",
        "webhook_url": f"http://127.0.0.1:{receiver_port}{receiver.ENDPOINT_PATH}",
        "ports": {"receiver": receiver_port, "emulator": emulator_port},
    })
    _say(quiet, "demo: building the Stripe account and delivering its webhooks")
    large = len(data.organizations) > SQLITE_STATE_ABOVE
    state["stripe_state"] = str(demo_dir() / ("stripe.sqlite" if large else "stripe.json"))
    account, plan = stripe_account.build(data, api_key=state["stripe_api_key"], receiver_url=state["webhook_url"],
                                         store=state["stripe_state"] if large else None)
    _say(quiet, f"demo: Stripe account built ({time.monotonic() - started:.1f}s); billing history")
    planted["revenue_report"] = billing_history.plant(super_app, data, account)
    usage_trend_data.plant(super_app, data)  # before quota_data: its counters include the surge
    # Not an exact manifest: the quota incidents' heavy recent usage surges too. The planted
    # organisation must be named and the control must not.
    planted["usage_trend"] = usage_trend_data.organisations(data)
    planted["quota_audit"] = quota_data.plant(super_app, data, account)
    _say(quiet, f"demo: writing the Stripe state ({time.monotonic() - started:.1f}s)")
    writer = account.pop(billing_history.BULK, None)
    account.pop(stripe_account.SLIM_CUSTOMERS, None)
    if writer is not None:
        writer.finish(account)
    else:
        write_stripe_state(stripe_state_path(state), account)
    del account
    _start_services(state)
    stripe_account.deliver(plan, url=state["webhook_url"], secret=state["stripe_webhook_secret"],
                           old_secret="whsec_" + secrets.token_hex(16), admin=super_app)
    planted["webhook_failure"] = stripe_account.planted(plan)
    planted["service_health"] = health_data.planted()

    # Statistics start now: what the seeding did is not the app's workload.
    with super_app.begin() as conn:
        conn.exec_driver_sql("SELECT pg_stat_reset()")
    with super_app.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")  # the reset cleared the row estimates the index checks read
        conn.exec_driver_sql("SELECT pg_stat_statements_reset()")
    super_app.dispose()
    _say(quiet, "demo: running the app's workload")
    demo_seed.run_workload(app_url, data)
    planted["slow_queries"]["slow_queries"] = list(demo_seed.SLOW_STATEMENTS)
    demo_seed.write_manifest(manifest_path(), planted)
    _say(quiet, f"demo: ready in {time.monotonic() - started:.1f}s")
    return state


def stripe_state_path(state: dict | None = None) -> Path:
    """The emulator's state file: JSON, or SQLite for a large account (``state["stripe_state"]``)."""
    if state and state.get("stripe_state"):
        return Path(state["stripe_state"])
    return demo_dir() / "stripe.json"


def _spawn(name: str, args: list[str], env: dict[str, str]) -> int:
    log = open(demo_dir() / f"{name}.log", "a")
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        env={**os.environ, **env},  # secrets by environment: argv shows in ps
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    return proc.pid


def _wait_for_http(url: str, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise DemoError(f"the demo's {what} did not start; see {demo_dir()}")


def _start_services(state: dict) -> None:
    """The Stripe emulator and the demo app's webhook endpoint, unless already running."""
    pids = state.setdefault("pids", {})
    if not _alive(pids.get("emulator")):
        pids["emulator"] = _spawn(
            "stripe-emulator",
            ["ops_lib.stripe_emulator", "--state", str(stripe_state_path(state)), "--port", str(state["ports"]["emulator"])],
            {},
        )
    if not _alive(pids.get("receiver")):
        pids["receiver"] = _spawn(
            "webhook-receiver",
            ["ops_lib.demo.receiver", "--port", str(state["ports"]["receiver"])],
            {"DATABASE_URL": state["database_url"], "STRIPE_WEBHOOK_SECRETS": state["stripe_webhook_secret"]},
        )
    _wait_for_http(state["stripe_api_base"] + "/_emulator/health", "Stripe emulator")
    _wait_for_http(state["webhook_url"].replace(receiver.ENDPOINT_PATH, "/health"), "webhook receiver")


def incidents_live(state: dict) -> bool:
    """Whether the three live incidents are in the database now (whatever their age)."""
    return _incidents_ready(state, min_age_s=0.0)


def _incidents_ready(state: dict, *, min_age_s: float) -> bool:
    engine = sa.create_engine(sqlalchemy_url(state["database_url"]))
    try:
        with engine.connect() as conn:
            return bool(conn.execute(sa.text(
                """
                SELECT count(*) FILTER (WHERE application_name = :blocked AND wait_event_type = 'Lock') = 1
                   AND count(DISTINCT application_name)
                       FILTER (WHERE now() - coalesce(query_start, state_change) >= make_interval(secs => :age)) = 3
                FROM pg_stat_activity WHERE application_name = ANY(:names)
                """
            ), {"blocked": APP_NAMES["blocked"], "names": list(APP_NAMES.values()), "age": min_age_s}).scalar())
    finally:
        engine.dispose()


def _end_process(pid: int | None, timeout: float = 10) -> None:
    """Stop one of our demo processes (by its process group) and wait for it to go."""
    if not _alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _start_incidents(state: dict) -> int:
    pid = _spawn("incidents", ["ops_lib.demo.incidents", "--lifetime", "3600"], {"DATABASE_URL": state["database_url"]})
    _wait_for_incidents(state)
    return pid


def _wait_for_incidents(state: dict, timeout: float = 20) -> None:
    """Return once the update is blocked and every incident is older than the demo's thresholds,
    so a run right after sees all three."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _incidents_ready(state, min_age_s=INCIDENT_MIN_AGE_S):
            return
        time.sleep(0.2)
    raise DemoError("the demo's live incidents did not start; see .opsbook/demo/incidents.log")


def _alive(pid: int | None) -> bool:
    """Our own child still running — not a reused pid after a reboot, not a zombie."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"ops_lib" in cmdline and state != "Z"


def _stop(state: dict, *, destroy: bool) -> None:
    for pid in state.get("pids", {}).values():
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except OSError:
                pass
    cluster = _cluster(state)
    if destroy:
        cluster.destroy()
    else:
        cluster.stop()


def down(*, destroy: bool = False) -> bool:
    """Stop the demo (and delete its data with ``destroy``); False when nothing was running."""
    with _lock():
        state = _load_state()
        if state is None:
            return False
        _stop(state, destroy=destroy)
        state["pids"] = {}
        if destroy:
            state_path().unlink(missing_ok=True)
        else:
            _write_state(state)
        return True


def planted() -> dict:
    try:
        return json.loads(manifest_path().read_text())
    except FileNotFoundError:
        return {}
