"""Cases run through mltrail's Python API: ingest, history read, latest value, search.

Every function takes a Store on a fresh backend made by the backend's
conformance harness, so each repetition starts from an empty store.
"""

from __future__ import annotations

import time
from typing import Any

from mltrail.api import ActiveRun, start_run
from mltrail.domain import MetricPoint, Run
from mltrail.store import Store

from benchmarks import workload
from benchmarks.measure import Stopwatch
from benchmarks.workload import Scale, SearchRun

EXPERIMENT = "bench"


def _start(store: Store, name: str) -> ActiveRun:
    """Start a run as training code would, with the environment captured."""
    run = start_run(store, EXPERIMENT, name=name, capture_code=False)
    return run.__enter__()


def ingest_many_per_point(store: Store, scale: Scale, values: list) -> float:
    """Log every point with `log_metric` and time only logging and flushing."""
    keys = workload.metric_keys(scale)
    watch = Stopwatch()
    for run_index in range(scale.runs):
        run = _start(store, f"many-{run_index}")
        run_values = values[run_index]
        with watch:
            log_metric = run.log_metric
            for step in range(scale.steps):
                for metric, key in enumerate(keys):
                    log_metric(key, run_values[metric][step], step=step)
            run.flush()
    return watch.seconds


def ingest_many_series(store: Store, scale: Scale, values: list) -> float:
    """Log each run's metrics with one `log_metric_series` call per key."""
    keys = workload.metric_keys(scale)
    watch = Stopwatch()
    for run_index in range(scale.runs):
        run = _start(store, f"many-{run_index}")
        run_values = values[run_index]
        with watch:
            for metric, key in enumerate(keys):
                run.log_metric_series(key, run_values[metric])
            run.flush()
    return watch.seconds


def ingest_long_per_point(store: Store, values: list[float]) -> tuple[float, str]:
    """Log the long history point by point and return the seconds and the run id."""
    run = _start(store, "long")
    started = time.perf_counter()
    log_metric = run.log_metric
    for step, value in enumerate(values):
        log_metric("loss", value, step=step)
    run.flush()
    return time.perf_counter() - started, run.id


def ingest_long_series(store: Store, values: list[float]) -> tuple[float, str]:
    """Log the long history with one `log_metric_series` call."""
    run = _start(store, "long")
    started = time.perf_counter()
    run.log_metric_series("loss", values)
    run.flush()
    return time.perf_counter() - started, run.id


def ingest_plugin_workload(store: Store, points: int) -> float:
    """Log what the mlflow-dynamodbstore worker logs, point by point; return seconds.

    One run, ten metrics `metric_0` ... `metric_9`, value 0.5 + index at step
    index // 10, as in `dynamodbstore_worker.py`.
    """
    run = _start(store, "plugin-workload")
    started = time.perf_counter()
    log_metric = run.log_metric
    for index in range(points):
        log_metric(f"metric_{index % 10}", 0.5 + index, step=index // 10)
    run.flush()
    return time.perf_counter() - started


def short_run(store: Store, points: int = 10) -> str:
    """Create a run with a 10-point `loss` history and return its id."""
    run = _start(store, "short")
    run.log_metric_series("loss", [1.0 / (1 + step) for step in range(points)])
    run.flush()
    return run.id


def latest_lookup_seconds(store: Store, run_id: str, calls: int) -> float:
    """Return the mean seconds of one `latest_metrics` call for `run_id`."""
    started = time.perf_counter()
    for _ in range(calls):
        store.latest_metrics(run_id)
    return (time.perf_counter() - started) / calls


# ----------------------------------------------------------------------
# search
# ----------------------------------------------------------------------

SEARCH_FILTER = (
    f"params.lr < {workload.SEARCH_LR_BELOW} and tags.team = '{workload.SEARCH_TEAM}'"
)
SEARCH_ORDER = [f"metrics.{workload.SEARCH_METRIC} desc"]


def populate_search(store: Store, runs: list[SearchRun]) -> None:
    """Write the search data set through the backend's repositories.

    Runs go straight to `backend.runs.insert` and `backend.metrics.append`, the
    calls that `Store.create_run` and a flush end in. The audit events and
    lineage nodes that creation also writes are skipped, because they do not
    affect a search.
    """
    experiment = store.get_or_create_experiment(EXPERIMENT)
    backend = store.backend
    stamp = workload.BASE_MICROS
    for spec in runs:
        run = Run(
            experiment_id=experiment.id,
            name=spec.name,
            params=spec.params,
            tags=spec.tags,
            status="completed",
        )
        backend.runs.insert(run)
        point = MetricPoint(
            run_id=run.id,
            key=workload.SEARCH_METRIC,
            value=spec.val_acc,
            step=0,
            timestamp=_from_micros(stamp),
            seq="0",
        ).validate()
        backend.metrics.append(run.id, [point])


def _from_micros(micros: int):
    from mltrail.clock import from_micros

    return from_micros(micros)


def search(store: Store, page_size: int) -> list[str]:
    """Return the names of the first page of the benchmark search."""
    page = store.search_runs(SEARCH_FILTER, order_by=SEARCH_ORDER, page_size=page_size)
    return [run.name for run in page.items]


def search_seconds(store: Store, page_size: int, calls: int) -> tuple[float, list[str]]:
    """Return the mean seconds of one search call and the names it returned."""
    names = search(store, page_size)
    started = time.perf_counter()
    for _ in range(calls):
        search(store, page_size)
    return (time.perf_counter() - started) / calls, names


def describe_store(store: Store) -> dict[str, Any]:
    return {"url": store.url, "capabilities": store.backend.capabilities.as_dict()}
