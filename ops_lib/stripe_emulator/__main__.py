"""python -m ops_lib.stripe_emulator --state FILE [--port PORT]: serve until interrupted."""
from __future__ import annotations

import argparse
import signal
import sys

from .objects import API_VERSION
from .server import Emulator, EmulatorServer


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ops_lib.stripe_emulator",
        description=f"Serve a Stripe account (API version {API_VERSION}) from a state file (JSON, or SQLite for large accounts).")
    parser.add_argument("--state", required=True, help="the state file (reloaded when it changes)")
    parser.add_argument("--port", type=int, default=12111, help="0 picks a free port (default 12111)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    try:
        server = EmulatorServer(Emulator(args.state), "127.0.0.1", args.port, args.verbose)
    except (OSError, ValueError) as exc:
        print(f"stripe emulator: cannot start: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # `opsbook demo down` stops it like Ctrl-C
    print(f"Stripe emulator serving {args.state} at {server.base_url} "
          f"(Stripe-Version {API_VERSION})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
