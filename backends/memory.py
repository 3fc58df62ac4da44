"""The in-memory reference backend: the executable specification of the contract.

It keeps records as the same JSON-safe dicts that other backends store, so it
catches entities that do not survive `to_record`/`from_record`. A lock makes it
safe for threads of one process; it is not shared between processes.

`memory://NAME` returns the same store for the same NAME within a process;
a plain `memory://` is a fresh store each time.
"""

from __future__ import annotations

import bisect
import copy
import threading
from typing import Any, Iterator, Sequence
from urllib.parse import urlsplit

from mltrail import limits
from mltrail.backend import (
    AuditRepository, Backend, BlobRepository, Capabilities, EntityRepository,
    LineageRepository, MetricRepository, ScanRequest, WriteCounters,
)
from mltrail.clock import isoformat
from mltrail.domain import (
    AuditEvent, Dataset, Entity, Experiment, LineageEdge, LineageNode, MetricPoint,
    Model, ModelVersion, Run,
)
from mltrail.errors import (
    AlreadyExistsError, ConflictError, InvalidInputError, NotFoundError,
)
from mltrail.ops.records import json_size, point_to_record
from mltrail.query.evaluate import sort_key
from mltrail.query.paging import cursor_key

_NAMED_STORES: dict[str, MemoryBackend] = {}
_NAMED_LOCK = threading.Lock()


class MemoryEntityRepository(EntityRepository):
    def __init__(self, entity_type: type[Entity], lock: threading.RLock,
                 counter: WriteCounters) -> None:
        self.entity_type = entity_type
        self._lock = lock
        self._counter = counter
        self._records: dict[str, dict[str, Any]] = {}
        self._unique: dict[tuple, str] = {}

    def _unique_value(self, record: dict[str, Any]) -> tuple | None:
        if not self.unique_key:
            return None
        return tuple(record[name] for name in self.unique_key)

    def insert(self, entity: Entity) -> None:
        record = entity.to_record()
        with self._lock:
            if entity.id in self._records:
                raise AlreadyExistsError(f"{self.kind} {entity.id!r} already exists",
                                         entity.id)
            unique = self._unique_value(record)
            if unique is not None and unique in self._unique:
                raise AlreadyExistsError(
                    f"{self.kind} with {dict(zip(self.unique_key, unique))} already "
                    f"exists as {self._unique[unique]!r}",
                    unique,
                )
            self._records[entity.id] = record
            if unique is not None:
                self._unique[unique] = entity.id
            self._counter.add(1, json_size(record))

    def get(self, entity_id: str) -> Entity:
        with self._lock:
            record = self._records.get(entity_id)
        if record is None:
            raise NotFoundError(f"{self.kind} {entity_id!r} not found", entity_id)
        return self.entity_type.from_record(copy.deepcopy(record))

    def find_unique(self, key: tuple) -> Entity | None:
        with self._lock:
            entity_id = self._unique.get(tuple(key))
        return None if entity_id is None else self.get(entity_id)

    def update(self, entity: Entity) -> None:
        record = entity.to_record()
        with self._lock:
            stored = self._records.get(entity.id)
            if stored is None:
                raise NotFoundError(f"{self.kind} {entity.id!r} not found", entity.id)
            if stored["revision"] != entity.revision - 1:
                raise ConflictError(
                    f"{self.kind} {entity.id!r} was changed concurrently (stored "
                    f"revision {stored['revision']}, expected {entity.revision - 1})",
                    entity.id,
                )
            if self._unique_value(stored) != self._unique_value(record):
                raise InvalidInputError(
                    f"{self.kind} {entity.id!r}: unique fields {self.unique_key} cannot "
                    "change",
                    entity.id,
                )
            self._records[entity.id] = record
            self._counter.add(1, json_size(record))

    def delete(self, entity_id: str) -> None:
        with self._lock:
            record = self._records.pop(entity_id, None)
            if record is not None:
                self._counter.add(1)
                unique = self._unique_value(record)
                if unique is not None:
                    self._unique.pop(unique, None)

    def scan(self, request: ScanRequest) -> Iterator[Entity]:
        with self._lock:
            records = [copy.deepcopy(r) for r in self._records.values()
                       if request.namespace is None
                       or r.get("namespace") == request.namespace]
        entities = [self.entity_type.from_record(r) for r in records]
        if request.order:
            views = [(sort_key(vars(e), request.order), e) for e in entities]
            views.sort(key=lambda pair: pair[0])
            after = None if request.after is None else cursor_key(request.after,
                                                                  request.order)
            for key, entity in views:
                if after is None or after < key:
                    yield entity
            return
        entities.sort(key=lambda e: e.id)
        yield from entities


class MemoryMetricRepository(MetricRepository):
    def __init__(self, lock: threading.RLock, counter: WriteCounters) -> None:
        self._lock = lock
        self._counter = counter
        # run id -> key -> sorted list of (order key, point record)
        self._series: dict[str, dict[str, list[tuple[tuple, dict]]]] = {}
        self._index: dict[tuple[str, str, str], tuple] = {}

    def append(self, run_id: str, points: Sequence[MetricPoint]) -> None:
        with self._lock:
            runs = self._series.setdefault(run_id, {})
            for point in points:
                identity = (run_id, point.key, point.seq)
                order = (point.step, isoformat(point.timestamp), point.seq)
                series = runs.setdefault(point.key, [])
                previous = self._index.get(identity)
                if previous is not None:
                    position = bisect.bisect_left(series, previous,
                                                  key=lambda item: item[0])
                    del series[position]
                bisect.insort(series, (order, _point_record(point)),
                              key=lambda item: item[0])
                self._index[identity] = order
                self._counter.add(1, json_size(point_to_record(point)))

    def history(self, run_id, key, *, min_step=None, max_step=None, start=None,
                end=None) -> Iterator[MetricPoint]:
        with self._lock:
            series = list(self._series.get(run_id, {}).get(key, []))
        for _, record in series:
            point = _point_from_record(run_id, key, record)
            if min_step is not None and point.step < min_step:
                continue
            if max_step is not None and point.step > max_step:
                continue
            if start is not None and point.timestamp < start:
                continue
            if end is not None and point.timestamp > end:
                continue
            yield point

    def latest(self, run_ids, keys=None) -> dict[str, dict[str, MetricPoint]]:
        result: dict[str, dict[str, MetricPoint]] = {}
        with self._lock:
            for run_id in run_ids:
                for key, series in self._series.get(run_id, {}).items():
                    if series and (keys is None or key in keys):
                        point = _point_from_record(run_id, key, series[-1][1])
                        result.setdefault(run_id, {})[key] = point
        return result

    def keys(self, run_id: str) -> list[str]:
        with self._lock:
            return sorted(k for k, s in self._series.get(run_id, {}).items() if s)

    def delete_run(self, run_id: str) -> None:
        with self._lock:
            removed = self._series.pop(run_id, {})
            self._counter.add(sum(len(series) for series in removed.values()))
            for identity in [i for i in self._index if i[0] == run_id]:
                del self._index[identity]

    def runs_with_metrics(self) -> Iterator[str]:
        with self._lock:
            run_ids = sorted(r for r, s in self._series.items() if s)
        yield from run_ids


def _point_record(point: MetricPoint) -> dict[str, Any]:
    return {
        "value": point.value,
        "step": point.step,
        "timestamp": point.timestamp,
        "seq": point.seq,
        "extra": point.extras(),
    }


def _point_from_record(run_id: str, key: str, record: dict[str, Any]) -> MetricPoint:
    point = MetricPoint(run_id=run_id, key=key, value=record["value"],
                        step=record["step"], timestamp=record["timestamp"],
                        seq=record["seq"])
    return point.with_extras(record["extra"])


class MemoryLineageRepository(LineageRepository):
    def __init__(self, lock: threading.RLock, counter: WriteCounters) -> None:
        self._lock = lock
        self._counter = counter
        self._nodes: dict[str, LineageNode] = {}
        self._edges: dict[str, LineageEdge] = {}

    def put_node(self, node: LineageNode) -> None:
        with self._lock:
            existing = self._nodes.get(node.id)
            if existing is not None and existing.kind != node.kind:
                raise AlreadyExistsError(
                    f"lineage node {node.id!r} exists as a {existing.kind.value}, not a "
                    f"{node.kind.value}",
                    node.id,
                )
            if existing is None:
                self._nodes[node.id] = node
                self._counter.add(1, json_size(node.to_record()))

    def get_node(self, node_id: str) -> LineageNode:
        with self._lock:
            node = self._nodes.get(node_id)
        if node is None:
            raise NotFoundError(f"lineage node {node_id!r} not found", node_id)
        return node

    def add_edge(self, edge: LineageEdge) -> None:
        with self._lock:
            if edge.key not in self._edges:
                self._edges[edge.key] = edge
                self._counter.add(1, json_size(edge.to_record()))

    def edges(self, node_id: str, direction: str) -> list[LineageEdge]:
        with self._lock:
            if direction == "upstream":
                found = [e for e in self._edges.values() if e.downstream == node_id]
            else:
                found = [e for e in self._edges.values() if e.upstream == node_id]
        return sorted(found, key=lambda e: (e.source, e.type.value, e.target))

    def scan_nodes(self) -> Iterator[LineageNode]:
        with self._lock:
            nodes = sorted(self._nodes.values(), key=lambda n: n.id)
        yield from nodes

    def scan_edges(self) -> Iterator[LineageEdge]:
        with self._lock:
            edges = sorted(self._edges.values(), key=lambda e: e.key)
        yield from edges

    def delete_node(self, node_id: str) -> None:
        with self._lock:
            removed = self._nodes.pop(node_id, None) is not None
            edges = [k for k, e in self._edges.items() if node_id in (e.source, e.target)]
            for key in edges:
                del self._edges[key]
            self._counter.add(removed + len(edges))


class MemoryAuditRepository(AuditRepository):
    def __init__(self, lock: threading.RLock, counter: WriteCounters) -> None:
        self._lock = lock
        self._counter = counter
        self._events: list[dict[str, Any]] = []

    def append(self, event: AuditEvent) -> None:
        with self._lock:
            if event.seq != len(self._events) + 1:
                raise AlreadyExistsError(f"audit event seq {event.seq} is taken", event.seq)
            record = event.to_record()
            self._events.append(record)
            self._counter.add(1, json_size(record))

    def last(self) -> AuditEvent | None:
        with self._lock:
            return AuditEvent.from_record(self._events[-1]) if self._events else None

    def scan(self, after_seq: int = 0) -> Iterator[AuditEvent]:
        with self._lock:
            records = list(self._events[after_seq:])
        for record in records:
            yield AuditEvent.from_record(record)

    def for_entity(self, entity_id: str) -> Iterator[AuditEvent]:
        with self._lock:
            records = [r for r in self._events if r["entity_id"] == entity_id]
        for record in records:
            yield AuditEvent.from_record(record)

    def raw_events(self) -> list[dict[str, Any]]:
        """The stored records themselves, for tests that tamper with the chain."""
        return self._events


class MemoryBlobRepository(BlobRepository):
    def __init__(self, lock: threading.RLock, counter: WriteCounters) -> None:
        self._lock = lock
        self._counter = counter
        self._blobs: dict[tuple[str, str], dict[str, Any]] = {}

    def put(self, namespace: str, key: str, record: dict[str, Any]) -> None:
        with self._lock:
            self._blobs[(namespace, key)] = copy.deepcopy(record)
            self._counter.add(1, json_size(record))

    def get(self, namespace: str, key: str) -> dict[str, Any]:
        with self._lock:
            record = self._blobs.get((namespace, key))
        if record is None:
            raise NotFoundError(f"{namespace} record {key!r} not found", key)
        return copy.deepcopy(record)

    def scan(self, namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._lock:
            items = sorted((k, copy.deepcopy(v)) for (n, k), v in self._blobs.items()
                           if n == namespace)
        yield from items

    def delete(self, namespace: str, key: str) -> None:
        with self._lock:
            if self._blobs.pop((namespace, key), None) is not None:
                self._counter.add(1)


class MemoryBackend(Backend):
    """Everything in dicts of this process; see the module docstring."""

    schemes = ("memory",)

    def __init__(self, name: str = "") -> None:
        self._name = name
        lock = threading.RLock()
        self._lock = lock
        self._counter = counter = WriteCounters()
        self.experiments = MemoryEntityRepository(Experiment, lock, counter)
        self.runs = MemoryEntityRepository(Run, lock, counter)
        self.datasets = MemoryEntityRepository(Dataset, lock, counter)
        self.models = MemoryEntityRepository(Model, lock, counter)
        self.model_versions = MemoryEntityRepository(ModelVersion, lock, counter)
        self.metrics = MemoryMetricRepository(lock, counter)
        self.lineage = MemoryLineageRepository(lock, counter)
        self.audit = MemoryAuditRepository(lock, counter)
        self.blobs = MemoryBlobRepository(lock, counter)
        self._capabilities = Capabilities(
            name="memory",
            pushdown_operators=frozenset(),
            native_order_fields=frozenset({"id", "created_at", "updated_at", "name"}),
            transactions=True,
            conditional_writes=True,
            max_item_bytes=limits.MAX_PARAMS_BYTES * 4,
            max_batch_size=limits.MAX_METRIC_BATCH,
            persistent=False,
            multi_process=False,
        )

    @classmethod
    def from_url(cls, url: str) -> MemoryBackend:
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise InvalidInputError(f"not a memory URL: {url!r}", url)
        name = (parts.netloc + parts.path).strip("/")
        if not name:
            return cls()
        with _NAMED_LOCK:
            if name not in _NAMED_STORES:
                _NAMED_STORES[name] = cls(name)
            return _NAMED_STORES[name]

    @classmethod
    def conformance_harness(cls, url: str) -> MemoryConformanceHarness:
        """Return the harness that runs the conformance suite against `url`."""
        return MemoryConformanceHarness(url)

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def url(self) -> str:
        return f"memory://{self._name}"

    def telemetry_counters(self) -> dict[str, int]:
        """Return records written and deleted since this store was created, and bytes.

        Bytes are the size of each written record as compact JSON, the form the
        other backends store. A deletion counts its records but no bytes.
        """
        return self._counter.snapshot()

    def storage_stats(self) -> dict[str, Any]:
        """Return the compact-JSON bytes of the records held, per repository.

        Memory keeps no indexes apart from its records, so `index_bytes` is 0.
        The figures are computed on each call, in time linear in the store.
        """
        with self._lock:
            collections = {
                "experiments": self.experiments._records.values(),
                "runs": self.runs._records.values(),
                "datasets": self.datasets._records.values(),
                "models": self.models._records.values(),
                "model_versions": self.model_versions._records.values(),
                "metrics": [point_to_record(_point_from_record(run_id, key, record))
                            for run_id, series_by_key in self.metrics._series.items()
                            for key, series in series_by_key.items()
                            for _, record in series],
                "lineage_nodes": [node.to_record() for node in self.lineage._nodes.values()],
                "lineage_edges": [edge.to_record() for edge in self.lineage._edges.values()],
                "audit": self.audit._events,
                "blobs": list(self.blobs._blobs.values()),
            }
            figures = {name: {"bytes": sum(json_size(record) for record in records),
                              "index_bytes": 0, "items": len(records)}
                       for name, records in collections.items()}
        return {"collections": figures,
                "total_bytes": sum(f["bytes"] for f in figures.values()),
                "method": "json_size"}


class MemoryConformanceHarness:
    """Conformance harness for `memory://` stores (see mltrail.conformance.harness)."""

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._count = 0

    def create(self) -> MemoryBackend:
        self._count += 1
        return MemoryBackend(f"conformance-{id(self):x}-{self._count}")

    def destroy(self, backend: MemoryBackend) -> None:
        backend.close()

    def store_url(self, backend: MemoryBackend) -> str:
        return backend.url

    def raw_read(self, backend: MemoryBackend, kind: str, key: Any) -> dict | None:
        if kind == "audit":
            events = backend.audit._events
            return copy.deepcopy(events[key - 1]) if 0 < key <= len(events) else None
        record = backend.entity_repository(kind)._records.get(key)
        return copy.deepcopy(record)

    def raw_write(self, backend: MemoryBackend, kind: str, record: dict) -> None:
        if kind == "audit":
            events = backend.audit._events
            index = record["seq"] - 1
            if index < len(events):
                events[index] = copy.deepcopy(record)
            else:
                events.append(copy.deepcopy(record))
            return
        repository = backend.entity_repository(kind)
        with repository._lock:
            repository._records[record["id"]] = copy.deepcopy(record)
            unique = repository._unique_value(record)
            if unique is not None:
                repository._unique[unique] = record["id"]
