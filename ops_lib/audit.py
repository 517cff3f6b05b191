"""The audit log of applied remediations: who did what, to which target, in which run, and why.

One JSON line per applied action in ``outputs/audit.jsonl`` (masked, appended under a lock), so
an incident reviewer finds every change opsbook made, whichever database it touched.
"""
from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from . import paths
from .findings import Action
from .secrets import Masker


@dataclass
class AuditLog:
    run_id: str
    runbook: str
    target: str
    path: Path | None = None
    masker: Masker | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path or paths.outputs_dir() / "audit.jsonl")
        self.masker = self.masker or Masker.from_env()

    def record(self, action: Action) -> None:
        entry = {
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_id": self.run_id,
            "runbook": self.runbook,
            "target": self.target,
            **action.to_dict(),
        }
        line = json.dumps(self.masker.obj(entry), sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
