"""Launcher for moto's server mode, which emulates DynamoDB for tests.

moto keeps every table in memory, so a stopped server leaves no data behind, and
`POST /moto-api/reset` empties a running one. Clients use dummy credentials and the
region in the store URL.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from mltrail.conformance.emulators.base import LOOPBACK, Emulator, EmulatorError

INSTALL_COMMAND = "pip install 'mltrail[emulators]'"
REGION = "us-east-1"
TABLE_PREFIX = "mltrail"

# moto's server mode imports Flask and flask-cors on top of moto itself.
REQUIRED_MODULES = ("moto", "flask", "flask_cors")

# Probes go to loopback, so they skip any HTTP proxy set in the environment.
DIRECT_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# moto (5.2) routes a request to a service by the credential scope in its
# Authorization header and does not check the signature, so a fixed fake header works.
PROBE_HEADERS = {
    "Content-Type": "application/x-amz-json-1.0",
    "X-Amz-Target": "DynamoDB_20120810.ListTables",
    "Authorization": (
        "AWS4-HMAC-SHA256 Credential=testing/20240101/"
        f"{REGION}/dynamodb/aws4_request, SignedHeaders=host, Signature=0"
    ),
}


class DynamoDBEmulator(Emulator):
    """moto's DynamoDB, served over HTTP on loopback by `python -m moto.server`."""

    name = "dynamodb"
    start_timeout = 60.0

    def prepare(self) -> None:
        missing = [m for m in REQUIRED_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise EmulatorError(
                f"moto's server mode needs the Python modules {', '.join(missing)}, "
                f"which {sys.executable} cannot import; install them with "
                f"{INSTALL_COMMAND}"
            )

    def command(self, port: int, data_dir: Path) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)]
        # moto services that call back into the server (Lambda, Step Functions)
        # read its port from MOTO_PORT, and an inherited value would be wrong.
        return argv, {"MOTO_PORT": str(port)}

    def store_url(self, port: int) -> str:
        return f"dynamodb://{LOOPBACK}:{port}/{TABLE_PREFIX}?region={REGION}&tls=false"

    def wait_ready(self, port: int, process: subprocess.Popen, deadline: float) -> None:
        """Block until a DynamoDB ListTables request succeeds.

        moto (5.2) builds a service's backend on that service's first request, so the
        probe also moves that delay out of the first test.
        """
        url = f"http://{LOOPBACK}:{port}/"
        last_error = "no response"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmulatorError(
                    f"moto server exited with code {process.returncode} during "
                    f"start-up; see {self.log_path}"
                )
            request = urllib.request.Request(
                url, data=b"{}", headers=PROBE_HEADERS, method="POST"
            )
            try:
                with DIRECT_OPENER.open(request, timeout=5) as response:
                    if response.status == 200:
                        return
                    last_error = f"HTTP {response.status}"
            except urllib.error.HTTPError as error:
                last_error = f"HTTP {error.code}"
            except (urllib.error.URLError, OSError) as error:
                last_error = str(error)
            time.sleep(0.2)
        raise EmulatorError(
            f"timed out after {self.start_timeout:.0f} s waiting for the moto server "
            f"on port {port} to respond to a DynamoDB ListTables request (last "
            f"error: {last_error}); see {self.log_path}"
        )

    def cleanup(self, data_dir: Path) -> None:
        # moto writes nothing to disk, so its data folder is always empty.
        shutil.rmtree(data_dir, ignore_errors=True)
