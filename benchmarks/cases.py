"""The benchmark cases of one backend, each measured side by side with its rivals.

Each case returns a dict of figures (seconds, rates, memory) and ratios. Every
ratio compares contenders measured in alternation within this one process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator

from mltrail.clock import new_id

from benchmarks import mlflow_cases, mltrail_cases, workload
from benchmarks.measure import Series, interleave, paired_ratio, run_worker
from benchmarks.raw import NOSQL_WRITERS, RawWriter, Row, SqliteRawWriter
from benchmarks.stores import Stores, remove_files
from benchmarks.workload import Scale

logger = logging.getLogger(__name__)

# Searches per repetition, kept small because one MLflow search over 25,000 runs
# takes seconds.
SEARCH_CALLS = 3


# ----------------------------------------------------------------------
# rows for the raw writers: the same values, keys and steps as the API writes
# ----------------------------------------------------------------------


def many_rows(scale: Scale, values: list) -> Iterator[Row]:
    keys = workload.metric_keys(scale)
    for run_index in range(scale.runs):
        run_id, batch = new_id(), new_id()
        run_values = values[run_index]
        index = 0
        for step in range(scale.steps):
            stamp = workload.BASE_MICROS + step * workload.STEP_MICROS
            for metric, key in enumerate(keys):
                yield (
                    run_id,
                    key,
                    step,
                    stamp,
                    f"{batch}:{index:06d}",
                    run_values[metric][step],
                )
                index += 1


def long_rows(values: list[float], batch_size: int = 10_000) -> Iterator[Row]:
    run_id = new_id()
    batch = new_id()
    for step, value in enumerate(values):
        if step % batch_size == 0:
            batch = new_id()
        yield (
            run_id,
            "loss",
            step,
            workload.BASE_MICROS + step * workload.STEP_MICROS,
            f"{batch}:{step % batch_size:06d}",
            value,
        )


# ----------------------------------------------------------------------
# ingest
# ----------------------------------------------------------------------


class Ingest:
    """Ingest of one workload by the API (per point, as series) and the raw driver."""

    def __init__(self, stores: Stores, raw_writer: Callable[[], RawWriter]) -> None:
        self.stores = stores
        self.raw_writer = raw_writer

    def with_store(self, body: Callable[[Any], float]) -> float:
        return with_store(self.stores, body)

    def raw(self, rows: Callable[[], Iterator[Row]]) -> float:
        writer = self.raw_writer()
        try:
            return writer.ingest(rows())
        finally:
            writer.close()

    def measure(
        self, scale: Scale, values: list, long: list[float], repeat: int
    ) -> dict[str, Any]:
        many = [
            Series("log_metric", scale.many_points),
            Series("log_metric_series", scale.many_points),
            Series("raw driver", scale.many_points),
        ]
        interleave(
            repeat,
            [
                (
                    many[0],
                    lambda: self.with_store(
                        lambda s: mltrail_cases.ingest_many_per_point(s, scale, values)
                    ),
                ),
                (
                    many[1],
                    lambda: self.with_store(
                        lambda s: mltrail_cases.ingest_many_series(s, scale, values)
                    ),
                ),
                (many[2], lambda: self.raw(lambda: many_rows(scale, values))),
            ],
        )
        single = [
            Series("log_metric", len(long)),
            Series("log_metric_series", len(long)),
            Series("raw driver", len(long)),
        ]
        interleave(
            repeat,
            [
                (
                    single[0],
                    lambda: self.with_store(
                        lambda s: mltrail_cases.ingest_long_per_point(s, long)[0]
                    ),
                ),
                (
                    single[1],
                    lambda: self.with_store(
                        lambda s: mltrail_cases.ingest_long_series(s, long)[0]
                    ),
                ),
                (single[2], lambda: self.raw(lambda: long_rows(long))),
            ],
        )
        return {
            "many_runs": _ingest_figures(many),
            "long_history": _ingest_figures(single),
        }


def with_store(stores: Stores, body: Callable[[Any], float]) -> float:
    """Run `body` on a fresh store, destroy the store, and return `body`'s result."""
    store = stores.create()
    try:
        return body(store)
    finally:
        stores.destroy(store)


def _ingest_figures(series: list[Series]) -> dict[str, Any]:
    per_point, columnar, raw = series
    return {
        "contenders": [s.as_dict() for s in series],
        "ratio_log_metric_to_raw": paired_ratio(per_point, raw),
        "ratio_series_to_raw": paired_ratio(columnar, raw),
    }


def local_raw_writer(stores: Stores) -> Callable[[], RawWriter]:
    """Return a factory of sqlite3 writers, each on a fresh file the backend created."""

    def make() -> RawWriter:
        path = stores.detach(stores.create())
        return SqliteRawWriter(str(path), on_close=lambda: remove_files(path))

    return make


def nosql_raw_writer(name: str, url: str) -> Callable[[], RawWriter]:
    return lambda: NOSQL_WRITERS[name](url)


# ----------------------------------------------------------------------
# reads: history, latest value
# ----------------------------------------------------------------------


def reads(
    stores: Stores, long: list[float], repeat: int, calls: int, local_path: bool
) -> dict[str, Any]:
    """Stream the long history in a fresh process and time latest lookups."""
    store = stores.create()
    try:
        _, long_id = mltrail_cases.ingest_long_series(store, long)
        short_id = mltrail_cases.short_run(store)
        url = stores.url_of(store)
        history = {
            "mltrail": run_worker(
                {
                    "kind": "mltrail-history",
                    "url": url,
                    "run_id": long_id,
                    "key": "loss",
                }
            )
        }
        if local_path:
            # The cursor reads the same values from one row per point, written
            # beside the store's chunks and not timed.
            rows = [(long_id, *row[1:]) for row in long_rows(long)]
            writer = SqliteRawWriter(str(store.backend.path))
            for start in range(0, len(rows), writer.batch_rows):
                writer.write(writer.convert(rows[start:start + writer.batch_rows]))
            writer.conn.close()
            history["sqlite3"] = run_worker(
                {
                    "kind": "sqlite-history",
                    "path": str(store.backend.path),
                    "run_id": long_id,
                    "key": "loss",
                }
            )
        latest = _latest(
            lambda run_id: mltrail_cases.latest_lookup_seconds(store, run_id, calls),
            long_id,
            short_id,
            repeat,
            calls,
        )
    finally:
        stores.destroy(store)
    for figures in history.values():
        figures["points_per_second"] = figures["points"] / figures["seconds"]
    result = {"history_read": history, "latest_lookup": latest}
    if "sqlite3" in history:
        result["history_read"]["ratio_mltrail_to_sqlite3"] = (
            history["mltrail"]["points_per_second"]
            / history["sqlite3"]["points_per_second"]
        )
    return result


def _latest(
    lookup: Callable[[str], float], long_id: str, short_id: str, repeat: int, calls: int
) -> dict[str, Any]:
    long_series = Series("long history", calls)
    short_series = Series("10 points", calls)
    interleave(
        repeat,
        [
            (long_series, lambda: lookup(long_id) * calls),
            (short_series, lambda: lookup(short_id) * calls),
        ],
    )
    return {
        "long_history_seconds_per_call": long_series.median / calls,
        "short_history_seconds_per_call": short_series.median / calls,
        "ratio_long_to_short_time": 1.0 / paired_ratio(long_series, short_series),
    }


# ----------------------------------------------------------------------
# search
# ----------------------------------------------------------------------


def check_names(label: str, got: list[str], expected: list[str]) -> bool:
    if got != expected:
        logger.error(
            "%s returned %d runs, expected %d; first differences: %s",
            label,
            len(got),
            len(expected),
            [(a, b) for a, b in zip(got, expected) if a != b][:3],
        )
        return False
    return True


# ----------------------------------------------------------------------
# MLflow
# ----------------------------------------------------------------------


def mlflow_comparison(
    work: Path,
    scale: Scale,
    values: list,
    long: list[float],
    stores: Stores,
    repeat: int,
    calls: int,
) -> dict[str, Any]:
    """Run MLflow's ingest, reads and search next to the same mltrail calls."""
    result: dict[str, Any] = {
        "setup": mlflow_cases.describe(),
        "scale": vars(scale).copy(),
    }
    target = mlflow_cases.MlflowTarget(work / "mlflow-ingest.db")
    try:
        result["ingest"], long_id = _mlflow_ingest(target, scale, values, long, stores)
        result["reads"] = _mlflow_reads(target, long_id, repeat, calls)
    finally:
        target.remove()
    result["search"] = _mlflow_search(work, scale, stores, repeat, SEARCH_CALLS)
    return result


def _bracketed(
    mlflow_seconds: float, work: int, mltrail_runs: list[float]
) -> dict[str, Any]:
    """Compare MLflow's rate with the mean of mltrail runs just before and after it."""
    mltrail_rate = work / (sum(mltrail_runs) / len(mltrail_runs))
    mlflow_rate = work / mlflow_seconds
    return {
        "mlflow_seconds": mlflow_seconds,
        "mlflow_per_second": mlflow_rate,
        "mltrail_seconds": mltrail_runs,
        "mltrail_per_second": mltrail_rate,
        "ratio_mltrail_to_mlflow": mltrail_rate / mlflow_rate,
    }


def _mlflow_ingest(
    target: mlflow_cases.MlflowTarget,
    scale: Scale,
    values: list,
    long: list[float],
    stores: Stores,
) -> tuple[dict[str, Any], str]:
    """Time MLflow's log_batch between two runs of each mltrail ingest call on its data.

    `log_metric` and `log_metric_series` each run once before and once after
    MLflow, and each is compared with the mean of its two runs.
    """

    def many(series: bool) -> float:
        ingest = (mltrail_cases.ingest_many_series if series
                  else mltrail_cases.ingest_many_per_point)
        return with_store(stores, lambda s: ingest(s, scale, values))

    def single(series: bool) -> float:
        ingest = (mltrail_cases.ingest_long_series if series
                  else mltrail_cases.ingest_long_per_point)
        return with_store(stores, lambda s: ingest(s, long)[0])

    before = [many(False), many(True)]
    mlflow_many = mlflow_cases.ingest_many(target, scale, values)
    after = [many(False), many(True)]
    result = {
        "many_runs": _bracketed(mlflow_many, scale.many_points, [before[0], after[0]]),
        "many_runs_series": _bracketed(mlflow_many, scale.many_points,
                                       [before[1], after[1]]),
    }
    before = [single(False), single(True)]
    mlflow_long, long_id = mlflow_cases.ingest_long(target, long)
    after = [single(False), single(True)]
    result["long_history"] = _bracketed(mlflow_long, len(long), [before[0], after[0]])
    result["long_history_series"] = _bracketed(mlflow_long, len(long),
                                               [before[1], after[1]])
    return result, long_id


def _mlflow_reads(
    target: mlflow_cases.MlflowTarget, long_id: str, repeat: int, calls: int
) -> dict[str, Any]:
    short_id = mlflow_cases.short_run(target)
    history = run_worker(
        {"kind": "mlflow-history", "url": target.url, "run_id": long_id, "key": "loss"}
    )
    history["points_per_second"] = history["points"] / history["seconds"]
    latest = _latest(
        lambda run_id: mlflow_cases.latest_lookup_seconds(target, run_id, calls),
        long_id,
        short_id,
        repeat,
        calls,
    )
    return {"history_read": history, "latest_lookup": latest}


def _mlflow_search(
    work: Path, scale: Scale, stores: Stores, repeat: int, calls: int
) -> dict[str, Any]:
    runs = workload.search_runs(scale.search_runs)
    selected = sum(1 for run in runs if run.selected())
    target = mlflow_cases.MlflowTarget(work / "mlflow-search.db")
    store = stores.create()
    try:
        mlflow_cases.populate_search(target, runs)
        mlflow_cases.check_search_rows(target, runs)
        mltrail_cases.populate_search(store, runs)
        result: dict[str, Any] = {"runs": len(runs), "selected": selected}
        for label, size in (
            ("first_page", scale.search_page),
            ("all_matches", selected),
        ):
            result[label] = _search_pair(store, target, runs, size, repeat, calls)
    finally:
        target.remove()
        stores.destroy(store)
    return result


def _search_pair(
    store, target, runs, size: int, repeat: int, calls: int
) -> dict[str, Any]:
    expected = workload.expected_selection(runs, size)
    ours = Series("mltrail", calls)
    theirs = Series("mlflow", calls)
    names: dict[str, list[str]] = {}

    def measure_ours() -> float:
        seconds, names["mltrail"] = mltrail_cases.search_seconds(store, size, calls)
        return seconds * calls

    def measure_theirs() -> float:
        seconds, names["mlflow"] = mlflow_cases.search_seconds(target, size, calls)
        return seconds * calls

    interleave(repeat, [(ours, measure_ours), (theirs, measure_theirs)])
    return {
        "page_size": size,
        "mltrail_seconds_per_search": ours.median / calls,
        "mlflow_seconds_per_search": theirs.median / calls,
        "ratio_mltrail_to_mlflow_time": 1.0 / paired_ratio(ours, theirs),
        "same_runs_as_expected": {
            "mltrail": check_names("mltrail search", names["mltrail"], expected),
            "mlflow": check_names("MLflow search", names["mlflow"], expected),
        },
    }
