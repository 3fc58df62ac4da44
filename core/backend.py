"""The backend contract: abstract repositories and declared capabilities.

A backend stores entities, metric points, lineage and audit events in the data
model that suits its store. The core owns every rule that must behave the same
everywhere (validation, ids, status transitions, write-once params, version
numbering, lineage cycles, audit hashing, filtering, ordering and pagination),
so a repository method does exactly what its docstring documents and nothing
more.

Rules every implementation keeps:

- Raise only `mltrail.errors` types; translate driver errors in one place and
  chain the cause. An unreachable store is `BackendUnavailableError`.
- A failed call leaves nothing a reader can see; a repeated call with the same
  input has the same effect as one call.
- Return entities rebuilt with `Entity.from_record`, so older schema versions are
  upgraded on read.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Iterable, Iterator, Sequence, TypeVar

from mltrail import limits
from mltrail.domain import (
    AuditEvent, Dataset, Entity, Experiment, LineageEdge, LineageNode, MetricPoint,
    MetricSeries, Model, ModelVersion, Run,
)
from mltrail.query.ast import Expr
from mltrail.query.evaluate import OrderKey

E = TypeVar("E", bound=Entity)

# The fields that identify an entity besides its id; at most one stored entity
# of a kind may have each combination. Runs have none.
UNIQUE_KEYS: dict[str, tuple[str, ...]] = {
    "experiment": ("namespace", "name"),
    "dataset": ("namespace", "name", "version"),
    "model": ("namespace", "name"),
    "model_version": ("model_id", "version"),
    "run": (),
}

# Top-level fields the query templates filter on by equality; a backend should
# index them so that such scans never read the whole kind.
INDEXED_FIELDS: dict[str, tuple[str, ...]] = {
    "experiment": ("namespace", "name"),
    "dataset": ("namespace", "name"),
    "model": ("namespace", "name"),
    "model_version": ("model_id", "run_id"),
    "run": ("namespace", "experiment_id", "status", "parent_run_id"),
}


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares about itself; every field must be set explicitly.

    `pushdown_operators` lists the filter operators (`=`, `<`, `in`, `like`,
    `exists`, `and`, `or`, `not`, ...) the backend evaluates in the store. The
    core still applies the whole filter to what a scan returns, so pushdown is an
    optimisation, and a scan must never drop an entity the core's evaluator would
    accept. `native_order_fields` lists top-level fields whose order the store
    produces itself (see `ScanRequest.order`).
    """

    name: str
    pushdown_operators: frozenset[str]
    native_order_fields: frozenset[str]
    transactions: bool
    conditional_writes: bool
    max_item_bytes: int
    max_batch_size: int
    persistent: bool
    multi_process: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def pushes_down(self, operator: str) -> bool:
        return operator in self.pushdown_operators

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pushdown_operators": sorted(self.pushdown_operators),
            "native_order_fields": sorted(self.native_order_fields),
            "transactions": self.transactions,
            "conditional_writes": self.conditional_writes,
            "max_item_bytes": self.max_item_bytes,
            "max_batch_size": self.max_batch_size,
            "persistent": self.persistent,
            "multi_process": self.multi_process,
            **self.extra,
        }


@dataclass(frozen=True)
class ScanRequest:
    """A request to stream entities of one kind.

    `filter` is the whole filter; a backend pushes down the conjuncts it can
    (see `mltrail.query.ast.conjuncts`) and may return extra entities, never
    fewer. `namespace`, when set, restricts the scan to that namespace.

    `order` is honoured only when every field in it is in the backend's
    `native_order_fields`; the backend then yields entities sorted by those
    fields and then by id, ascending or descending per key, starting strictly
    after `after` (the sort values of the last entity of the previous page
    followed by its id). Otherwise a backend may ignore `order` and `after` and
    the core sorts.
    """

    namespace: str | None = None
    filter: Expr | None = None
    order: tuple[OrderKey, ...] = ()
    after: tuple | None = None
    include_deleted: bool = True


class EntityRepository(ABC, Generic[E]):
    """Stores one kind of entity: experiments, runs, datasets, models or versions."""

    entity_type: type[E]

    @property
    def kind(self) -> str:
        return self.entity_type.kind

    @property
    def unique_key(self) -> tuple[str, ...]:
        return UNIQUE_KEYS[self.kind]

    @abstractmethod
    def insert(self, entity: E) -> None:
        """Store a new entity atomically.

        Raise AlreadyExistsError when an entity with the same id exists or when
        another entity has the same unique key (`UNIQUE_KEYS`), even when two
        processes insert at the same moment. Idempotent retries are the core's
        concern: it reads the existing entity and compares content.
        """

    @abstractmethod
    def get(self, entity_id: str) -> E:
        """Return the entity with this id; raise NotFoundError naming the id.

        `entity_id` may be any string a user typed, such as a name with
        slashes or spaces; one that cannot be an id is simply not found.
        """

    @abstractmethod
    def find_unique(self, key: tuple) -> E | None:
        """Return the entity whose unique-key fields equal `key`, or None."""

    @abstractmethod
    def update(self, entity: E) -> None:
        """Replace the stored entity if its revision is `entity.revision - 1`.

        This is a compare-and-set: raise ConflictError when the stored revision
        differs (another writer won), NotFoundError when there is no entity with
        that id, and InvalidInputError when the unique-key fields differ from
        the stored ones, since they never change through update.
        """

    @abstractmethod
    def delete(self, entity_id: str) -> None:
        """Remove the entity for good; removing an absent entity does nothing."""

    @abstractmethod
    def scan(self, request: ScanRequest) -> Iterator[E]:
        """Stream entities that may match `request`; see ScanRequest."""

    def get_many(self, entity_ids: Sequence[str]) -> dict[str, E]:
        """Return the entities that exist among `entity_ids`, keyed by id.

        The default calls `get` per id; override it with a batched read.
        """
        found = {}
        for entity_id in entity_ids:
            try:
                found[entity_id] = self.get(entity_id)
            except LookupError:
                continue
        return found


class MetricRepository(ABC):
    """Stores append-only metric histories and the latest point of each metric."""

    @abstractmethod
    def append(self, run_id: str, points: Sequence[MetricPoint]) -> None:
        """Store validated points of one run.

        A point is identified by (run_id, key, seq): writing a point whose
        identity is already stored overwrites it with the same content, so a
        retried batch adds nothing. After the call, `latest` reflects the points
        whose (step, timestamp, seq) is greatest, also when several processes
        append to the same run at once. Batches hold at most
        `limits.MAX_METRIC_BATCH` points.
        """

    def append_series(self, run_id: str, series: Sequence[MetricSeries]) -> None:
        """Store validated series of one run, with the guarantees of `append`.

        The default turns the series into points and calls `append` in batches
        of at most `limits.MAX_METRIC_BATCH` points. A backend that can pack
        columns directly overrides it.
        """
        points = [point for one in series for point in one.points()]
        for batch in chunked(points, limits.MAX_METRIC_BATCH):
            self.append(run_id, batch)

    @abstractmethod
    def history(
        self,
        run_id: str,
        key: str,
        *,
        min_step: int | None = None,
        max_step: int | None = None,
        start: Any = None,
        end: Any = None,
    ) -> Iterator[MetricPoint]:
        """Stream one metric's points ordered by (step, timestamp, seq).

        Bounds are inclusive: steps between `min_step` and `max_step`,
        timestamps between `start` and `end` (aware datetimes). Memory stays
        bounded whatever the history's length.
        """

    @abstractmethod
    def latest(
        self, run_ids: Sequence[str], keys: Sequence[str] | None = None
    ) -> dict[str, dict[str, MetricPoint]]:
        """Return run id -> metric key -> latest point, for the given runs.

        The latest point has the greatest (step, timestamp, seq). Runs without
        points are absent from the result. The cost must not grow with the
        length of a history.
        """

    @abstractmethod
    def keys(self, run_id: str) -> list[str]:
        """Return the sorted metric keys that have points for `run_id`."""

    @abstractmethod
    def delete_run(self, run_id: str) -> None:
        """Remove every point of a run; removing nothing is not an error."""

    def runs_with_metrics(self) -> Iterator[str]:
        """Stream the ids of runs with stored points, for export and checks.

        The default raises UnsupportedCapabilityError; backends override it.
        """
        from mltrail.errors import UnsupportedCapabilityError

        raise UnsupportedCapabilityError(
            f"{type(self).__name__} does not list runs with metrics", "runs_with_metrics"
        )


class LineageRepository(ABC):
    """Stores lineage nodes and immutable typed edges."""

    @abstractmethod
    def put_node(self, node: LineageNode) -> None:
        """Store a node; storing an identical node again does nothing.

        Raise AlreadyExistsError when a node with the same id but another kind
        exists.
        """

    @abstractmethod
    def get_node(self, node_id: str) -> LineageNode:
        """Return a node; raise NotFoundError naming the id."""

    @abstractmethod
    def add_edge(self, edge: LineageEdge) -> None:
        """Store an edge; an edge with the same (source, type, target) is kept as is.

        The core has already checked that both nodes exist and that the edge
        closes no cycle.
        """

    @abstractmethod
    def edges(self, node_id: str, direction: str) -> list[LineageEdge]:
        """Return the edges one hop from `node_id`, sorted by (source, type, target).

        `direction="upstream"` returns edges whose downstream end is `node_id`;
        `"downstream"` returns edges whose upstream end is `node_id`.
        """

    @abstractmethod
    def scan_nodes(self) -> Iterator[LineageNode]:
        """Stream every node."""

    @abstractmethod
    def scan_edges(self) -> Iterator[LineageEdge]:
        """Stream every edge."""

    @abstractmethod
    def delete_node(self, node_id: str) -> None:
        """Remove a node and every edge that touches it; absent nodes are ignored."""


class AuditRepository(ABC):
    """Stores the audit chain: events numbered 1, 2, 3 ... by `seq`."""

    @abstractmethod
    def append(self, event: AuditEvent) -> None:
        """Store an event; raise AlreadyExistsError when its `seq` is taken.

        The core computes seq and hashes from `last()` and retries on conflict,
        which keeps one unbroken chain under concurrent writers.
        """

    @abstractmethod
    def last(self) -> AuditEvent | None:
        """Return the event with the greatest seq, or None for an empty chain."""

    @abstractmethod
    def scan(self, after_seq: int = 0) -> Iterator[AuditEvent]:
        """Stream events with seq greater than `after_seq`, in seq order."""

    @abstractmethod
    def for_entity(self, entity_id: str) -> Iterator[AuditEvent]:
        """Stream the events about one entity, in seq order."""


class BlobRepository(ABC):
    """Content-addressed documents: shared configurations and archived segments."""

    @abstractmethod
    def put(self, namespace: str, key: str, record: dict[str, Any]) -> None:
        """Store a JSON-safe record under (namespace, key); overwriting is allowed."""

    @abstractmethod
    def get(self, namespace: str, key: str) -> dict[str, Any]:
        """Return a stored record; raise NotFoundError naming the key."""

    @abstractmethod
    def scan(self, namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Stream (key, record) pairs of a namespace, sorted by key."""

    @abstractmethod
    def delete(self, namespace: str, key: str) -> None:
        """Remove a record; removing an absent record does nothing."""


class Backend(ABC):
    """A store: one repository per area and its declared capabilities.

    Implementations are registered under the entry point group
    `mltrail.backends`, one entry point per URL scheme, and built from a URL
    with `from_url`.
    """

    experiments: EntityRepository[Experiment]
    runs: EntityRepository[Run]
    datasets: EntityRepository[Dataset]
    models: EntityRepository[Model]
    model_versions: EntityRepository[ModelVersion]
    metrics: MetricRepository
    lineage: LineageRepository
    audit: AuditRepository
    blobs: BlobRepository

    schemes: ClassVar[tuple[str, ...]] = ()

    @classmethod
    @abstractmethod
    def from_url(cls, url: str) -> Backend:
        """Build a backend from its store URL; raise InvalidInputError on a bad URL."""

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities:
        """The capabilities this backend declares."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The store URL with any credentials removed, safe to print and log."""

    def initialize(self) -> None:
        """Create tables, indexes or collections; idempotent. The default does nothing."""

    def close(self) -> None:
        """Release connections; the default does nothing."""

    def entity_repository(self, kind: str) -> EntityRepository:
        return {
            "experiment": self.experiments,
            "run": self.runs,
            "dataset": self.datasets,
            "model": self.models,
            "model_version": self.model_versions,
        }[kind]

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class WriteCounters:
    """Items and bytes that one backend object has written, for `telemetry_counters()`.

    The figures are cumulative and safe to add to from several threads. A
    backend adds what each successful write stored, and `snapshot()` returns
    them under the keys that `mltrail.discovery.telemetry` reads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items = 0
        self._bytes = 0

    def add(self, items: int, size: int = 0) -> None:
        with self._lock:
            self._items += items
            self._bytes += size

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"items_written": self._items, "bytes_written": self._bytes}


def chunked(items: Iterable, size: int) -> Iterator[list]:
    """Yield lists of at most `size` items."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
