"""Export store telemetry as OpenTelemetry metrics (needs the `otel` extra).

Every instrument is asynchronous: its callback reads the `Telemetry` figures
when the SDK's reader collects, so exporting adds nothing to store calls.
Instruments, all prefixed `mltrail.`:

| name | kind | unit | attributes |
| --- | --- | --- | --- |
| store.operations | counter | {operation} | mltrail.repository, mltrail.method |
| store.operation.errors | counter | {error} | mltrail.repository, mltrail.method |
| store.items_read | counter | {item} | mltrail.repository, mltrail.method |
| query.count | counter | {query} | mltrail.template |
| query.duration | gauge | ms | mltrail.template, mltrail.statistic (p50, p95, max) |
| write.calls | counter | {write} | mltrail.write |
| write.repository_writes | counter | {operation} | mltrail.write |
| write.items_written | counter | {item} | mltrail.write (if the backend counts) |
| write.bytes_written | counter | By | mltrail.write (if the backend counts) |
| storage.bytes | gauge | By | mltrail.collection, mltrail.part (data, index) |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mltrail.discovery.telemetry import Telemetry
from mltrail.errors import UnsupportedCapabilityError

INSTALL_HINT = "pip install 'mltrail[otel]'"


def _api() -> Any:
    try:
        from opentelemetry import metrics
    except ImportError as error:
        raise UnsupportedCapabilityError(
            f"OpenTelemetry export needs opentelemetry-api ({error}); install it with: "
            f"{INSTALL_HINT}", "opentelemetry") from error
    return metrics


def export_to_opentelemetry(telemetry: Telemetry, meter_provider: Any = None,
                            meter_name: str = "mltrail") -> list[Any]:
    """Register observable instruments that report `telemetry`; return them.

    `meter_provider` defaults to the global one that the application set up
    (`opentelemetry.metrics.set_meter_provider`).
    """
    metrics = _api()
    provider = meter_provider or metrics.get_meter_provider()
    meter = provider.get_meter(meter_name)
    observe = _observer(metrics.Observation)
    sources = _sources(telemetry)
    instruments = []
    for name, kind, unit, description, source in _INSTRUMENTS:
        create = getattr(meter, f"create_observable_{kind}")
        callback = observe(sources[source])
        instruments.append(create(f"mltrail.{name}", callbacks=[callback], unit=unit,
                                  description=description))
    return instruments


def _observer(observation: type) -> Callable:
    def observe(read: Callable[[], Iterable[tuple[float, dict[str, str]]]]) -> Callable:
        def callback(options: Any) -> list[Any]:
            return [observation(value, attributes) for value, attributes in read()]
        return callback
    return observe


_INSTRUMENTS = (
    ("store.operations", "counter", "{operation}",
     "Calls of each repository method since instrumenting", "operations"),
    ("store.operation.errors", "counter", "{error}",
     "Calls of each repository method that raised", "operation_errors"),
    ("store.items_read", "counter", "{item}",
     "Items streamed by each repository method", "items"),
    ("query.count", "counter", "{query}", "Calls of each query template", "queries"),
    ("query.duration", "gauge", "ms",
     "Latency of each query template: p50, p95 and max", "durations"),
    ("write.calls", "counter", "{write}", "Calls of each logical write", "writes"),
    ("write.repository_writes", "counter", "{operation}",
     "Repository write calls made by each logical write", "repository_writes"),
    ("write.items_written", "counter", "{item}",
     "Items the backend wrote for each logical write", "items_written"),
    ("write.bytes_written", "counter", "By",
     "Bytes the backend wrote for each logical write", "bytes_written"),
    ("storage.bytes", "gauge", "By",
     "Bytes stored per collection or table, as the backend reports", "storage"),
)


def _sources(telemetry: Telemetry) -> dict[str, Callable[[], list]]:
    def operation_values(column: str) -> Callable[[], list]:
        return lambda: [(row[column], {"mltrail.repository": row["repository"],
                                       "mltrail.method": row["method"]})
                        for row in telemetry.operation_rows()]

    def write_values(column: str) -> Callable[[], list]:
        return lambda: [(row[column], {"mltrail.write": row["write"]})
                        for row in telemetry.write_rows()
                        if isinstance(row[column], (int, float))]

    return {
        "operations": operation_values("calls"),
        "operation_errors": operation_values("errors"),
        "items": operation_values("items"),
        "queries": lambda: [(row["count"], {"mltrail.template": row["template"]})
                            for row in telemetry.template_rows()],
        "durations": lambda: _durations(telemetry),
        "writes": write_values("calls"),
        "repository_writes": write_values("repository_writes"),
        "items_written": write_values("items_written"),
        "bytes_written": write_values("bytes_written"),
        "storage": lambda: _storage(telemetry),
    }


def _durations(telemetry: Telemetry) -> list[tuple[float, dict[str, str]]]:
    values = []
    for row in telemetry.template_rows():
        for statistic in ("p50", "p95", "max"):
            value = row[f"{statistic}_ms"]
            if value is not None:
                values.append((value, {"mltrail.template": row["template"],
                                       "mltrail.statistic": statistic}))
    return values


def _storage(telemetry: Telemetry) -> list[tuple[float, dict[str, str]]]:
    stats = telemetry.storage()
    if not isinstance(stats, dict) or not isinstance(stats.get("collections"), dict):
        return []
    values = []
    for collection, figures in stats["collections"].items():
        for part, key in (("data", "bytes"), ("index", "index_bytes")):
            if isinstance(figures.get(key), (int, float)):
                values.append((figures[key], {"mltrail.collection": collection,
                                              "mltrail.part": part}))
    return values
