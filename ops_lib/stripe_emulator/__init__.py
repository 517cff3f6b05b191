"""A local Stripe API for the demo and the tests: the real `stripe` SDK talks to it over HTTP.

It serves one account's objects from a state file — a JSON document (state.py), or for a large
account a SQLite file read in place (store.py) — built with the builders in objects.py and shaped
as Stripe's 2023-08-16 specification describes them, with Stripe's list pagination, filters,
expansion, errors and switchable faults (api.py, server.py).

    python -m ops_lib.stripe_emulator --state demo-stripe.json --port 12111
"""
from .objects import API_VERSION
from .server import Emulator, EmulatorServer, start_emulator, stop, stop_emulator
from .state import OBJECT_TYPES, add_objects, new_state, read_state, write_state
from .store import SqliteStateWriter, write_sqlite_state

__all__ = [
    "API_VERSION", "Emulator", "EmulatorServer", "OBJECT_TYPES", "add_objects", "new_state",
    "SqliteStateWriter", "read_state", "start_emulator", "stop", "stop_emulator", "write_sqlite_state",
    "write_state",
]
