"""The archive of runs: ``outputs/<runbook>/<UTC date>/<run_id>.ipynb|.html|.json``, ``runs.jsonl``, ``index.html``.

Every file is masked, then written atomically (a temporary file in the same folder, then
rename), so a reader never sees half a file and concurrent runs never overwrite each other.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from .errors import ArchiveUnavailable, ConfigurationError, DamagedRecord, first_line, quote
from .findings import SEVERITIES, severity_rank
from .literal import html_attr, html_text

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Client-side deadlines on the object store, whatever its client's own settings and retries do
# (s3fs retries a timed-out request 5 times over botocore's own retries: minutes per call).
WRITE_CHECK_S = 10.0  # the check before a run: an endpoint that does not answer is exit 3 in seconds
REMOTE_CALL_S = 120.0  # each later call (a notebook's upload, a ledger line, the index)


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Archive:
    root: Path
    # ledger lines that could not be read (a torn write, a stray edit), by line number
    unreadable_lines: list[int] = field(default_factory=list, compare=False)

    @classmethod
    def default(cls, root: Path | str | None = None) -> "Archive":
        return cls((Path(root) if root else paths.outputs_dir()).resolve())  # kernels run in notebooks/

    @classmethod
    def open(cls, root: Path | str | None = None) -> "Archive":
        """The archive a run will write to, checked before anything runs: a local folder that
        exists or can be made, and that this user may write."""
        given = str(root) if root else (os.environ.get("OPSBOOK_OUTPUTS") or str(paths.outputs_dir()))
        origin = "--out" if root else "OPSBOOK_OUTPUTS" if os.environ.get("OPSBOOK_OUTPUTS") else "the archive folder"
        if given.startswith("file://"):
            given = given[len("file://"):]
        elif _URL_SCHEME.match(given):
            return RemoteArchive.open_url(given, origin)
        if "\0" in given or not given.strip():
            raise ConfigurationError(f"{origin} {quote(given)} is not a folder name")
        archive = cls.default(given)
        try:
            if archive.root.exists() and not archive.root.is_dir():
                raise ConfigurationError(f"{origin} {quote(archive.root)} is a file, not a folder — give a folder for the archive")
            archive.root.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=archive.root, prefix=".write-check-", delete=True)
            probe.close()
        except ConfigurationError:
            raise
        except OSError as err:
            raise ConfigurationError(
                f"{origin} {quote(archive.root)} cannot be written ({err.strerror or type(err).__name__}) "
                "— give a folder this user may write"
            ) from None
        return archive

    def run_dir(self, runbook: str, run_id: str) -> Path:
        # run ids carry their UTC start: <runbook>-YYYYmmddTHHMMSSZ-<hex>
        stamp = run_id[len(runbook) + 1:][:8]
        return self.root / runbook / f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}"

    def files(self, runbook: str, run_id: str) -> dict[str, Path]:
        base = self.run_dir(runbook, run_id) / run_id
        return {ext: base.with_suffix(f".{ext}") for ext in ("ipynb", "html", "json")}

    @property
    def ledger(self) -> Path:
        return self.root / "runs.jsonl"

    @contextmanager
    def _ledger_lock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".runs.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def record(self, record: dict, *, write_json: bool = True) -> None:
        """Write the run's JSON, add its line to runs.jsonl and refresh index.html."""
        if os.environ.get("OPSBOOK_STRICT"):
            check_against_schema(record)
        if write_json:
            files = self.files(record["runbook"], record["run_id"])
            atomic_write(files["json"], json.dumps(record, indent=2, sort_keys=False) + "\n")
        self._append(ledger_line(record))

    def record_running(self, record: dict) -> None:
        """A ``running`` line before the kernel starts: a run killed outright (kill -9, a lost
        machine) still shows in the history, as lost, instead of not at all."""
        self._append({**ledger_line({**record, "status": "running"}), "pid": os.getpid(), "host": socket.gethostname()})

    def _append(self, line: dict) -> None:
        data = (json.dumps(line, sort_keys=False) + "\n").encode("utf-8")
        with self._ledger_lock():
            with open(self.ledger, "ab+") as handle:
                # A crash can leave a last line without its newline: start on a fresh line.
                if handle.seek(0, os.SEEK_END) > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":
                        data = b"\n" + data
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            atomic_write(self.root / "index.html", render_index(self.runs(), self.root))

    def runs(self, runbook: str | None = None) -> list[dict]:
        """Runs newest first, one per run id (its last line wins); a run whose process is gone
        without a final line is ``lost``. Unreadable lines are skipped and noted."""
        if not self.ledger.exists():
            self.unreadable_lines = []
            return []
        with open(self.ledger, "rb") as handle:
            return self._merge(enumerate(handle, start=1), runbook)

    def _merge(self, lines, runbook: str | None) -> list[dict]:
        """Ledger lines (numbered raw bytes) → one row per run, newest first."""
        self.unreadable_lines = []
        by_id: dict[str, dict] = {}
        for number, raw in lines:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("run_id"), str) or not isinstance(row.get("runbook"), str):
                self.unreadable_lines.append(number)
                continue
            earlier = by_id.get(row["run_id"])
            if earlier is None or earlier.get("status") == "running" or row.get("status") != "running":
                by_id[row["run_id"]] = row
        rows = [_settle(row) for row in by_id.values() if runbook is None or row.get("runbook") == runbook]
        return sorted(rows, key=lambda r: str(r.get("started_at", "")), reverse=True)

    def read_text(self, relative: str) -> str | None:
        """A file of the archive, by its path relative to the root (None if absent)."""
        path = self.root / relative
        return path.read_text(encoding="utf-8") if path.is_file() else None

    @property
    def location(self) -> str:
        """Where the archive is, as the user named it (for messages)."""
        return str(self.root)

    def load(self, run_id: str) -> dict:
        for row in self.runs():
            if row["run_id"] == run_id:
                text = self.read_text(row["json"]) if row.get("json") else None
                return row if text is None else _run_record(text, run_id, row["json"])  # no JSON: still going, or lost
        raise KeyError(run_id)


def _run_record(text: str, run_id: str, relative: str) -> dict:
    try:
        record = json.loads(text)
        why = None if isinstance(record, dict) and record.get("run_id", run_id) == run_id else "it is not this run's record"
    except ValueError as error:
        why = f"it is not JSON ({first_line(error)})"
    if why:
        raise DamagedRecord(f"the archived record of {run_id}, {relative}, is damaged: {why} — its notebook beside "
                            f"it still shows the run; `opsbook history` lists the others")
    return record


class RemoteArchive(Archive):
    """An archive in object storage (any fsspec URL: ``s3://bucket/runs``, ``gs://…``), for
    scheduled runs on workers that do not keep their disk.

    A run is written to a local staging folder exactly as to a local archive, and its files are
    uploaded when it is recorded. Object stores cannot append, so the ledger is one object per
    line (``ledger/<run_id>.<n>.json``: the ``running`` line, then the final one): concurrent runs
    never write the same object. ``index.html`` is rebuilt from the ledger after every run.
    """

    def __init__(self, url: str, fs, base: str):
        staging = paths.home() / "staging" / hashlib.sha256(url.encode()).hexdigest()[:16]
        super().__init__(staging)
        self.url, self.fs, self.base = url, fs, base.rstrip("/")

    @classmethod
    def open_url(cls, url: str, origin: str) -> "RemoteArchive":
        import fsspec
        from fsspec.registry import known_implementations

        scheme = url.split("://", 1)[0].lower()
        if scheme not in known_implementations:
            raise ConfigurationError(f"{origin} {quote(url)}: unknown scheme {scheme}:// — give a folder, or an fsspec "
                                     "URL such as s3://bucket/runs")
        # Bounded like every other wait: an unreachable endpoint fails in seconds, not minutes.
        options = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 30, "retries": {"max_attempts": 2}}} \
            if scheme in ("s3", "s3a") else {}
        try:
            fs, base = fsspec.core.url_to_fs(url, **options)
        except ImportError as err:
            package = known_implementations[scheme].get("err") or str(err)
            raise ConfigurationError(f"{origin} {quote(url)}: {first_line(package)}") from None
        except Exception as err:  # each filesystem has its own errors for a malformed URL
            raise ConfigurationError(f"{origin} {quote(url)} is not usable: {first_line(err)}") from None
        archive = cls(url, fs, base)
        try:
            _bounded(fs, WRITE_CHECK_S, "pipe_file", f"{archive.base}/.write-check", b"")
            _bounded(fs, WRITE_CHECK_S, "rm_file", f"{archive.base}/.write-check")
        except TimeoutError:
            raise ConfigurationError(
                f"{origin} {quote(url)} did not answer within {WRITE_CHECK_S:g} s — check the endpoint "
                "(AWS_ENDPOINT_URL or the provider's), the network to it and the bucket"
            ) from None
        except Exception as err:
            raise ConfigurationError(
                f"{origin} {quote(url)} cannot be written ({first_line(err)}) — check the bucket and the credentials "
                "in the environment"
            ) from None
        archive.root.mkdir(parents=True, exist_ok=True)
        return archive

    @property
    def location(self) -> str:
        return self.url

    def _remote(self, relative: str) -> str:
        return f"{self.base}/{relative}"

    def _call(self, method: str, *args):
        """One call on the store, bounded: a store gone silent mid-run ends the run (exit 2) with
        the run's files still in the staging folder, instead of holding it for good."""
        try:
            return _bounded(self.fs, REMOTE_CALL_S, method, *args)
        except TimeoutError:
            raise ArchiveUnavailable(
                f"the archive {quote(self.url)} did not answer within {REMOTE_CALL_S:g} s ({method}) — the run's files "
                f"are kept in {self.root}; check the endpoint and the network to it"
            ) from None

    def record(self, record: dict, *, write_json: bool = True) -> None:
        super().record(record, write_json=write_json)
        uploaded = []
        for key in ("notebook", "html", "json"):
            local = self.root / record[key] if record.get(key) else None
            if local is not None and local.is_file():
                self._call("put_file", str(local), self._remote(record[key]))
                uploaded.append(local)
        self._upload_audit(record["run_id"])
        for local in uploaded:  # the bucket is the archive; the worker's disk keeps nothing
            local.unlink(missing_ok=True)

    def _upload_audit(self, run_id: str) -> None:
        audit = self.root / "audit.jsonl"
        if audit.is_file():
            mine = [line for line in audit.read_text(encoding="utf-8").splitlines() if f'"{run_id}"' in line]
            if mine:
                self._call("pipe_file", self._remote(f"audit/{run_id}.jsonl"), ("\n".join(mine) + "\n").encode())

    def _append(self, line: dict) -> None:
        final = 0 if line.get("status") == "running" else 1
        self._call("pipe_file", self._remote(f"ledger/{line['run_id']}.{final}.json"),
                   json.dumps(line, sort_keys=False).encode("utf-8"))
        self._call("pipe_file", self._remote("index.html"), render_index(self.runs(), self.root).encode("utf-8"))

    def runs(self, runbook: str | None = None) -> list[dict]:
        try:
            names = sorted(self._call("glob", self._remote("ledger/*.json")))
        except FileNotFoundError:
            names = []
        blobs = self._call("cat", names) if names else {}
        return self._merge(((i, blobs[name]) for i, name in enumerate(names, start=1)), runbook)

    def read_text(self, relative: str) -> str | None:
        try:
            return self._call("cat_file", self._remote(relative)).decode("utf-8")
        except FileNotFoundError:
            return None


def _bounded(fs, seconds: float, method: str, *args):
    """``fs.<method>(*args)``, or TimeoutError after ``seconds``. An async filesystem (s3fs,
    gcsfs) runs the coroutine with a deadline that cancels it; any other runs on a daemon thread
    that is left behind, so that it cannot hold the process at exit."""
    if getattr(fs, "async_impl", False) and hasattr(fs, f"_{method}"):
        from fsspec.asyn import sync
        from fsspec.exceptions import FSTimeoutError

        try:
            return sync(fs.loop, getattr(fs, f"_{method}"), *args, timeout=seconds)
        except FSTimeoutError:
            raise TimeoutError(method) from None
    outcome: dict = {}

    def call():
        try:
            outcome["value"] = getattr(fs, method)(*args)
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=call, name=f"opsbook-archive-{method}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(method)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


RUN_SCHEMA = Path(__file__).with_name("run.schema.json")


def check_against_schema(record: dict) -> None:
    """Raise if ``record`` does not match the published run schema (OPSBOOK_STRICT=1: the tests)."""
    import jsonschema

    schema = json.loads(RUN_SCHEMA.read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(record), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(top)"
        raise ValueError(f"run {record.get('run_id')} does not match run.schema.json at {where}: {errors[0].message}")


def _settle(row: dict) -> dict:
    """A ``running`` line whose process no longer exists on this host is a lost run."""
    if row.get("status") != "running" or row.get("host") != socket.gethostname():
        return row
    lost = {**row, "status": "lost", "error": "the run ended without a record (killed, or its machine stopped)"}
    try:
        pid = int(row.get("pid") or 0)
        if pid <= 0:
            return lost
        os.kill(pid, 0)
        return row
    except (ProcessLookupError, ValueError, OverflowError):
        return lost
    except PermissionError:  # alive, another user's
        return row


def ledger_line(record: dict) -> dict:
    keys = ("run_id", "runbook", "status", "severity", "started_at", "finished_at", "duration_s", "exit_code", "error",
            "interactive")
    line = {k: record.get(k) for k in keys if record.get(k) is not None}
    line["findings"] = {f["check"]: f["severity"] for f in record.get("findings", [])}
    for kind in ("json", "notebook", "html"):
        if record.get(kind):
            line[kind] = record[kind]
    return line


_BADGE = {"ok": "#2e7d32", "info": "#1565c0", "warning": "#ef6c00", "critical": "#c62828", "lost": "#6a1b9a",
          "error": "#c62828", "invalid": "#6d4c41"}


_FILTER_SCRIPT = (
    "<script>function opsbookFilter(){const rb=document.getElementById('rb').value,"
    "v=document.getElementById('verdict').value;for(const tr of document.querySelectorAll('tr[data-runbook]'))"
    "{tr.hidden=(rb!==''&&tr.dataset.runbook!==rb)||(v!==''&&tr.dataset.verdict!==v);}}"
    "document.addEventListener('DOMContentLoaded',()=>document.querySelectorAll('select.opsbook-filter')"
    ".forEach(s=>s.addEventListener('change',opsbookFilter)));</script>"
)
TREND_RUNS = 12


def _verdict(run: dict) -> str:
    status = str(run.get("status", ""))
    return str(run.get("severity", "ok")) if status in ("ok", "findings") else status


def _select(name: str, label: str, values: list[str]) -> str:
    options = "".join(f'<option value="{html_attr(v)}">{html_text(v, limit=80)}</option>' for v in values)
    return (f'<label>{label} <select id="{name}" class="opsbook-filter"><option value="">all</option>'
            f"{options}</select></label> ")


def _trend(runs: list[dict]) -> str:
    """Per runbook, each check's severity over its last runs (oldest left): what keeps coming back."""
    sections = []
    for runbook in sorted({str(r.get("runbook", "")) for r in runs}):
        recent = [r for r in runs if r.get("runbook") == runbook][:TREND_RUNS][::-1]
        findings = [r.get("findings") if isinstance(r.get("findings"), dict) else {} for r in recent]
        checks = sorted({str(c) for f in findings for c in f})
        if not checks:
            continue
        rows = []
        for check in checks:
            cells = []
            for run, found in zip(recent, findings):
                finished = run.get("status") in ("ok", "findings")
                severity = str(found.get(check, "ok")) if finished else _verdict(run)
                colour = _BADGE.get(severity, "#9e9e9e") if finished else "#bdbdbd"
                cells.append(f'<td title="{html_attr(run.get("run_id", ""))}: {html_attr(severity)}" '
                             f'style="background:{colour};width:14px"></td>')
            rows.append(f"<tr><td><code>{html_text(check, limit=80)}</code></td>{''.join(cells)}</tr>")
        sections.append(f"<h3>{html_text(runbook, limit=80)}</h3><table class='trend'>{''.join(rows)}</table>")
    return ("<h2>Checks over the last runs</h2><p>Oldest left; grey: the run did not finish.</p>" + "".join(sections)
            if sections else "")


def render_index(runs: list[dict], root: Path) -> str:
    rows = []
    for run in runs:
        verdict = _verdict(run)
        colour = _BADGE.get(verdict, "#555")
        links = " ".join(
            f'<a href="{html_attr(run[k])}">{label}</a>'
            for k, label in (("html", "report"), ("notebook", "ipynb"), ("json", "json")) if run.get(k)
        )
        findings = run.get("findings") if isinstance(run.get("findings"), dict) else {}
        problems = ", ".join(
            f"{html_text(check, limit=80)} ({html_text(sev, limit=20)})"
            for check, sev in sorted(findings.items(), key=lambda kv: -severity_rank(kv[1]) if kv[1] in SEVERITIES else 0)
            if sev != "ok"
        )
        error = html_text(run.get("error") or "", limit=300)
        rows.append(
            f'<tr data-runbook="{html_attr(run.get("runbook", ""), limit=80)}" data-verdict="{html_attr(verdict, limit=20)}">'
            f"<td>{html_text(run.get('started_at', ''), limit=40)}</td><td>{html_text(run.get('runbook', ''), limit=80)}</td>"
            f'<td><b style="color:{colour}">{html_text(verdict, limit=20)}</b></td>'
            f"<td>{error or problems}</td><td>{links}</td>"
            f"<td><code>{html_text(run.get('run_id', ''), limit=100)}</code></td></tr>"
        )
    runbooks = sorted({str(r.get("runbook", ""))[:80] for r in runs})
    verdicts = [v for v in (*SEVERITIES, "error", "invalid", "lost", "running") if any(_verdict(r) == v for r in runs)]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>opsbook runs</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}"
        "table.trend td{border:1px solid #fff;padding:2px 6px}</style>" + _FILTER_SCRIPT + "</head>"
        f"<body><h1>opsbook runs</h1><p>{len(runs)} runs, newest first.</p>"
        f"<p>{_select('rb', 'runbook', runbooks)}{_select('verdict', 'verdict', verdicts)}</p>"
        "<table><tr><th>started (UTC)</th><th>runbook</th><th>verdict</th><th>findings / error</th><th>files</th><th>run id</th></tr>"
        + "".join(rows)
        + "</table>" + _trend(runs) + "</body></html>\n"
    )
