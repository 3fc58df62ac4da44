"""Launcher for FerretDB, a MongoDB wire-protocol server, for tests on loopback.

The package registries this project installs from offer no mongod binary, so tests use
FerretDB 1.24 with its SQLite engine. A small Go program in resources/ferretdb embeds
FerretDB's public `ferretdb` package. The first start builds it with the Go toolchain
from the Go module proxy and caches the binary under the cache directory.

FerretDB 1.24.2 reports wire version 21, so current pymongo releases accept it. Checked
with pymongo 4.20.1, it differs from MongoDB in ways a backend must design around:

- Transactions fail with OperationFailure (code 9). Sessions without transactions work.
- Keys containing "." or starting with "$" fail with WriteError (code 2).
- NaN closes the connection (pymongo raises AutoReconnect), infinity fails with
  WriteError (code 2), and Decimal128 values also close the connection.
- A unique index rejects a duplicate insert or upsert with DuplicateKeyError (11000),
  but a duplicate made by update, replace or findAndModify fails with
  OperationFailure code 1 (InternalError).
- Of the $group accumulators only $sum and $count work. $avg, $min, $max, $first,
  $last, $push and $addToSet are not implemented. $lookup, $facet, $replaceRoot,
  $sortByCount, $changeStream and $expr are not implemented either. $project and
  $addFields return a "$field" string as a literal instead of the field's value,
  without an error.
- TTL and partial indexes are not implemented, but unique, compound and sparse ones are.
- Only a filter of exactly {"_id": <string or ObjectId>} uses an index. Every other
  filter and every sort reads the whole collection: 0.4 to 0.9 s per query on a
  collection of 10,000 small documents on a 2-core machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from mltrail.conformance.emulators.base import (
    LOOPBACK,
    Emulator,
    EmulatorError,
    EmulatorState,
    cache_dir,
)

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent / "resources" / "ferretdb"
SOURCE_FILES = ("go.mod", "go.sum", "main.go")
BINARY_NAME = "ferretdb-mltrail"

# A cold build (empty Go module and build caches) took 2 min 20 s with go1.26.8 on a
# 2-core machine, so this limit only catches a hung download.
BUILD_TIMEOUT_SECONDS = 30 * 60

# Default install location of the official Go toolchain, used when `go` is not on PATH.
DEFAULT_GO = Path("/usr/local/go/bin/go")


def go_executable() -> str:
    """Return the `go` command from $MLTRAIL_GO, else PATH, else /usr/local/go."""
    configured = os.environ.get("MLTRAIL_GO")
    if configured:
        if not Path(configured).is_file():
            raise EmulatorError(
                f"MLTRAIL_GO is set to {configured!r}, which is not a file. "
                "Set it to the path of the `go` command or unset it"
            )
        return configured
    found = shutil.which("go")
    if found:
        return found
    if DEFAULT_GO.is_file():
        return str(DEFAULT_GO)
    raise EmulatorError(
        "the Go toolchain, which builds the FerretDB server for the mongodb emulator, "
        "was not found on PATH or at /usr/local/go/bin/go. Install Go 1.24 or later, "
        "or set MLTRAIL_GO to the path of the `go` command"
    )


def source_digest() -> str:
    """Return a hash of the Go program's sources, so each edit gets its own build."""
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        path = SOURCE_DIR / name
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise EmulatorError(
                f"missing {path}; reinstall mltrail so its package data is present"
            ) from None
        digest.update(name.encode() + b"\0" + content + b"\0")
    return digest.hexdigest()[:16]


def binary_path() -> Path:
    """Return the cache path of the FerretDB binary built from the current sources."""
    return cache_dir() / "ferretdb" / source_digest() / BINARY_NAME


def build_binary(target: Path) -> None:
    """Build the FerretDB program into `target` unless another process already has.

    An exclusive lock on a file beside `target` makes concurrent callers wait for one
    build, and the binary is renamed into place only when complete. A crashed build
    therefore never leaves a half-written binary behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return
        go = go_executable()
        logger.info(
            "building FerretDB into %s with %s; the first build on a machine "
            "downloads Go modules and takes a few minutes",
            target,
            go,
        )
        started = time.monotonic()
        # The temporary folder sits beside `target`, so os.replace below is an atomic
        # rename on one file system.
        with tempfile.TemporaryDirectory(dir=target.parent, prefix="build-") as work:
            source = Path(work) / "src"
            source.mkdir()
            for name in SOURCE_FILES:
                shutil.copyfile(SOURCE_DIR / name, source / name)
            output = Path(work) / BINARY_NAME
            _run_go_build(go, source, output)
            os.replace(output, target)
        logger.info("built FerretDB in %.0f s", time.monotonic() - started)


def _run_go_build(go: str, source: Path, output: Path) -> None:
    # -mod=readonly fails on a go.sum that does not match go.mod instead of rewriting
    # it, so the build uses exactly the committed dependency versions. The SQLite
    # engine is pure Go, so CGO_ENABLED=0 needs no C compiler.
    argv = [go, "build", "-mod=readonly", "-trimpath", "-o", str(output), "."]
    env = {**os.environ, "CGO_ENABLED": "0"}
    try:
        result = subprocess.run(
            argv,
            cwd=source,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise EmulatorError(
            f"building FerretDB with {go} timed out after {BUILD_TIMEOUT_SECONDS} s; "
            "check that the Go module proxy is reachable, then start again"
        ) from None
    if result.returncode != 0:
        output_tail = "\n".join(result.stderr.strip().splitlines()[-20:])
        raise EmulatorError(
            f"building FerretDB with {go} failed with exit code {result.returncode}:\n"
            f"{output_tail}"
        )


class MongoDBEmulator(Emulator):
    """FerretDB with its SQLite engine, started with an empty data folder each time."""

    name = "mongodb"

    def prepare(self) -> None:
        """Check that pymongo is installed, and build FerretDB unless it is cached."""
        if importlib.util.find_spec("pymongo") is None:
            raise EmulatorError(
                "pymongo is not installed; the mongodb emulator needs it to check that "
                "the server is ready. Install it with: pip install 'mltrail[mongodb]'"
            )
        target = binary_path()
        if not target.is_file():
            build_binary(target)

    def command(self, port: int, data_dir: Path) -> tuple[list[str], dict[str, str]]:
        binary = binary_path()
        if not binary.is_file():
            raise EmulatorError(
                f"the FerretDB binary {binary} is missing; call prepare() first"
            )
        argv = [
            str(binary),
            "-listen-addr",
            f"{LOOPBACK}:{port}",
            "-sqlite-dir",
            str(data_dir),
        ]
        return argv, {}

    def store_url(self, port: int) -> str:
        return f"mongodb://{LOOPBACK}:{port}/mltrail"

    def start(self) -> EmulatorState:
        """Start FerretDB unless it runs already, and return its state.

        A server that crashed or failed during start-up never reached cleanup, so its
        data folder is removed here before a new server starts.
        """
        if self.status() is None:
            data_dir = self.data_dir()
            if any(data_dir.iterdir()):
                self.cleanup(data_dir)
        return super().start()

    def wait_ready(self, port: int, process: subprocess.Popen, deadline: float) -> None:
        """Block until a `ping` command to FerretDB on `port` succeeds."""
        # pymongo comes with the optional `mongodb` extra, so it is imported only here.
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        client: MongoClient = MongoClient(
            self.store_url(port),
            directConnection=True,
            connectTimeoutMS=500,
            serverSelectionTimeoutMS=500,
        )
        last_error: Exception | None = None
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise EmulatorError(
                        f"{self.name} server exited with code {process.returncode} "
                        f"during start-up; see {self.log_path}"
                    )
                try:
                    client.admin.command("ping")
                    return
                except PyMongoError as error:
                    last_error = error
                    time.sleep(0.1)
        finally:
            client.close()
        raise EmulatorError(
            f"{self.name} server did not respond to ping on port {port} within "
            f"{self.start_timeout:.0f} s (last error: {last_error}); "
            f"see {self.log_path}"
        )

    def cleanup(self, data_dir: Path) -> None:
        """Remove the SQLite data folder, so that the next start begins empty."""
        if data_dir.exists():
            logger.info("removing %s data folder %s", self.name, data_dir)
            shutil.rmtree(data_dir)
