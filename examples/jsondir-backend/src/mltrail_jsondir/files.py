"""JSON documents on disk: atomic writes, reads, listings and file locks.

This module is the backend's only contact with the filesystem, so it is also
the one place where `OSError` and damaged JSON become mltrail errors.

- A write goes to a hidden temporary file in the target's folder, is flushed
  with `fsync`, and is moved over the target with `os.replace`. A reader
  therefore sees the old document or the new one, never a torn one. The folder
  itself is not fsynced, so a power cut may lose the latest writes.
- Locks are `fcntl.flock` locks on files under `locks/`. The kernel drops a
  lock when its holder exits, so a crashed process never leaves a stale lock.
  Each acquisition opens its own file descriptor, which makes the locks
  exclude threads of one process as well as other processes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from mltrail.backend import WriteCounters
from mltrail.errors import BackendUnavailableError

TEMP_PREFIX = ".tmp-"


def dumps(document: Any) -> str:
    """Serialise a document as compact JSON.

    `allow_nan=False` turns a non-finite float that escaped the core's codec
    into an error instead of writing `NaN`, which is not JSON. ASCII escapes keep
    lone surrogates and other odd strings intact on every filesystem encoding.
    """
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)


def unavailable(action: str, path: Path, error: OSError) -> BackendUnavailableError:
    """Translate an OSError into a BackendUnavailableError naming the path and a fix."""
    return BackendUnavailableError(
        f"jsondir store: cannot {action} {str(path)!r}: {error.strerror or error}; "
        f"{_hint(error)}",
        str(path),
    )


@contextmanager
def translated(action: str, path: Path) -> Iterator[None]:
    """Re-raise an OSError from the block as BackendUnavailableError, chained."""
    try:
        yield
    except OSError as error:
        raise unavailable(action, path, error) from error


def _hint(error: OSError) -> str:
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "check that the store folder is writable by this user"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space or raise the quota, then retry"
    return "check that the store folder exists and is on a local filesystem"


class JsonFiles:
    """Reads and writes the JSON documents of one store folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Files moved into place or removed, and bytes moved into place, by this
        # object. The backend's `telemetry_counters` reports them.
        self.counters = WriteCounters()

    def read(self, path: Path) -> Any | None:
        """Return the parsed document at `path`, or None when there is no such file."""
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise unavailable("read", path, error) from error
        try:
            # Decoding happens here too, so bad UTF-8 is reported like bad JSON.
            return json.loads(data)
        except ValueError as error:
            raise BackendUnavailableError(
                f"jsondir store: {str(path)!r} is not valid JSON ({error}); restore "
                "the file from a backup or remove it",
                str(path),
            ) from error

    def write(self, path: Path, document: Any) -> None:
        """Replace the file at `path` with `document` in one atomic step."""
        self.commit(self.stage(path, dumps(document)), path)

    def stage(self, path: Path, text: str | Iterable[str]) -> Path:
        """Write `text` to a hidden temporary file beside `path` and return its path.

        `text` is a string or an iterable of strings, written one after another.
        Nothing is visible until `commit` moves the file into place, and `discard`
        removes it instead.
        """
        temp = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        with translated("write", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(temp, "x", encoding="utf-8") as handle:
                    if isinstance(text, str):
                        handle.write(text)
                    else:
                        handle.writelines(text)
                    handle.flush()
                    os.fsync(handle.fileno())
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
        return temp

    def commit(self, temp: Path, path: Path) -> None:
        with translated("write", path):
            size = temp.stat().st_size
            os.replace(temp, path)
        self.counters.add(1, size)

    def discard(self, temp: Path) -> None:
        with translated("remove", temp):
            temp.unlink(missing_ok=True)

    def remove(self, path: Path) -> None:
        """Remove a file, unless it is already missing."""
        with translated("remove", path):
            try:
                path.unlink()
            except FileNotFoundError:
                return
        self.counters.add(1)

    def remove_tree(self, path: Path) -> None:
        """Remove a folder and everything in it, unless it is already missing."""
        with translated("remove", path):
            try:
                shutil.rmtree(path)
            except FileNotFoundError:
                return

    def names(self, folder: Path, suffix: str = "") -> list[str]:
        """Return the sorted entry names in `folder` that end with `suffix`.

        Hidden names (temporary files, locks) are left out. A missing folder has
        no entries.
        """
        try:
            entries = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as error:
            raise unavailable("list", folder, error) from error
        return sorted(name for name in entries
                      if name.endswith(suffix) and not name.startswith("."))

    def usage(self) -> dict[str, dict[str, int]]:
        """Return the bytes and file count under each top-level folder of the store."""
        usage: dict[str, dict[str, int]] = {}
        with translated("measure", self.root):
            for top in sorted(self.root.iterdir()):
                figures = {"bytes": 0, "index_bytes": 0, "files": 0}
                paths = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
                for path in paths:
                    try:
                        figures["bytes"] += path.stat().st_size
                    except FileNotFoundError:
                        continue
                    figures["files"] += 1
                usage[top.name] = figures
        return usage

    def size(self, path: Path) -> int:
        with translated("read", path):
            return path.stat().st_size

    def open_lines(self, path: Path) -> BinaryIO:
        """Open a JSON Lines file for `parse_lines`. The caller closes it."""
        with translated("read", path):
            return open(path, "rb")

    def parse_lines(self, handle: BinaryIO) -> Iterator[Any]:
        """Stream the parsed lines of a file opened with `open_lines`."""
        path = Path(handle.name)
        with translated("read", path):
            for number, line in enumerate(handle, start=1):
                try:
                    yield json.loads(line)
                except ValueError as error:
                    raise BackendUnavailableError(
                        f"jsondir store: line {number} of {str(path)!r} is not valid "
                        f"JSON ({error}); restore the file from a backup or remove it",
                        str(path),
                    ) from error

    @contextmanager
    def lock(self, name: str, *, shared: bool = False) -> Iterator[None]:
        """Hold the store-wide lock `name`, exclusive unless `shared`, for the block."""
        path = self.root / "locks" / f"{name}.lock"
        with translated("lock", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+b")
        try:
            with translated("lock", path):
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            # Closing the descriptor releases the lock.
            handle.close()

