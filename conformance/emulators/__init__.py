"""Launchers for each store's server on loopback, used by tests and `mltrail emulators`.

Launchers are imported lazily, so listing them costs nothing and one store's
missing toolchain never affects another.
"""

from __future__ import annotations

import importlib

from mltrail.conformance.emulators.base import Emulator, EmulatorError, EmulatorState

# Store name -> "module:class" of its launcher, sorted by name.
LAUNCHERS: dict[str, str] = {
    "cassandra": "mltrail.conformance.emulators.cassandra:CassandraEmulator",
    "dynamodb": "mltrail.conformance.emulators.dynamodb:DynamoDBEmulator",
    "firestore": "mltrail.conformance.emulators.firestore:FirestoreEmulator",
    "mongodb": "mltrail.conformance.emulators.mongodb:MongoDBEmulator",
}


def get_emulator(name: str) -> Emulator:
    """Return the launcher for store `name`; raise EmulatorError for an unknown one."""
    try:
        target = LAUNCHERS[name]
    except KeyError:
        known = ", ".join(sorted(LAUNCHERS))
        raise EmulatorError(f"no emulator named {name!r}; known: {known}") from None
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)()


def up(name: str) -> EmulatorState:
    return get_emulator(name).start()


def down(name: str) -> bool:
    return get_emulator(name).stop()


def status() -> list[EmulatorState]:
    """Return the state of every running server, sorted by store name."""
    states = []
    for name in sorted(LAUNCHERS):
        try:
            emulator = get_emulator(name)
        except ImportError:
            continue
        state = emulator.status()
        if state is not None:
            states.append(state)
    return states


__all__ = ["Emulator", "EmulatorError", "EmulatorState", "LAUNCHERS", "down",
           "get_emulator", "status", "up"]
