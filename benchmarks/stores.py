"""Fresh stores for each repetition, and the store servers the benchmark starts."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mltrail.registry import load_backend_class
from mltrail.store import Store

logger = logging.getLogger(__name__)

NOSQL_BACKENDS = ("mongodb", "dynamodb", "firestore", "cassandra")


class Stores:
    """Makes empty stores of one backend through its conformance harness."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        scheme = url.split("://", 1)[0]
        self.harness = load_backend_class(scheme).conformance_harness(url)
        self._open: list[Any] = []

    def create(self) -> Store:
        backend = self.harness.create()
        self._open.append(backend)
        return Store(backend, actor="benchmark")

    def url_of(self, store: Store) -> str:
        return self.harness.store_url(store.backend)

    def detach(self, store: Store) -> Path:
        """Close and forget a local store but keep its file and return its path."""
        self._open.remove(store.backend)
        store.backend.close()
        return store.backend.path

    def destroy(self, store: Store) -> None:
        self._open.remove(store.backend)
        self.harness.destroy(store.backend)

    def destroy_all(self) -> None:
        for backend in list(self._open):
            self._open.remove(backend)
            self.harness.destroy(backend)


def backend_missing(name: str) -> str | None:
    """Return why backend `name` cannot be benchmarked here, or None."""
    if importlib.util.find_spec(f"mltrail.backends.{name}") is None:
        return f"module mltrail.backends.{name} does not exist"
    return None


def _launcher(action: str, name: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mltrail.conformance.emulators", action, name],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ},
    )


def start_emulator(name: str) -> tuple[str | None, str | None]:
    """Start the server of store `name` on loopback.

    Return (URL, None), or (None, reason) when it cannot start.

    The launcher keeps its state under $MLTRAIL_EMULATOR_DIR, which `run` sets
    to a folder of the benchmark's own, so a server that tests started is never
    reused or stopped.
    """
    try:
        result = _launcher("up", name, timeout=600)
    except subprocess.TimeoutExpired:
        return None, f"the {name} server did not start within 600 s"
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"the {name} server could not be started: {reason}"
    return lines[-1].strip(), None


def stop_emulator(name: str) -> None:
    result = _launcher("down", name, timeout=120)
    if result.returncode != 0:
        logger.warning("stopping the %s server failed: %s", name, result.stderr.strip())


def remove_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
