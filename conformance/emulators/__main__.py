"""Start, stop or list store servers: `python -m mltrail.conformance.emulators up NAME`.

The `mltrail emulators` command does the same; this entry point needs no CLI extras.
"""

from __future__ import annotations

import argparse
import logging
import sys

from mltrail.conformance import emulators


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mltrail.conformance.emulators")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("names", nargs="*", help="store names; default: all for status")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.action == "status":
            for state in emulators.status():
                print(f"{state.name}\tpid {state.pid}\t{state.url}")
            return 0
        for name in args.names:
            if args.action == "up":
                print(emulators.up(name).url, flush=True)
            elif not emulators.down(name):
                print(f"{name}: not running", file=sys.stderr)
    except emulators.EmulatorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
