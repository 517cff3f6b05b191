"""The archive of runs: ``outputs/<runbook>/<UTC date>/<run_id>.ipynb|.html|.json``, ``runs.jsonl``, ``index.html``.

Every file is masked, then written atomically (a temporary file in the same folder, then
rename), so a reader never sees half a file and concurrent runs never overwrite each other.
"""
from __future__ import annotations

import fcntl
import html
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .findings import severity_rank


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

    @classmethod
    def default(cls, root: Path | str | None = None) -> "Archive":
        return cls((Path(root) if root else paths.outputs_dir()).resolve())  # kernels run in notebooks/

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

    def record(self, record: dict) -> None:
        """Write the run's JSON, add its line to runs.jsonl and refresh index.html."""
        files = self.files(record["runbook"], record["run_id"])
        atomic_write(files["json"], json.dumps(record, indent=2, sort_keys=False) + "\n")
        line = json.dumps(ledger_line(record), sort_keys=False) + "\n"
        with self._ledger_lock():
            with open(self.ledger, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            atomic_write(self.root / "index.html", render_index(self.runs(), self.root))

    def runs(self, runbook: str | None = None) -> list[dict]:
        """Runs newest first."""
        if not self.ledger.exists():
            return []
        rows = []
        for line in self.ledger.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash must not hide the others
            if runbook is None or row.get("runbook") == runbook:
                rows.append(row)
        return sorted(rows, key=lambda r: r.get("started_at", ""), reverse=True)

    def load(self, run_id: str) -> dict:
        for row in self.runs():
            if row["run_id"] == run_id:
                return json.loads((self.root / row["json"]).read_text())
        raise KeyError(run_id)


def ledger_line(record: dict) -> dict:
    keys = ("run_id", "runbook", "status", "severity", "started_at", "finished_at", "duration_s", "exit_code", "error")
    line = {k: record.get(k) for k in keys if record.get(k) is not None}
    line["findings"] = {f["check"]: f["severity"] for f in record.get("findings", [])}
    for kind in ("json", "notebook", "html"):
        if record.get(kind):
            line[kind] = record[kind]
    return line


_BADGE = {"ok": "#2e7d32", "info": "#1565c0", "warning": "#ef6c00", "critical": "#c62828"}


def render_index(runs: list[dict], root: Path) -> str:
    rows = []
    for run in runs:
        colour = _BADGE.get(run.get("severity", "ok"), "#555")
        verdict = run.get("status", "")
        if run.get("status") in ("ok", "findings"):
            verdict = run.get("severity", "")
        links = " ".join(
            f'<a href="{html.escape(run[k])}">{label}</a>' for k, label in (("html", "report"), ("notebook", "ipynb"), ("json", "json")) if run.get(k)
        )
        problems = ", ".join(
            f"{html.escape(check)} ({sev})"
            for check, sev in sorted(run.get("findings", {}).items(), key=lambda kv: -severity_rank(kv[1]))
            if sev != "ok"
        )
        rows.append(
            f"<tr><td>{html.escape(run.get('started_at', ''))}</td><td>{html.escape(run.get('runbook', ''))}</td>"
            f'<td><b style="color:{colour}">{html.escape(verdict)}</b></td>'
            f"<td>{html.escape(run.get('error', '')) or problems}</td><td>{links}</td>"
            f"<td><code>{html.escape(run.get('run_id', ''))}</code></td></tr>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>opsbook runs</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}</style></head>"
        f"<body><h1>opsbook runs</h1><p>{len(runs)} runs, newest first.</p>"
        "<table><tr><th>started (UTC)</th><th>runbook</th><th>verdict</th><th>findings / error</th><th>files</th><th>run id</th></tr>"
        + "".join(rows)
        + "</table></body></html>\n"
    )
