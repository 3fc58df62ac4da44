"""Launcher for the Firestore emulator that ships with the Google Cloud CLI.

The launcher runs the emulator's jar with `java` directly, skipping the `gcloud` and
shell wrappers, so the server is a single process that SIGTERM stops. Data lives in
memory only. `DELETE /emulator/v1/projects/PROJECT/databases/DATABASE/documents`
empties one database; each database must be reset on its own.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from mltrail.conformance.emulators.base import LOOPBACK, Emulator, EmulatorError

logger = logging.getLogger(__name__)

PROJECT = "mltrail-test"
JAR_IN_SDK = Path("platform/cloud-firestore-emulator/cloud-firestore-emulator.jar")
MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
INSTALL_HINT = (
    "install the Debian package google-cloud-cli-firestore-emulator or run "
    "`gcloud components install cloud-firestore-emulator`"
)

# The java that runs the emulator. It has its own variable because JAVA_HOME may
# name the JDK that another store's server needs.
JAVA_ENV = "MLTRAIL_FIRESTORE_JAVA"

# Probes go to loopback, so they skip any HTTP proxy set in the environment.
DIRECT_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Class file major version 45 is Java 1.1, and each later Java release adds one.
CLASS_VERSION_OFFSET = 44


class FirestoreEmulator(Emulator):
    """The Cloud Firestore emulator in native mode, listening on loopback."""

    name = "firestore"
    start_timeout = 90.0

    def __init__(self) -> None:
        self._jar: Path | None = None
        self._java: str | None = None

    def prepare(self) -> None:
        jar = find_emulator_jar()
        java = find_java()
        needed = required_java_version(jar)
        available = java_version(java)
        if available < needed:
            raise EmulatorError(
                f"the Firestore emulator {jar} needs Java {needed} or newer, but "
                f"{java} is Java {available}; set {JAVA_ENV} to the java "
                f"executable of a newer JDK"
            )
        self._jar = jar
        self._java = java

    def command(self, port: int, data_dir: Path) -> tuple[list[str], dict[str, str]]:
        if self._jar is None or self._java is None:
            raise EmulatorError(
                "FirestoreEmulator.command() was called before prepare()"
            )
        # Emulator 1.19.9 binds its extra ports (WebSocket, WebChannel and one
        # internal port) to --host as well, each on a port the OS picks.
        argv = [
            self._java,
            # The emulator's own start script sets this because its error
            # messages exist in English only.
            "-Duser.language=en",
            "-cp",
            str(self._jar),
            MAIN_CLASS,
            "start",
            f"--host={LOOPBACK}",
            f"--port={port}",
        ]
        return argv, {}

    def store_url(self, port: int) -> str:
        return f"firestore://{PROJECT}?emulator_host={LOOPBACK}:{port}"

    def wait_ready(self, port: int, process: subprocess.Popen, deadline: float) -> None:
        """Block until a REST request to list documents succeeds.

        An open TCP port does not show that the Firestore API behind it works, and
        this request goes through the same API as the tests.
        """
        url = (
            f"http://{LOOPBACK}:{port}/v1/projects/{PROJECT}/databases/(default)/"
            "documents/mltrail-ready-probe?pageSize=1"
        )
        last_error = "no response"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmulatorError(
                    f"Firestore emulator exited with code {process.returncode} "
                    f"during start-up; see {self.log_path}"
                )
            try:
                with DIRECT_OPENER.open(url, timeout=5) as response:
                    if response.status == 200:
                        return
                    last_error = f"HTTP {response.status}"
            except urllib.error.HTTPError as error:
                last_error = f"HTTP {error.code}"
            except (urllib.error.URLError, OSError) as error:
                last_error = str(error)
            time.sleep(0.25)
        raise EmulatorError(
            f"timed out after {self.start_timeout:.0f} s waiting for the Firestore "
            f"emulator on port {port} to respond to a list-documents request (last "
            f"error: {last_error}); see {self.log_path}"
        )

    def cleanup(self, data_dir: Path) -> None:
        # The emulator keeps data in memory, so its data folder is always empty.
        shutil.rmtree(data_dir, ignore_errors=True)


def find_emulator_jar() -> Path:
    """Return the emulator's jar inside the Google Cloud CLI installation."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise EmulatorError(
            "gcloud was not found on PATH; install the Google Cloud CLI, then "
            f"{INSTALL_HINT}"
        )
    # The usual layout is SDK_ROOT/bin/gcloud, reached through a symlink such as
    # /usr/bin/gcloud. Asking `gcloud info` covers other layouts but takes about a
    # second, because gcloud starts its own Python.
    searched = [Path(gcloud).resolve().parents[1]]
    jar = searched[0] / JAR_IN_SDK
    if jar.is_file():
        return jar
    sdk_root = gcloud_sdk_root(gcloud)
    if sdk_root is not None and sdk_root not in searched:
        searched.append(sdk_root)
        jar = sdk_root / JAR_IN_SDK
        if jar.is_file():
            return jar
    where = " or ".join(str(root / JAR_IN_SDK) for root in searched)
    raise EmulatorError(
        f"the Firestore emulator was not found at {where}; {INSTALL_HINT}"
    )


def gcloud_sdk_root(gcloud: str) -> Path | None:
    try:
        result = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as error:
        logger.warning(
            "`%s info` failed, so the SDK root is unknown: %s", gcloud, error
        )
        return None
    root = result.stdout.strip()
    return Path(root) if root else None


def find_java() -> str:
    """Return the java named by MLTRAIL_FIRESTORE_JAVA, else the one on PATH."""
    override = os.environ.get(JAVA_ENV)
    if override:
        found = shutil.which(override)
        if found is None:
            raise EmulatorError(
                f"{JAVA_ENV}={override!r} was not found or is not executable; set "
                "it to the path of a JDK's bin/java"
            )
        return found
    found = shutil.which("java")
    if found is None:
        raise EmulatorError(
            f"java was not found on PATH; install a JDK or set {JAVA_ENV} to the "
            "path of a JDK's bin/java"
        )
    return found


def required_java_version(jar: Path) -> int:
    """Return the oldest Java release that can load the emulator's main class."""
    entry = MAIN_CLASS.replace(".", "/") + ".class"
    try:
        with zipfile.ZipFile(jar) as archive, archive.open(entry) as class_file:
            header = class_file.read(8)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise EmulatorError(
            f"reading {entry} from {jar} failed ({error}); reinstall the emulator: "
            f"{INSTALL_HINT}"
        ) from error
    # A class file starts with the magic number 0xCAFEBABE, the minor version and
    # then the major version, each a big-endian unsigned integer.
    major = int.from_bytes(header[6:8], "big")
    return major - CLASS_VERSION_OFFSET


def java_version(java: str) -> int:
    """Return the feature release of `java`, such as 17 for 17.0.15 or 8 for 1.8.0."""
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise EmulatorError(
            f"running `{java} -version` failed ({error}); set {JAVA_ENV} to a "
            "working java"
        ) from error
    # `java -version` writes to stderr, e.g. `openjdk version "17.0.15" 2025-04-15`.
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr)
    if match is None:
        raise EmulatorError(
            f"no version found in the output of `{java} -version`: "
            f"{result.stderr.strip()!r}"
        )
    first, second = int(match.group(1)), match.group(2)
    if first == 1 and second is not None:
        return int(second)
    return first
