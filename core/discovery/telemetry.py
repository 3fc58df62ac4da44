"""Store telemetry: operations, latency per query template, write amplification, bytes.

Nothing is measured until `instrument(store)` is called, so a store that is
never instrumented pays nothing. `instrument` swaps the store's backend for an
`InstrumentedBackend`, which proxies every repository method, and wraps the
Store methods listed in `QUERY_TEMPLATES` and `LOGICAL_WRITES` on that one
Store instance. `uninstrument(store)` undoes both.

Figures, all since instrumenting:

- operations: calls, errors, items streamed and time per repository method,
  such as `runs.scan` or `metrics.append`;
- query templates: count, errors and p50, p95 and max latency in ms per Store
  read method. For methods that return an iterator, the latency is the time
  spent inside the store while producing items, not the caller's time between
  items;
- writes: per Store write method, the calls, the repository write calls they
  made, and the items and bytes the backend wrote, when the backend reports
  them through an optional `telemetry_counters()` method; otherwise "unknown";
- storage: what the backend's optional `storage_stats()` method returns, else
  "unknown".

A Store call made inside another instrumented Store call (such as
`search_runs` inside `iter_runs`) is counted only as part of the outer one.
"""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mltrail.backend import Backend, Capabilities
from mltrail.clock import isoformat, utcnow
from mltrail.store import Store

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
REPOSITORIES = ("experiments", "runs", "datasets", "models", "model_versions",
                "metrics", "lineage", "audit", "blobs")
# Repository methods that change stored data.
WRITE_METHODS = frozenset({"insert", "update", "delete", "append", "append_series",
                           "put_node",
                           "add_edge", "delete_node", "delete_run", "put"})
QUERY_TEMPLATES = (
    "search_runs", "iter_runs", "best_runs", "aggregate", "compare_runs",
    "metric_history", "latest_metrics", "metric_keys", "upstream", "downstream",
    "audit_log", "verify_audit", "list_experiments", "list_models", "list_datasets",
    "list_model_versions", "get_run", "get_experiment", "get_model", "get_dataset",
    "get_model_version",
)
LOGICAL_WRITES = (
    "create_experiment", "get_or_create_experiment", "delete_experiment",
    "restore_experiment", "purge_experiment", "create_run", "set_run_status",
    "log_params", "set_tags", "delete_tag", "log_artifact", "link_dataset",
    "delete_run", "restore_run", "purge_run", "log_metrics", "log_metric",
    "append_prepared_points", "register_dataset", "create_model", "get_or_create_model",
    "register_model_version", "set_alias", "rollback_alias", "delete_model_version",
    "restore_model_version", "delete_model", "restore_model", "add_lineage_node",
    "add_lineage_edge",
)
# Latency samples kept per template; beyond it a uniform reservoir sample is
# kept, so percentiles become estimates while count and max stay exact.
MAX_SAMPLES = 4096


@dataclass
class OperationStats:
    """One repository method: calls, errors, items streamed and time spent."""

    calls: int = 0
    errors: int = 0
    items: int = 0
    seconds: float = 0.0


@dataclass
class LatencyStats:
    """One query template: exact count, error count and max, sampled latencies."""

    count: int = 0
    errors: int = 0
    max_seconds: float = 0.0
    samples: list[float] = field(default_factory=list)

    def add(self, seconds: float, failed: bool, rng: random.Random,
            max_samples: int) -> None:
        self.count += 1
        self.errors += failed
        self.max_seconds = max(self.max_seconds, seconds)
        if len(self.samples) < max_samples:
            self.samples.append(seconds)
            return
        # Reservoir sampling (Vitter's algorithm R): each of the `count`
        # latencies stays in the sample with equal probability.
        slot = rng.randrange(self.count)
        if slot < max_samples:
            self.samples[slot] = seconds

    def percentile_ms(self, percent: float) -> float | None:
        """Return the nearest-rank percentile of the sampled latencies, in ms."""
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        rank = max(1, -(-len(ordered) * percent // 100))
        return ordered[int(rank) - 1] * 1000


@dataclass
class WriteStats:
    """One Store write method: calls and what they wrote.

    `items_written` and `bytes_written` stay None while the backend reports no
    counters.
    """

    calls: int = 0
    errors: int = 0
    repository_writes: int = 0
    items_written: int | None = None
    bytes_written: int | None = None


class _Activity(threading.local):
    """Per-thread state: the depth of instrumented Store calls and their writes."""

    depth = 0
    repository_writes = 0


class Telemetry:
    """Figures collected from one instrumented backend; safe across threads."""

    def __init__(self, backend: Backend, max_samples: int = MAX_SAMPLES,
                 seed: int = 0) -> None:
        self.backend = backend
        self.max_samples = max_samples
        self.started_at = utcnow()
        self.operations: dict[str, OperationStats] = {}
        self.templates: dict[str, LatencyStats] = {}
        self.writes: dict[str, WriteStats] = {}
        self._lock = threading.Lock()
        self._activity = _Activity()
        self._rng = random.Random(seed)

    # -- recording ------------------------------------------------------

    def _operation(self, name: str) -> OperationStats:
        """Return the stats of `name`, created on first use; call with the lock held."""
        stats = self.operations.get(name)
        if stats is None:
            stats = self.operations[name] = OperationStats()
        return stats

    def record_operation(self, name: str, seconds: float, failed: bool) -> None:
        with self._lock:
            stats = self._operation(name)
            stats.calls += 1
            stats.errors += failed
            stats.seconds += seconds

    def add_items(self, name: str, items: int, seconds: float) -> None:
        with self._lock:
            stats = self._operation(name)
            stats.items += items
            stats.seconds += seconds

    def note_repository_write(self) -> None:
        if self._activity.depth:
            self._activity.repository_writes += 1

    def record_template(self, name: str, seconds: float, failed: bool) -> None:
        with self._lock:
            stats = self.templates.get(name)
            if stats is None:
                stats = self.templates[name] = LatencyStats()
            stats.add(seconds, failed, self._rng, self.max_samples)

    def record_write(self, name: str, repository_writes: int,
                     delta: dict[str, int] | None, failed: bool) -> None:
        with self._lock:
            stats = self.writes.setdefault(name, WriteStats())
            stats.calls += 1
            stats.errors += failed
            stats.repository_writes += repository_writes
            if delta is None:
                return
            for key in ("items_written", "bytes_written"):
                if key in delta:
                    setattr(stats, key, (getattr(stats, key) or 0) + delta[key])

    # -- backend counters ----------------------------------------------

    def counters(self) -> dict[str, int] | None:
        """Return the backend's `telemetry_counters()`, or None when it has none."""
        method = getattr(self.backend, "telemetry_counters", None)
        if method is None:
            return None
        counters = method()
        return {key: int(value) for key, value in counters.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)}

    def storage(self) -> dict[str, Any] | None:
        """Return the backend's `storage_stats()`, or None when it has none."""
        method = getattr(self.backend, "storage_stats", None)
        return None if method is None else method()

    # -- reading --------------------------------------------------------

    def operation_rows(self) -> list[dict[str, Any]]:
        """Return one row per repository method, sorted by name."""
        with self._lock:
            copied = {k: OperationStats(**vars(v)) for k, v in self.operations.items()}
        return [_operation_row(name, copied[name]) for name in sorted(copied)]

    def template_rows(self) -> list[dict[str, Any]]:
        """Return one row per query template with p50, p95 and max in ms."""
        with self._lock:
            copied = {k: LatencyStats(v.count, v.errors, v.max_seconds, list(v.samples))
                      for k, v in self.templates.items()}
        return [_template_row(name, copied[name]) for name in sorted(copied)]

    def write_rows(self, counted: bool | None = None) -> list[dict[str, Any]]:
        """Return one row per logical write.

        `counted` is True when the backend reports items and bytes written.
        """
        if counted is None:
            counted = getattr(self.backend, "telemetry_counters", None) is not None
        with self._lock:
            copied = {k: WriteStats(**vars(v)) for k, v in self.writes.items()}
        return [_write_row(name, copied[name], counted) for name in sorted(copied)]

    def snapshot(self) -> dict[str, Any]:
        """Return every figure as JSON-safe data; see the module docstring."""
        counters = self.counters()
        storage = self.storage()
        return {
            "backend": self.backend.capabilities.name,
            "url": self.backend.url,
            "since": isoformat(self.started_at),
            "operations": self.operation_rows(),
            "templates": self.template_rows(),
            "writes": self.write_rows(counters is not None),
            "counters": UNKNOWN if counters is None else counters,
            "storage": UNKNOWN if storage is None else storage,
        }


def _operation_row(name: str, stats: OperationStats) -> dict[str, Any]:
    repository, _, method = name.partition(".")
    return {"operation": name, "repository": repository, "method": method,
            "calls": stats.calls, "errors": stats.errors, "items": stats.items,
            "total_ms": round(stats.seconds * 1000, 3),
            "mean_ms": round(stats.seconds * 1000 / stats.calls, 3)
            if stats.calls else None}


def _template_row(name: str, stats: LatencyStats) -> dict[str, Any]:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {"template": name, "count": stats.count, "errors": stats.errors,
            "p50_ms": rounded(stats.percentile_ms(50)),
            "p95_ms": rounded(stats.percentile_ms(95)),
            "max_ms": round(stats.max_seconds * 1000, 3),
            "sampled": stats.count > len(stats.samples)}


def _write_row(name: str, stats: WriteStats, counted: bool) -> dict[str, Any]:
    def per_call(total: int | None) -> float | None:
        if total is None:
            return None
        return round(total / stats.calls, 3) if stats.calls else 0.0

    def reported(value: Any) -> Any:
        return value if counted and value is not None else UNKNOWN

    return {"write": name, "calls": stats.calls, "errors": stats.errors,
            "repository_writes": stats.repository_writes,
            "repository_writes_per_call": per_call(stats.repository_writes),
            "items_written": reported(stats.items_written),
            "items_per_write": reported(per_call(stats.items_written)),
            "bytes_written": reported(stats.bytes_written),
            "bytes_per_write": reported(per_call(stats.bytes_written))}


# ----------------------------------------------------------------------
# the repository and backend proxies
# ----------------------------------------------------------------------


class InstrumentedRepository:
    """Forwards every attribute to a repository, timing and counting its methods."""

    def __init__(self, target: Any, name: str, telemetry: Telemetry) -> None:
        self._target = target
        self._name = name
        self._telemetry = telemetry

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self._target, attribute)
        if attribute.startswith("_") or not isinstance(value, types.MethodType):
            return value
        wrapped = _timed_method(value, f"{self._name}.{attribute}", self._telemetry,
                                attribute in WRITE_METHODS)
        # Cache the wrapper so later lookups skip __getattr__.
        self.__dict__[attribute] = wrapped
        return wrapped

    def __repr__(self) -> str:
        return f"InstrumentedRepository({self._target!r})"


def _timed_method(method: Callable, name: str, telemetry: Telemetry,
                  writes: bool) -> Callable:
    clock = time.perf_counter
    record = telemetry.record_operation

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        if writes:
            telemetry.note_repository_write()
        started = clock()
        try:
            result = method(*args, **kwargs)
        except BaseException:
            record(name, clock() - started, True)
            raise
        record(name, clock() - started, False)
        # Entities, dicts and lists are returned as they are. Only iterators
        # are wrapped, so their items and production time are counted; the
        # type check is cheaper than isinstance with the Iterator ABC.
        if hasattr(type(result), "__next__"):
            return _counted(result, name, telemetry)
        return result

    return call


def _counted(items: Iterator, name: str, telemetry: Telemetry) -> Iterator:
    """Stream `items`, adding the count and the time spent producing them."""
    count = 0
    seconds = 0.0
    try:
        while True:
            started = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                seconds += time.perf_counter() - started
                return
            seconds += time.perf_counter() - started
            count += 1
            yield item
    finally:
        telemetry.add_items(name, count, seconds)


class InstrumentedBackend(Backend):
    """A backend whose repositories are wrapped in `InstrumentedRepository`.

    Attributes other than the repositories, such as a backend's optional
    `telemetry_counters()` and `storage_stats()`, are forwarded unchanged.
    """

    def __init__(self, target: Backend, telemetry: Telemetry | None = None) -> None:
        self.target = target
        self.telemetry = telemetry or Telemetry(target)
        for name in REPOSITORIES:
            setattr(self, name, InstrumentedRepository(getattr(target, name), name,
                                                       self.telemetry))

    @classmethod
    def from_url(cls, url: str) -> InstrumentedBackend:
        from mltrail.registry import open_backend

        return cls(open_backend(url))

    @property
    def capabilities(self) -> Capabilities:
        return self.target.capabilities

    @property
    def url(self) -> str:
        return self.target.url

    def initialize(self) -> None:
        self.target.initialize()

    def close(self) -> None:
        self.target.close()

    def __getattr__(self, attribute: str) -> Any:
        if attribute == "target":
            raise AttributeError(attribute)
        return getattr(self.target, attribute)


# ----------------------------------------------------------------------
# wrapping one Store
# ----------------------------------------------------------------------

_INSTRUMENTED: weakref.WeakKeyDictionary[Store, tuple[Telemetry, Backend, Any]] = \
    weakref.WeakKeyDictionary()


def instrument(store: Store, *, max_samples: int = MAX_SAMPLES) -> Telemetry:
    """Start measuring `store`; return its Telemetry, the same one on a second call."""
    known = _INSTRUMENTED.get(store)
    if known is not None:
        return known[0]
    original_backend, original_reader = store.backend, store.metric_reader
    telemetry = Telemetry(original_backend, max_samples=max_samples)
    store.backend = InstrumentedBackend(original_backend, telemetry)
    store.metric_reader = type(original_reader)(store.backend)
    for names, logical_write in ((QUERY_TEMPLATES, False), (LOGICAL_WRITES, True)):
        for name in names:
            # A Store without one of the methods (an older or a subclassed
            # one) is still measured through the rest.
            method = getattr(store, name, None)
            if method is not None:
                setattr(store, name, _timed_store_method(method, name, telemetry,
                                                         logical_write))
    _INSTRUMENTED[store] = (telemetry, original_backend, original_reader)
    logger.debug("instrumented store %s", original_backend.url)
    return telemetry


def uninstrument(store: Store) -> None:
    """Stop measuring `store` and restore its own backend; no-op if not measured."""
    known = _INSTRUMENTED.pop(store, None)
    if known is None:
        return
    _, backend, reader = known
    store.backend = backend
    store.metric_reader = reader
    for name in (*QUERY_TEMPLATES, *LOGICAL_WRITES):
        store.__dict__.pop(name, None)


def telemetry_of(store: Store) -> Telemetry | None:
    """Return the Telemetry of an instrumented store, or None."""
    known = _INSTRUMENTED.get(store)
    return None if known is None else known[0]


def _timed_store_method(method: Callable, name: str, telemetry: Telemetry,
                        logical_write: bool) -> Callable:
    activity = telemetry._activity

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        if activity.depth:
            return method(*args, **kwargs)
        measure = _Measure(telemetry, name, logical_write)
        measure.enter()
        try:
            result = method(*args, **kwargs)
        except BaseException:
            measure.leave()
            measure.finish(failed=True)
            raise
        measure.leave()
        if isinstance(result, Iterator):
            return _measured_stream(result, measure)
        measure.finish(failed=False)
        return result

    return call


class _Measure:
    """Time and writes of one outermost Store call, possibly spread over a stream."""

    def __init__(self, telemetry: Telemetry, name: str, logical_write: bool) -> None:
        self.telemetry = telemetry
        self.name = name
        self.logical_write = logical_write
        self.seconds = 0.0
        self.repository_writes = 0
        self.before = telemetry.counters() if logical_write else None
        self._started = 0.0

    def enter(self) -> None:
        activity = self.telemetry._activity
        activity.depth += 1
        self._saved_writes = activity.repository_writes
        activity.repository_writes = 0
        self._started = time.perf_counter()

    def leave(self) -> None:
        self.seconds += time.perf_counter() - self._started
        activity = self.telemetry._activity
        self.repository_writes += activity.repository_writes
        activity.repository_writes = self._saved_writes
        activity.depth -= 1

    def finish(self, failed: bool) -> None:
        if not self.logical_write:
            self.telemetry.record_template(self.name, self.seconds, failed)
            return
        delta = None
        if self.before is not None:
            after = self.telemetry.counters() or {}
            # NOTE: counters are store-wide, so writes by other threads during
            # this call are included in its delta.
            delta = {key: after[key] - self.before.get(key, 0) for key in after}
        self.telemetry.record_write(self.name, self.repository_writes, delta, failed)


def _measured_stream(items: Iterator, measure: _Measure) -> Iterator:
    failed = False
    try:
        while True:
            measure.enter()
            try:
                item = next(items)
            except StopIteration:
                return
            except BaseException:
                failed = True
                raise
            finally:
                measure.leave()
            yield item
    finally:
        measure.finish(failed)
