"""MLflow's own Python client on its sqlite-backed tracking store, for comparison.

Ingest uses `MlflowClient.log_batch` with 1,000 metrics per call (MLflow's
per-call maximum), the batched form of its client. The search data
set is written into MLflow's tables with sqlite3 after MLflow created the
schema, because the client would need tens of minutes to create 25,000 runs one
by one. `check_search_rows` reads a sample back through the client to show that
the rows are what MLflow itself would have written.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from benchmarks import workload
from benchmarks.measure import Stopwatch
from benchmarks.workload import Scale, SearchRun

LOG_BATCH_MAX = 1_000
EXPERIMENT = "bench"


def available() -> str | None:
    """Return None when MLflow's sqlite store can be used, else the reason it cannot."""
    try:
        import alembic  # noqa: F401
        import mlflow  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as error:
        return (
            f"MLflow's sqlite store is unavailable ({error}); install "
            "mlflow-skinny, sqlalchemy and alembic"
        )
    return None


def version() -> str:
    import mlflow

    return mlflow.__version__


class MlflowTarget:
    """An MLflow tracking store in a fresh sqlite file, with one experiment."""

    def __init__(self, path: Path) -> None:
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        self.path = path
        self.url = f"sqlite:///{path}"
        self.client = MlflowClient(tracking_uri=self.url)
        self.experiment_id = self.client.create_experiment(EXPERIMENT)

    def new_run(self, name: str) -> str:
        return self.client.create_run(self.experiment_id, run_name=name).info.run_id

    def log_points(
        self, run_id: str, points: list[tuple[str, float, int, int]]
    ) -> float:
        """Log (key, value, timestamp ms, step) points; return the log_batch seconds."""
        from mlflow.entities import Metric

        metrics = [
            Metric(key, value, stamp, step) for key, value, stamp, step in points
        ]
        started = time.perf_counter()
        for start in range(0, len(metrics), LOG_BATCH_MAX):
            self.client.log_batch(
                run_id, metrics=metrics[start : start + LOG_BATCH_MAX]
            )
        return time.perf_counter() - started

    def remove(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


def _millis(step: int) -> int:
    return (workload.BASE_MICROS + step * workload.STEP_MICROS) // 1000


def ingest_many(target: MlflowTarget, scale: Scale, values: list) -> float:
    keys = workload.metric_keys(scale)
    watch = Stopwatch()
    for run_index in range(scale.runs):
        run_id = target.new_run(f"many-{run_index}")
        run_values = values[run_index]
        points = [
            (key, run_values[metric][step], _millis(step), step)
            for step in range(scale.steps)
            for metric, key in enumerate(keys)
        ]
        watch.seconds += target.log_points(run_id, points)
    return watch.seconds


def ingest_long(target: MlflowTarget, values: list[float]) -> tuple[float, str]:
    run_id = target.new_run("long")
    seconds = 0.0
    for start in range(0, len(values), 100_000):
        points = [
            ("loss", value, _millis(step), step)
            for step, value in enumerate(values[start : start + 100_000], start)
        ]
        seconds += target.log_points(run_id, points)
    return seconds, run_id


def short_run(target: MlflowTarget, points: int = 10) -> str:
    run_id = target.new_run("short")
    target.log_points(
        run_id,
        [("loss", 1.0 / (1 + step), _millis(step), step) for step in range(points)],
    )
    return run_id


def latest_lookup_seconds(target: MlflowTarget, run_id: str, calls: int) -> float:
    """Return the mean seconds of `get_run`, which returns the latest metric values."""
    started = time.perf_counter()
    for _ in range(calls):
        _ = target.client.get_run(run_id).data.metrics
    return (time.perf_counter() - started) / calls


# ----------------------------------------------------------------------
# search
# ----------------------------------------------------------------------


def search_filter() -> str:
    """Return the benchmark search in MLflow's syntax (see MLFLOW_LR_PATTERN)."""
    pattern = workload.MLFLOW_LR_PATTERN
    prefix = pattern.rstrip("%")
    for lr in workload.LEARNING_RATES:
        if repr(lr).startswith(prefix) != (lr < workload.SEARCH_LR_BELOW):
            raise RuntimeError(f"the MLflow pattern {pattern!r} selects {lr!r} wrongly")
    return f"params.lr LIKE '{pattern}' AND tags.team = '{workload.SEARCH_TEAM}'"


SEARCH_ORDER = [f"metrics.{workload.SEARCH_METRIC} DESC"]


def populate_search(target: MlflowTarget, runs: list[SearchRun]) -> None:
    """Insert the search data set into MLflow's runs, params, tags, metrics tables."""
    conn = sqlite3.connect(target.path)
    stamp = workload.BASE_MICROS // 1000
    run_rows, params, tags, metrics = [], [], [], []
    for spec in runs:
        run_id = f"{spec.index:032x}"
        run_rows.append(
            (
                run_id,
                spec.name,
                "LOCAL",
                "bench",
                "",
                "bench",
                "FINISHED",
                stamp,
                stamp,
                "",
                "active",
                f"/tmp/mlflow-artifacts/{run_id}",
                int(target.experiment_id),
                None,
            )
        )
        params += [(key, str(value), run_id) for key, value in spec.params.items()]
        tags += [(key, value, run_id) for key, value in spec.tags.items()]
        tags.append(("mlflow.runName", spec.name, run_id))
        metrics.append((workload.SEARCH_METRIC, spec.val_acc, stamp, run_id, 0, 0))
    with conn:
        conn.executemany(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, "
            "entry_point_name,"
            " user_id, status, start_time, end_time, source_version, lifecycle_stage, "
            "artifact_uri, experiment_id, deleted_time) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            run_rows,
        )
        conn.executemany(
            "INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)", params
        )
        conn.executemany(
            "INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)", tags
        )
        conn.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, "
            "is_nan) VALUES (?, ?, ?, ?, ?, ?)",
            metrics,
        )
        conn.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, run_uuid, "
            "step, is_nan) VALUES (?, ?, ?, ?, ?, ?)",
            metrics,
        )
    conn.close()


def check_search_rows(
    target: MlflowTarget, runs: list[SearchRun], sample: int = 20
) -> None:
    """Read a sample of the inserted runs through MLflow and raise if one differs."""
    step = max(1, len(runs) // sample)
    for spec in runs[::step]:
        run = target.client.get_run(f"{spec.index:032x}")
        expected = {key: str(value) for key, value in spec.params.items()}
        if (
            run.data.params != expected
            or run.data.tags.get("team") != spec.team
            or run.data.metrics.get(workload.SEARCH_METRIC) != spec.val_acc
            or run.info.run_name != spec.name
        ):
            raise RuntimeError(f"MLflow reads run {spec.name} back differently: {run}")


def search(target: MlflowTarget, page_size: int) -> list[str]:
    runs = target.client.search_runs(
        [target.experiment_id],
        filter_string=search_filter(),
        order_by=SEARCH_ORDER,
        max_results=page_size,
    )
    return [run.info.run_name for run in runs]


def search_seconds(
    target: MlflowTarget, page_size: int, calls: int
) -> tuple[float, list[str]]:
    names = search(target, page_size)
    started = time.perf_counter()
    for _ in range(calls):
        search(target, page_size)
    return (time.perf_counter() - started) / calls, names


def describe() -> dict[str, Any]:
    import sqlalchemy

    return {
        "mlflow": version(),
        "sqlalchemy": sqlalchemy.__version__,
        "store": "sqlite via MlflowClient(tracking_uri='sqlite:///...')",
    }
