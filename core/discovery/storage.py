"""Bytes stored per table of a SQLite file, for the local backend's `storage_stats`.

The local backend imports this module; the core never imports the backend.
SQLite's `dbstat` virtual table gives the bytes of every page of each table
and index. Where SQLite was built without it, page counts give the file's
totals and the per-table figures are "unknown".
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from mltrail.errors import BackendUnavailableError, NotFoundError

UNKNOWN = "unknown"


def sqlite_storage_stats(path: str | Path) -> dict[str, Any]:
    """Return bytes per table (data and indexes) and file totals of a SQLite file.

    The result has `collections` (table -> {"bytes", "index_bytes", "pages"}),
    `total_bytes` (pages in use times page size), `free_bytes` (pages on the
    free list), `file_bytes` and `wal_bytes` (sizes on disk) and `method`
    ("dbstat" or "page_count"). The connection reads through the WAL file, so
    `total_bytes` and the per-table figures include pages not yet checkpointed
    and can exceed `file_bytes` until a checkpoint; `wal_bytes` is the WAL
    file's own size.
    """
    location = Path(path)
    if not location.is_file():
        raise NotFoundError(f"SQLite file {str(location)!r} not found; open the store "
                            "once to create it", str(location))
    try:
        conn = sqlite3.connect(f"{location.as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise BackendUnavailableError(
            f"cannot open {str(location)!r} to measure it: {error}", str(location)
        ) from error
    try:
        return _measure(conn, location)
    except sqlite3.Error as error:
        raise BackendUnavailableError(
            f"cannot measure {str(location)!r}: {error}", str(location)) from error
    finally:
        conn.close()


def _measure(conn: sqlite3.Connection, location: Path) -> dict[str, Any]:
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    page_count = conn.execute("PRAGMA page_count").fetchone()[0]
    free_pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
    wal = Path(f"{location}-wal")
    result: dict[str, Any] = {
        "total_bytes": (page_count - free_pages) * page_size,
        "free_bytes": free_pages * page_size,
        "file_bytes": location.stat().st_size,
        "wal_bytes": wal.stat().st_size if wal.is_file() else 0,
        "page_size": page_size,
    }
    try:
        rows = conn.execute(
            "SELECT name, SUM(pgsize), COUNT(*) FROM dbstat GROUP BY name").fetchall()
    except sqlite3.OperationalError:
        result.update(method="page_count", collections=UNKNOWN)
        return result
    result.update(method="dbstat", collections=_by_table(conn, rows))
    return result


def _by_table(conn: sqlite3.Connection, rows: list[tuple]) -> dict[str, dict[str, int]]:
    """Fold index pages into the table they index; sqlite_* internals are kept apart."""
    owner = dict(conn.execute("SELECT name, tbl_name FROM sqlite_schema"))
    tables: dict[str, dict[str, int]] = {}
    for name, size, pages in rows:
        table = owner.get(name, name)
        figures = tables.setdefault(table, {"bytes": 0, "index_bytes": 0, "pages": 0})
        is_index = table != name
        figures["index_bytes" if is_index else "bytes"] += size
        figures["pages"] += pages
    return dict(sorted(tables.items()))


def sqlite_write_counters(connections: list[sqlite3.Connection]) -> dict[str, int]:
    """Return rows written through `connections` (SQLite's `total_changes`).

    A backend that keeps one connection per thread passes all of them, so the
    sum covers every thread. Rows of closed connections drop out of the sum.
    """
    total = 0
    for conn in list(connections):
        try:
            total += conn.total_changes
        except sqlite3.ProgrammingError:
            continue
    return {"items_written": total}
