"""Tests of store telemetry and its OpenTelemetry export, on memory and local stores."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from mltrail.backends.local import LocalBackend
from mltrail.backends.memory import MemoryBackend
from mltrail.discovery import (
    InstrumentedBackend, instrument, telemetry_of, uninstrument,
)
from mltrail.discovery.storage import sqlite_storage_stats, sqlite_write_counters
from mltrail.discovery.telemetry import LatencyStats, Telemetry
from mltrail.discovery.workload import WORKLOAD_NAMESPACE, run_workload
from mltrail.errors import NotFoundError
from mltrail.store import Store


class CountingLocalBackend(LocalBackend):
    """A local backend with the two optional methods that the telemetry looks up."""

    def telemetry_counters(self):
        return sqlite_write_counters(self.db._connections)

    def storage_stats(self):
        return sqlite_storage_stats(self.path)


@pytest.fixture(params=["memory", "local"])
def backend(request, tmp_path):
    if request.param == "memory":
        opened = MemoryBackend()
    else:
        opened = LocalBackend(tmp_path / "s.db")
    opened.initialize()
    yield opened
    opened.close()


@pytest.fixture
def store(backend):
    return Store(backend, actor="admin")


@pytest.fixture
def counting_store(tmp_path):
    backend = CountingLocalBackend(tmp_path / "counted.db")
    backend.initialize()
    yield Store(backend, actor="admin")
    backend.close()


def rows_by(snapshot, section, key):
    return {row[key]: row for row in snapshot[section]}


def test_unused_store_is_untouched(store, backend):
    assert type(store.backend) is type(backend)
    assert "search_runs" not in vars(store)
    assert telemetry_of(store) is None


def test_repository_operations_counted(store):
    telemetry = instrument(store)
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id)
    store.get_run(run.id)
    with pytest.raises(NotFoundError):
        store.get_run("01ARZ3NDEKTSV4RRFFQ69G5FAV")

    operations = rows_by(telemetry.snapshot(), "operations", "operation")

    assert operations["runs.insert"]["calls"] == 1
    assert operations["runs.get"]["calls"] >= 2
    assert operations["runs.get"]["errors"] == 1
    assert operations["experiments.insert"]["calls"] == 1


def test_streamed_items_counted(store):
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id)
    store.log_metrics(run.id, [{"key": "x", "value": 1.0, "step": s} for s in range(7)])
    telemetry = instrument(store)

    assert len(list(store.metric_history(run.id, "x"))) == 7

    operations = rows_by(telemetry.snapshot(), "operations", "operation")
    assert operations["metrics.history"]["items"] == 7
    assert rows_by(telemetry.snapshot(), "templates", "template")[
        "metric_history"]["count"] == 1


def test_nested_store_calls_count_once(store):
    experiment = store.create_experiment("e")
    for _ in range(3):
        store.create_run(experiment.id)
    telemetry = instrument(store)

    assert len(list(store.iter_runs())) == 3
    store.log_metric(store.create_run(experiment.id).id, "x", 1.0)

    templates = rows_by(telemetry.snapshot(), "templates", "template")
    writes = rows_by(telemetry.snapshot(), "writes", "write")
    assert set(templates) == {"iter_runs"}
    assert templates["iter_runs"]["count"] == 1
    assert set(writes) == {"create_run", "log_metric"}


def test_abandoned_stream_still_recorded(store):
    experiment = store.create_experiment("e")
    for _ in range(3):
        store.create_run(experiment.id)
    telemetry = instrument(store)

    stream = store.iter_runs(page_size=1)
    next(stream)
    stream.close()

    assert rows_by(telemetry.snapshot(), "templates", "template")[
        "iter_runs"]["count"] == 1


def test_template_latency_figures(store):
    telemetry = instrument(store)
    for _ in range(20):
        store.search_runs()

    row = rows_by(telemetry.snapshot(), "templates", "template")["search_runs"]

    assert row["count"] == 20
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["max_ms"]
    assert row["sampled"] is False


def test_percentiles_nearest_rank():
    stats = LatencyStats(samples=[i / 1000 for i in range(1, 101)], count=100)

    assert stats.percentile_ms(50) == pytest.approx(50)
    assert stats.percentile_ms(95) == pytest.approx(95)
    assert stats.percentile_ms(100) == pytest.approx(100)


def test_reservoir_keeps_count_and_max_exact(store):
    telemetry = Telemetry(store.backend, max_samples=10)
    for index in range(1000):
        telemetry.record_template("t", index / 1000, failed=index == 3)

    (row,) = telemetry.template_rows()

    assert row["count"] == 1000
    assert row["errors"] == 1
    assert row["max_ms"] == pytest.approx(999)
    assert row["sampled"] is True
    assert len(telemetry.templates["t"].samples) == 10


def test_write_amplification_unknown_without_counters():
    from mltrail.backends.memory import MemoryBackend
    from mltrail.store import Store

    class UncountedBackend(MemoryBackend):
        """A backend that offers neither optional telemetry method."""

        telemetry_counters = None
        storage_stats = None

    store = Store(UncountedBackend(), actor="tester")
    telemetry = instrument(store)
    store.create_run(store.create_experiment("e").id, params={"a": 1})

    snapshot = telemetry.snapshot()
    create = rows_by(snapshot, "writes", "write")["create_run"]

    assert snapshot["counters"] == "unknown"
    assert create["items_per_write"] == "unknown"
    assert create["bytes_per_write"] == "unknown"
    # An insert, a lineage node and an audit append at least.
    assert create["repository_writes_per_call"] >= 3


def test_write_amplification_from_backend_counters(counting_store):
    telemetry = instrument(counting_store)
    experiment = counting_store.create_experiment("e")
    run = counting_store.create_run(experiment.id, params={"a": 1}, tags={"t": "x"})
    counting_store.log_metrics(run.id, [{"key": "x", "value": 1.0, "step": s}
                                        for s in range(10)])

    writes = rows_by(telemetry.snapshot(), "writes", "write")

    # A run row, its field index rows, a lineage node and an audit event.
    assert writes["create_run"]["items_per_write"] >= 4
    # One chunk row holding the ten points, and one latest-value row.
    assert writes["log_metrics"]["items_written"] == 2
    assert writes["log_metrics"]["bytes_per_write"] == "unknown"


def test_storage_bytes_per_table(counting_store):
    telemetry = instrument(counting_store)
    run = counting_store.create_run(counting_store.create_experiment("e").id)
    counting_store.log_metrics(run.id, [{"key": "x", "value": float(s), "step": s}
                                        for s in range(2000)])

    storage = telemetry.snapshot()["storage"]

    assert storage["method"] == "dbstat"
    chunks = storage["collections"]["metric_chunks"]
    # Compressed, 2,000 distinct doubles still take more than a byte each.
    assert chunks["bytes"] > 2000
    assert storage["collections"]["runs"]["index_bytes"] > 0
    assert storage["total_bytes"] >= sum(
        c["bytes"] + c["index_bytes"] for c in storage["collections"].values())


def test_storage_without_dbstat(counting_store, monkeypatch):
    real_connect = sqlite3.connect

    class NoDbstat:
        def __init__(self, conn):
            self.conn = conn

        def execute(self, sql, *args):
            if "dbstat" in sql:
                raise sqlite3.OperationalError("no such table: dbstat")
            return self.conn.execute(sql, *args)

        def close(self):
            self.conn.close()

    monkeypatch.setattr(sqlite3, "connect",
                        lambda *a, **k: NoDbstat(real_connect(*a, **k)))

    stats = sqlite_storage_stats(counting_store.backend.path)

    assert stats["method"] == "page_count"
    assert stats["collections"] == "unknown"
    assert stats["total_bytes"] > 0


def test_storage_of_missing_file(tmp_path):
    with pytest.raises(NotFoundError) as caught:
        sqlite_storage_stats(tmp_path / "absent.db")
    assert "absent.db" in str(caught.value)


def test_uninstrument_restores_store(store, backend):
    telemetry = instrument(store)
    assert instrument(store) is telemetry
    assert isinstance(store.backend, InstrumentedBackend)

    uninstrument(store)

    assert store.backend is backend
    assert "create_run" not in vars(store)
    assert telemetry_of(store) is None
    store.create_run(store.create_experiment("after").id)
    assert telemetry.writes == {}


def test_concurrent_writes_all_counted(store):
    telemetry = instrument(store)
    experiment = store.create_experiment("threads")

    def work():
        for _ in range(10):
            store.create_run(experiment.id)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    writes = rows_by(telemetry.snapshot(), "writes", "write")
    operations = rows_by(telemetry.snapshot(), "operations", "operation")
    assert writes["create_run"]["calls"] == 40
    assert operations["runs.insert"]["calls"] == 40


def test_workload_purges_its_experiment(store):
    telemetry = instrument(store)

    result = run_workload(store, runs=2, points=5)

    assert result.purged
    assert list(store.list_experiments(namespace=WORKLOAD_NAMESPACE)) == []
    templates = rows_by(telemetry.snapshot(), "templates", "template")
    for name in ("search_runs", "iter_runs", "best_runs", "aggregate", "metric_history",
                 "latest_metrics", "upstream", "downstream", "audit_log"):
        assert templates[name]["count"] >= 1, name


def test_instrumented_backend_forwards_attributes(backend):
    wrapped = InstrumentedBackend(backend)

    assert wrapped.capabilities == backend.capabilities
    assert wrapped.url == backend.url
    assert wrapped.runs.kind == "run"


def test_opentelemetry_export(counting_store):
    pytest.importorskip("opentelemetry.sdk.metrics",
                        reason="opentelemetry-sdk is not installed; pip install "
                               "'mltrail[otel]'")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from mltrail.discovery.otel import export_to_opentelemetry

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry = instrument(counting_store)
    export_to_opentelemetry(telemetry, provider)
    run = counting_store.create_run(counting_store.create_experiment("e").id)
    counting_store.log_metric(run.id, "x", 1.0)
    counting_store.search_runs()

    points = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    points[(metric.name, tuple(sorted(point.attributes.items())))] = \
                        point.value
    provider.shutdown()

    assert points[("mltrail.store.operations",
                   (("mltrail.method", "insert"), ("mltrail.repository", "runs")))] == 1
    assert points[("mltrail.query.count", (("mltrail.template", "search_runs"),))] == 1
    assert points[("mltrail.query.duration", (("mltrail.statistic", "max"),
                                              ("mltrail.template", "search_runs")))] > 0
    assert points[("mltrail.write.items_written", (("mltrail.write", "log_metric"),))] \
        == 2
    assert points[("mltrail.storage.bytes", (("mltrail.collection", "runs"),
                                             ("mltrail.part", "data")))] > 0


def test_opentelemetry_missing_names_the_extra(store, monkeypatch):
    import builtins

    from mltrail.discovery import otel
    from mltrail.errors import UnsupportedCapabilityError

    real_import = builtins.__import__

    def without_opentelemetry(name, *args, **kwargs):
        if name.startswith("opentelemetry"):
            raise ImportError("No module named 'opentelemetry'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_opentelemetry)

    with pytest.raises(UnsupportedCapabilityError) as caught:
        otel.export_to_opentelemetry(instrument(store))
    assert "mltrail[otel]" in str(caught.value)


def test_local_reports_items_written(tmp_path):
    import mltrail

    store = mltrail.connect(f"local://{tmp_path}/s.db")
    telemetry = instrument(store)
    store.create_run(store.create_experiment("e").id, params={"a": 1})

    snapshot = telemetry.snapshot()
    create = rows_by(snapshot, "writes", "write")["create_run"]

    assert snapshot["counters"] != "unknown"
    assert create["items_per_write"] != "unknown"
    assert create["items_per_write"] >= 3
    store.close()
