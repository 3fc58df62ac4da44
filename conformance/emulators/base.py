"""Common machinery for starting store servers on loopback for tests.

Each launcher starts one server as a detached background process, records its
process id, port and store URL in a state file, and stops it again from any later
process. Downloads are cached under the cache directory, never in the repository.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class EmulatorError(RuntimeError):
    """A store server could not be prepared, started or stopped."""


def cache_dir() -> Path:
    """Return the folder for downloads and builds shared by every launcher."""
    root = os.environ.get("MLTRAIL_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "mltrail"
    base.mkdir(parents=True, exist_ok=True)
    return base


def state_dir() -> Path:
    """Return the folder that holds one state file and one data folder per server."""
    root = os.environ.get("MLTRAIL_EMULATOR_DIR")
    base = Path(root) if root else cache_dir() / "emulators"
    base.mkdir(parents=True, exist_ok=True)
    return base


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class EmulatorState:
    """What a running server's state file records."""

    name: str
    pid: int
    port: int
    url: str
    started_at: float
    log_path: str
    data_dir: str


class Emulator(ABC):
    """One store's server, started in the background on loopback.

    Subclasses implement `prepare` (download or build once, cached), `command`
    (the process to run) and `wait_ready`; the base class handles the state file,
    detaching, start-up failures and stopping.
    """

    name: str = ""
    start_timeout: float = 120.0

    @property
    def state_path(self) -> Path:
        return state_dir() / f"{self.name}.json"

    @property
    def log_path(self) -> Path:
        return state_dir() / f"{self.name}.log"

    def data_dir(self) -> Path:
        path = state_dir() / f"{self.name}-data"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @abstractmethod
    def prepare(self) -> None:
        """Download or build what the server needs; cached, so cheap when repeated."""

    @abstractmethod
    def command(self, port: int, data_dir: Path) -> tuple[list[str], dict[str, str]]:
        """Return the argv and extra environment variables that start the server."""

    @abstractmethod
    def store_url(self, port: int) -> str:
        """Return the mltrail store URL of a server listening on `port`."""

    def wait_ready(self, port: int, process: subprocess.Popen, deadline: float) -> None:
        """Block until the server answers on `port`; the default waits for TCP."""
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmulatorError(
                    f"{self.name} server exited with code {process.returncode} during "
                    f"start-up; see {self.log_path}"
                )
            if port_open(port):
                return
            time.sleep(0.2)
        raise EmulatorError(
            f"{self.name} server did not answer on port {port} within "
            f"{self.start_timeout:.0f} s; see {self.log_path}"
        )

    def status(self) -> EmulatorState | None:
        """Return the state of the running server, or None when none runs."""
        if not self.state_path.exists():
            return None
        state = EmulatorState(**json.loads(self.state_path.read_text()))
        if not pid_alive(state.pid):
            self.state_path.unlink(missing_ok=True)
            return None
        return state

    def start(self) -> EmulatorState:
        """Start the server unless one already runs, and return its state."""
        running = self.status()
        if running is not None:
            return running
        self.prepare()
        port = free_port()
        data_dir = self.data_dir()
        argv, extra_env = self.command(port, data_dir)
        env = {**os.environ, **extra_env}
        logger.info("starting %s server on port %d", self.name, port)
        with open(self.log_path, "wb") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        try:
            self.wait_ready(port, process, deadline)
        except BaseException:
            _kill_group(process.pid)
            raise
        state = EmulatorState(
            name=self.name,
            pid=process.pid,
            port=port,
            url=self.store_url(port),
            started_at=time.time(),
            log_path=str(self.log_path),
            data_dir=str(data_dir),
        )
        self.state_path.write_text(json.dumps(asdict(state)))
        return state

    def stop(self) -> bool:
        """Stop the running server; return False when none was running."""
        state = self.status()
        if state is None:
            return False
        logger.info("stopping %s server (pid %d)", self.name, state.pid)
        _kill_group(state.pid)
        self.state_path.unlink(missing_ok=True)
        self.cleanup(Path(state.data_dir))
        return True

    def cleanup(self, data_dir: Path) -> None:
        """Remove what a stopped server leaves behind; the default keeps its data."""


def _kill_group(pid: int, grace: float = 15.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            finished = 0 if pid_alive(pid) else pid
        if finished or not pid_alive(pid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
