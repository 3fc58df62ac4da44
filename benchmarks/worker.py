"""Measure one read in a fresh process: `python -m benchmarks.worker '<task json>'`.

Prints one JSON line: seconds, points read, and the resident memory the read
added (peak VmRSS sampled every `SAMPLE_EVERY` points, minus VmRSS before).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
from typing import Any, Iterable

from benchmarks.measure import rss_kib

SAMPLE_EVERY = 10_000


def _consume(points: Iterable[Any]) -> tuple[int, int]:
    """Iterate `points` and return (count, peak VmRSS in KiB seen while iterating)."""
    count = 0
    peak = rss_kib()
    for _ in points:
        count += 1
        if count % SAMPLE_EVERY == 0:
            peak = max(peak, rss_kib())
    return count, max(peak, rss_kib())


def _mltrail_history(task: dict[str, Any]) -> Iterable[Any]:
    import mltrail

    store = mltrail.connect(task["url"])
    return store.metric_history(task["run_id"], task["key"])


def _sqlite_history(task: dict[str, Any]) -> Iterable[Any]:
    conn = sqlite3.connect(task["path"])
    return conn.execute(
        "SELECT seq, step, ts, value, bits, extra FROM raw_points WHERE run_id = ? "
        "AND key = ? ORDER BY step, ts, seq",
        [task["run_id"], task["key"]],
    )


def _mlflow_history(task: dict[str, Any]) -> Iterable[Any]:
    logging.disable(logging.WARNING)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=task["url"])
    client.get_run(task["run_id"])  # opens the engine outside the measured read
    return _Deferred(lambda: client.get_metric_history(task["run_id"], task["key"]))


class _Deferred:
    """Calls a function that returns a whole list when iteration starts."""

    def __init__(self, produce) -> None:
        self.produce = produce

    def __iter__(self):
        return iter(self.produce())


OPENERS = {
    "mltrail-history": _mltrail_history,
    "sqlite-history": _sqlite_history,
    "mlflow-history": _mlflow_history,
}


def main() -> None:
    task = json.loads(sys.argv[1])
    points = OPENERS[task["kind"]](task)
    before = rss_kib()
    started = time.perf_counter()
    count, peak = _consume(points)
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": seconds,
                "points": count,
                "rss_added_kib": max(0, peak - before),
            }
        )
    )


if __name__ == "__main__":
    main()
