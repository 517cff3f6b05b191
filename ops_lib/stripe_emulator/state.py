"""The emulator's state file: one human-readable JSON document holding a Stripe account.

    {
      "api_keys": ["sk_test_...",                                   # full read access
                   {"key": "rk_test_...", "permissions": ["event", "customer"]}],  # restricted
      "objects": {"customer": [...], "product": [...], ..., "checkout.session": [...]},
      "faults": [{"status": 500, "count": 1, "path_prefix": "/v1/events"}]
    }

Objects are stored exactly as the API serves them (see objects.py), grouped by their `object`
value. A restricted key lists the object types it may read (Stripe's `rak_<type>_read`
permissions). Faults make the emulator fail requests on purpose (see server.py).
The server reloads the file whenever its modification time changes, so write it atomically
(`write_state` does). An account of millions of objects is a SQLite state instead (store.py),
which the server reads in place; the server tells the two apart by the file's first bytes.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

OBJECT_TYPES = (
    "customer", "product", "price", "subscription", "invoice", "charge", "refund", "dispute",
    "balance_transaction", "event", "webhook_endpoint", "checkout.session", "payment_intent",
)


READABLE_UP_TO = 50_000  # objects: states this small are written indented


def new_state(api_keys: Iterable[str | Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "api_keys": list(api_keys),
        "objects": {object_type: [] for object_type in OBJECT_TYPES},
        "faults": [],
    }


def add_objects(state: dict[str, Any], *objects: Mapping[str, Any]) -> dict[str, Any]:
    """Append built objects to the state, each under its own type (returns the state)."""
    for obj in objects:
        object_type = obj["object"]
        if object_type not in OBJECT_TYPES:
            raise ValueError(f"the emulator does not serve {object_type} objects")
        state["objects"].setdefault(object_type, []).append(dict(obj))
    return state


def write_state(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write the state atomically, so a running emulator never reads half a file."""
    path = Path(path)
    # Indented (human-readable) up to a demo's size; compact beyond, where indentation would
    # also force json's pure-Python encoder (a benchmark's state is gigabytes).
    size = sum(len(items) for items in (state.get("objects") or {}).values())
    indent = 2 if size <= READABLE_UP_TO else None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=indent, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        state = json.load(f)
    if not isinstance(state, dict) or not isinstance(state.get("objects"), dict):
        raise ValueError(f"{path}: not an emulator state (no \"objects\" mapping)")
    return state
