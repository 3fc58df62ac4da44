"""Launcher for a single-node Apache Cassandra 5.0 server on loopback, for tests.

The server runs from the `org.apache.cassandra:cassandra-all` jars of Maven Central,
resolved once with Maven into the cache directory, on a Java 17 runtime. Each start
gets an empty data folder and a cassandra.yaml generated into it, and stopping the
server deletes that folder, so no state survives from one start to the next.
"""

from __future__ import annotations

import fcntl
import json
import logging
import re
import shutil
import socket
import string
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mltrail.conformance.emulators.base import (
    LOOPBACK,
    Emulator,
    EmulatorError,
    cache_dir,
    free_port,
    state_dir,
)

logger = logging.getLogger(__name__)

CASSANDRA_VERSION = "5.0.8"
KEYSPACE = "mltrail"
MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"
RESOURCES = Path(__file__).parent / "resources" / "cassandra"

PREFERRED_JAVA = Path("/usr/lib/jvm/java-17-openjdk-amd64/bin/java")
# Cassandra 5.0 ships JVM options for Java 11 and 17 only. It installs a security
# manager at start-up, which Java 24 and later no longer allow.
# NOTE: Java 18 to 23 are accepted but were never tried with this launcher.
MIN_JAVA_VERSION = 17
MAX_JAVA_VERSION = 23

# Marker written into a jar folder after Maven finished and before the folder is
# renamed into place. A folder without it is left from an interrupted resolution.
JARS_COMPLETE_MARKER = "jars.complete"
MAVEN_TIMEOUT_SECONDS = 900.0

# The --add-exports and --add-opens flags of conf/jvm17-server.options in the Apache
# Cassandra repository (the union of two recent versions of that file). Without one
# of them some start-up step fails with InaccessibleObjectException.
JVM_MODULE_OPTIONS = [
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
]


class CassandraEmulator(Emulator):
    """A single-node Cassandra server on loopback with a fresh data folder per start."""

    name = "cassandra"
    # With cached jars, `up` took 6 to 15 s on a 2-core, 24 GiB machine that was also
    # running other test servers and builds. The margin covers a slower CI machine.
    start_timeout = 180.0
    version = CASSANDRA_VERSION

    def __init__(self) -> None:
        self._java: Path | None = None
        self._java_version = 0
        self._lib_dir: Path | None = None

    def prepare(self) -> None:
        """Find a Java runtime and resolve the server jars unless they are cached."""
        self._java, self._java_version = find_java()
        self._lib_dir = resolve_jars(self.version)

    def command(self, port: int, data_dir: Path) -> tuple[list[str], dict[str, str]]:
        if self._java is None or self._lib_dir is None:
            self.prepare()
        reset_directory(data_dir)
        storage_port = free_port()
        while storage_port == port:
            storage_port = free_port()
        config_path = write_config(data_dir, port, storage_port)
        # Cassandra warns every minute while its trigger folder is missing.
        (data_dir / "triggers").mkdir()
        return self._java_argv(config_path, data_dir), {}

    def store_url(self, port: int) -> str:
        return f"cassandra://{LOOPBACK}:{port}/{KEYSPACE}?replication_factor=1"

    def wait_ready(self, port: int, process: subprocess.Popen, deadline: float) -> None:
        """Block until a CQL query on `port` succeeds; a TCP connect is not enough."""
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmulatorError(
                    f"cassandra server exited with code {process.returncode} during "
                    f"start-up; last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            try:
                release = query_release_version(port)
            except (OSError, CqlError) as error:
                last_error = error
                time.sleep(0.5)
                continue
            logger.info("cassandra %s responds to CQL on port %d", release, port)
            return
        raise EmulatorError(
            f"cassandra server did not respond to a CQL query on port {port} "
            f"within {self.start_timeout:.0f} s (last error: {last_error}); "
            f"see {self.log_path}"
        )

    def cleanup(self, data_dir: Path) -> None:
        """Delete the data folder, so the next start begins with an empty cluster."""
        shutil.rmtree(data_dir, ignore_errors=True)

    def _java_argv(self, config_path: Path, data_dir: Path) -> list[str]:
        assert self._java is not None and self._lib_dir is not None
        jamm_jars = sorted(self._lib_dir.glob("jamm-*.jar"))
        if not jamm_jars:
            raise EmulatorError(
                f"no jamm-*.jar in {self._lib_dir}; delete {self._lib_dir.parent} "
                "so the next start resolves the jars again"
            )
        argv = [
            str(self._java),
            # Cassandra's conf/jvm-server.options enables assertions as "highly
            # suggested for correct application functionality" and disables those of
            # net.openhft (Chronicle), which run out of memory by design.
            "-ea",
            "-da:net.openhft...",
            "-Xss256k",
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-XX:+ParallelRefProcEnabled",
            # Cassandra warns that a JVM that keeps running after OutOfMemoryError can
            # corrupt data; exiting also makes a test fail fast instead of hanging.
            "-XX:+ExitOnOutOfMemoryError",
            # A crash report goes beside the server log, not into the caller's working
            # directory or into the data folder that stopping deletes.
            f"-XX:ErrorFile={state_dir() / 'cassandra-hs_err_pid%p.log'}",
            "-Djava.net.preferIPv4Stack=true",
            "-Djdk.attach.allowAttachSelf=true",
            *JVM_MODULE_OPTIONS,
            "-Dio.netty.tryReflectionSetAccessible=true",
            "-Dio.netty.allocator.useCacheForAllThreads=true",
            "-Dio.netty.allocator.maxOrder=11",
            f"-javaagent:{jamm_jars[-1]}",
            f"-Dlogback.configurationFile={RESOURCES / 'logback.xml'}",
            f"-Dcassandra.config={config_path.as_uri()}",
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.storagedir={data_dir}",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=1000",
            f"-Dcassandra.triggers_dir={data_dir / 'triggers'}",
            # Stopping need not announce the shutdown to peers (default 2 s) nor wait
            # for inter-node messaging to quiesce, because there are no peers.
            "-Dcassandra.shutdown_announce_in_ms=0",
            "-Dcassandra.test.messagingService.nonGracefulShutdown=true",
            # Skips the blocking flushes of system tables after schema and ring changes.
            # That speeds up start-up and DDL, and a crash loses only throw-away data.
            "-Dcassandra.unsafesystem=true",
            # Neither cassandra.jmx.local.port nor cassandra.jmx.remote.port is set, so
            # no JMX port is opened at all. Cassandra logs a warning about it at start.
        ]
        if self._java_version >= 18:
            # Since Java 18 a security manager can only be installed when allowed.
            argv.append("-Djava.security.manager=allow")
        argv += ["-cp", f"{self._lib_dir}/*", MAIN_CLASS]
        return argv


def find_java() -> tuple[Path, int]:
    """Return the first Java runtime from 17 to 23 and its major version.

    The Debian OpenJDK 17 path comes first, then `java` on PATH.
    """
    candidates: list[Path] = []
    if PREFERRED_JAVA.exists():
        candidates.append(PREFERRED_JAVA)
    on_path = shutil.which("java")
    if on_path is not None:
        candidates.append(Path(on_path))
    rejected = []
    for java in candidates:
        version = java_major_version(java)
        if MIN_JAVA_VERSION <= version <= MAX_JAVA_VERSION:
            return java, version
        rejected.append(f"{java} is Java {version or 'of unknown version'}")
    found = "; ".join(rejected) if rejected else "no java on PATH"
    raise EmulatorError(
        f"Cassandra {CASSANDRA_VERSION} needs Java {MIN_JAVA_VERSION} to "
        f"{MAX_JAVA_VERSION} ({found}); install OpenJDK 17 "
        "(apt-get install openjdk-17-jre-headless) or put such a java first on PATH"
    )


def java_major_version(java: Path) -> int:
    """Return the major version printed by `java -version`, or 0 if none is printed."""
    try:
        result = subprocess.run(
            [str(java), "-version"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        return 0
    major = int(match.group(1))
    # Java 8 and older report themselves as "1.8.0_..." and so on.
    if major == 1 and match.group(2):
        major = int(match.group(2))
    return major


def resolve_jars(version: str) -> Path:
    """Return the folder of the runtime jars of `version`, resolved with Maven once.

    A file lock keeps concurrent callers from resolving at the same time, and the jars
    are resolved into a temporary folder that is renamed into place only when
    complete, so an interrupted resolution never leaves a partial cache behind.
    """
    root = cache_dir() / "cassandra"
    target = root / version
    lib_dir = target / "lib"
    if (target / JARS_COMPLETE_MARKER).exists():
        return lib_dir
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f"{version}.lock"):
        if (target / JARS_COMPLETE_MARKER).exists():
            return lib_dir
        # Under the lock, no other resolution of this version runs, so any staging
        # folder of it is left from a process that was killed.
        for leftover in root.glob(f".{version}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
        staging.chmod(0o755)
        try:
            run_maven(version, staging)
            (staging / JARS_COMPLETE_MARKER).write_text(f"cassandra-all {version}\n")
            # A folder without the marker is left from a resolution that was killed.
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return lib_dir


def run_maven(version: str, staging: Path) -> None:
    """Copy the runtime jars of cassandra-all `version` into `staging`/lib."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise EmulatorError(
            "mvn not found on PATH; install Apache Maven 3.6.3 or later "
            "(apt-get install maven) so the Cassandra jars can be resolved"
        )
    # Maven runs on a copy of the pom, so nothing it writes lands in the package.
    pom = staging / "pom.xml"
    shutil.copyfile(RESOURCES / "pom.xml", pom)

    argv = [
        mvn,
        "--batch-mode",
        "--quiet",
        "-Dstyle.color=never",
        "--file",
        str(pom),
        f"-Dcassandra.version={version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging / 'lib'}",
    ]
    logger.info(
        "resolving the jars of Cassandra %s with Maven into %s",
        version,
        staging.parent / version,
    )
    started = time.monotonic()
    try:
        result = subprocess.run(
            argv,
            check=False,
            capture_output=True,
            text=True,
            timeout=MAVEN_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise EmulatorError(
            f"mvn timed out after {MAVEN_TIMEOUT_SECONDS:.0f} s resolving "
            f"org.apache.cassandra:cassandra-all:{version}; check that Maven Central "
            "is reachable and start the server again"
        ) from None

    if result.returncode != 0:
        raise EmulatorError(
            f"mvn failed with exit code {result.returncode} resolving "
            f"org.apache.cassandra:cassandra-all:{version}; check that the version "
            "exists and that Maven Central is reachable. Maven reported:\n"
            + maven_error(result.stdout + result.stderr)
        )

    server_jar = staging / "lib" / f"cassandra-all-{version}.jar"
    if not server_jar.exists():
        raise EmulatorError(
            f"mvn finished but {server_jar.name} is missing from its output; check "
            f"the dependency in {RESOURCES / 'pom.xml'}"
        )
    logger.info(
        "resolved the jars of Cassandra %s in %.1f s",
        version,
        time.monotonic() - started,
    )


def maven_error(output: str) -> str:
    """Return the first block of [ERROR] lines in Maven's output, without help text."""
    # Debian's Maven 3.8 writes color reset codes even with -Dstyle.color=never.
    lines = re.sub(r"\x1b\[[0-9;]*m", "", output).splitlines()
    block: list[str] = []
    for line in lines:
        if not line.startswith("[ERROR]"):
            continue
        # A bare [ERROR] line separates the failure from Maven's generic advice.
        if not line[len("[ERROR]") :].strip():
            if block:
                break
            continue
        block.append(line)
    return "\n".join(block) if block else "\n".join(lines[-20:])


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block, waiting for other holders."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def reset_directory(path: Path) -> None:
    """Empty `path`, so a server killed without `stop` leaves nothing behind."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def write_config(data_dir: Path, native_port: int, storage_port: int) -> Path:
    """Write cassandra.yaml for one start into `data_dir` and return its path."""
    template = string.Template((RESOURCES / "cassandra.yaml").read_text())

    # JSON strings are valid YAML double-quoted strings, so any folder name is safe.
    def quoted(name: str) -> str:
        return json.dumps(str(data_dir / name))

    text = template.substitute(
        native_port=native_port,
        storage_port=storage_port,
        data_file_directory=quoted("data"),
        commitlog_directory=quoted("commitlog"),
        saved_caches_directory=quoted("saved_caches"),
        hints_directory=quoted("hints"),
        cdc_raw_directory=quoted("cdc_raw"),
    )
    config_path = data_dir / "cassandra.yaml"
    config_path.write_text(text)
    return config_path


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"(log unreadable: {error})"
    return "\n".join(text.splitlines()[-lines:])


# A minimal client of the CQL native protocol, version 4, which is enough to run
# one query without depending on cassandra-driver. Frame layout: version, flags,
# stream id, opcode, body length, then the body.
class CqlError(Exception):
    """The server responded, but not with the expected CQL response."""


CQL_VERSION_REQUEST = 0x04
CQL_FRAME_HEADER = struct.Struct(">BBhBi")
OPCODE_ERROR = 0x00
OPCODE_STARTUP = 0x01
OPCODE_READY = 0x02
OPCODE_AUTHENTICATE = 0x03
OPCODE_QUERY = 0x07
OPCODE_RESULT = 0x08
RESULT_KIND_ROWS = 0x0002
ROWS_FLAG_GLOBAL_TABLES_SPEC = 0x0001
ROWS_FLAG_HAS_MORE_PAGES = 0x0002
CONSISTENCY_ONE = 0x0001


def query_release_version(port: int, timeout: float = 5.0) -> str:
    """Return `release_version` from system.local through a CQL connection to `port`."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        startup = _cql_string_map({"CQL_VERSION": "3.0.0"})
        opcode, body = _cql_request(sock, OPCODE_STARTUP, startup)
        if opcode == OPCODE_AUTHENTICATE:
            raise CqlError(
                "server requires authentication, but the generated cassandra.yaml "
                "should allow anonymous clients"
            )
        if opcode != OPCODE_READY:
            raise CqlError(f"STARTUP returned opcode {opcode:#04x}, expected READY")
        query = "SELECT release_version FROM system.local WHERE key = 'local'"
        encoded = query.encode()
        request = (
            struct.pack(">i", len(encoded))
            + encoded
            + struct.pack(">HB", CONSISTENCY_ONE, 0)
        )
        opcode, body = _cql_request(sock, OPCODE_QUERY, request)
        if opcode != OPCODE_RESULT:
            raise CqlError(f"QUERY returned opcode {opcode:#04x}, expected RESULT")
        return _single_text_value(body)


def _cql_request(sock: socket.socket, opcode: int, body: bytes) -> tuple[int, bytes]:
    request_header = CQL_FRAME_HEADER.pack(CQL_VERSION_REQUEST, 0, 0, opcode, len(body))
    sock.sendall(request_header + body)
    response_header = _receive_exactly(sock, CQL_FRAME_HEADER.size)
    _, _, _, response_opcode, length = CQL_FRAME_HEADER.unpack(response_header)
    response = _receive_exactly(sock, length)
    if response_opcode == OPCODE_ERROR:
        code = struct.unpack_from(">i", response)[0]
        message, _ = _read_cql_string(response, 4)
        raise CqlError(f"server error {code:#06x}: {message}")
    return response_opcode, response


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise CqlError("server closed the connection in the middle of a response")
        chunks += chunk
    return bytes(chunks)


def _cql_string_map(values: dict[str, str]) -> bytes:
    out = struct.pack(">H", len(values))
    for key, value in values.items():
        for item in (key, value):
            encoded = item.encode()
            out += struct.pack(">H", len(encoded)) + encoded
    return out


def _read_cql_string(buffer: bytes, offset: int) -> tuple[str, int]:
    (length,) = struct.unpack_from(">H", buffer, offset)
    start = offset + 2
    return buffer[start : start + length].decode(errors="replace"), start + length


def _single_text_value(body: bytes) -> str:
    """Decode the first column of the first row of a Rows result with text columns."""
    kind, flags, column_count = struct.unpack_from(">iii", body)
    if kind != RESULT_KIND_ROWS:
        raise CqlError(f"RESULT of kind {kind:#06x}, expected Rows")
    offset = 12
    if flags & ROWS_FLAG_HAS_MORE_PAGES:
        (paging_state_length,) = struct.unpack_from(">i", body, offset)
        offset += 4 + max(paging_state_length, 0)
    global_spec = bool(flags & ROWS_FLAG_GLOBAL_TABLES_SPEC)
    if global_spec:
        for _ in range(2):  # keyspace and table names
            _, offset = _read_cql_string(body, offset)
    for _ in range(column_count):
        if not global_spec:
            for _ in range(2):
                _, offset = _read_cql_string(body, offset)
        _, offset = _read_cql_string(body, offset)  # column name
        offset += 2  # type id; text and varchar carry no type parameters
    (row_count,) = struct.unpack_from(">i", body, offset)
    if row_count < 1:
        raise CqlError("system.local returned no row")
    (value_length,) = struct.unpack_from(">i", body, offset + 4)
    start = offset + 8
    return body[start : start + value_length].decode(errors="replace")
