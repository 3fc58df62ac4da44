"""Stream a store's content as portable records, and write such records into a store.

`source_members` yields one (member, records) pair per kind of content, in the
order a restore needs. `Restorer` writes them into any backend through the
repositories, and keeps ids, timestamps, revisions, seqs and hashes exactly as
they were. Backup files (`mltrail.ops.backup`) and direct migration both use
these two halves.

Writing is idempotent: an entity, lineage node, edge or blob that is already
stored with the same content is counted as unchanged, and metric points
overwrite themselves by their (run, key, seq) identity. Stored content that
differs is never overwritten; it is reported as a conflict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from mltrail.backend import ScanRequest, chunked
from mltrail.domain import (
    ENTITY_TYPES, AuditEvent, EdgeType, Entity, LineageEdge, LineageNode, MetricPoint,
    NodeKind, Run,
)
from mltrail.errors import AlreadyExistsError, InvalidInputError, NotFoundError
from mltrail.errors import UnsupportedCapabilityError
from mltrail.ops.cold import (
    ARCHIVE_TAG, BLOB_NAMESPACE, DIR_PREFIX, MetricReader, run_of_key,
)
from mltrail.ops.records import (
    Progress, dumps, no_progress, point_from_record, point_to_record, require_keys,
)
from mltrail.query.ast import In

logger = logging.getLogger(__name__)

ENTITY_MEMBERS: dict[str, str] = {
    "experiments": "experiment",
    "datasets": "dataset",
    "models": "model",
    "runs": "run",
    "model_versions": "model_version",
}
MEMBERS: tuple[str, ...] = (
    *ENTITY_MEMBERS, "lineage_nodes", "lineage_edges", "metrics", "blobs", "audit",
)

# Blob namespaces that backups and migrations copy. The contract cannot list a
# store's namespaces, so every feature that stores blobs registers its own here.
BLOB_NAMESPACES: list[str] = [BLOB_NAMESPACE]

MAX_CONFLICTS_LISTED = 100
SCAN_BATCH = 500


def register_blob_namespace(namespace: str) -> None:
    """Make backups and migrations copy the blob records of `namespace`."""
    if namespace not in BLOB_NAMESPACES:
        BLOB_NAMESPACES.append(namespace)


# ----------------------------------------------------------------------
# what to copy
# ----------------------------------------------------------------------


@dataclass
class Selection:
    """The part of a store to copy; `full` means everything, ids are then unused."""

    full: bool = True
    runs: set[str] = field(default_factory=set)
    experiments: set[str] = field(default_factory=set)
    datasets: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    model_versions: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)

    def ids(self, member: str) -> set[str]:
        return getattr(self, member)


def select(store: Any, filter: str | None,
           experiments: Sequence[str] | None) -> Selection:
    """Return the runs matching `filter` within `experiments`, with what they need.

    That is their ancestor runs, experiments, consumed datasets and the
    datasets and pipelines those derive from, the model versions they produced
    and their models, and the lineage nodes of all of these. Soft-deleted runs
    are included, since a backup should not drop them.
    """
    experiment_ids = [store.get_experiment(name).id for name in experiments or ()]
    chosen = Selection(full=False)
    runs = store.iter_runs(filter, experiment_ids=experiment_ids or None,
                           include_deleted=True)
    for run in runs:
        _add_run(store, chosen, run)
    _add_datasets(store, chosen)
    _add_versions(store, chosen)
    chosen.nodes |= chosen.runs | chosen.datasets | chosen.model_versions
    return chosen


def _add_run(store: Any, chosen: Selection, run: Run) -> None:
    while run is not None and run.id not in chosen.runs:
        chosen.runs.add(run.id)
        chosen.experiments.add(run.experiment_id)
        chosen.datasets.update(run.dataset_ids)
        parent = run.parent_run_id
        run = store.backend.runs.get_many([parent]).get(parent) if parent else None


def _add_datasets(store: Any, chosen: Selection) -> None:
    """Add the datasets the chosen ones derive from and the pipelines that made them."""
    lineage = store.backend.lineage
    queue = list(chosen.datasets)
    while queue:
        dataset_id = queue.pop()
        for edge in lineage.edges(dataset_id, "upstream"):
            parent = edge.target
            if edge.type == EdgeType.DERIVED_FROM and parent not in chosen.datasets:
                chosen.datasets.add(parent)
                queue.append(parent)
            elif edge.type == EdgeType.PRODUCED and _is_pipeline(lineage, edge.source):
                chosen.nodes.add(edge.source)


def _is_pipeline(lineage: Any, node_id: str) -> bool:
    try:
        return lineage.get_node(node_id).kind == NodeKind.PIPELINE
    except NotFoundError:
        return False


def _add_versions(store: Any, chosen: Selection) -> None:
    for batch in chunked(sorted(chosen.runs), SCAN_BATCH):
        request = ScanRequest(filter=In(("run_id",), tuple(batch)))
        for version in store.backend.model_versions.scan(request):
            if version.run_id in batch:
                chosen.model_versions.add(version.id)
                chosen.models.add(version.model_id)


# ----------------------------------------------------------------------
# reading a store
# ----------------------------------------------------------------------


def source_members(store: Any,
                   chosen: Selection) -> Iterator[tuple[str, Iterator[dict]]]:
    """Yield (member, records) in restore order; records stream lazily."""
    for member, kind in ENTITY_MEMBERS.items():
        yield member, _entities(store, kind, chosen, member)
    yield "lineage_nodes", _nodes(store, chosen)
    yield "lineage_edges", _edges(store, chosen)
    yield "metrics", _metrics(store, chosen)
    yield "blobs", _blobs(store, chosen)
    if chosen.full:
        yield "audit", (event.to_record() for event in store.backend.audit.scan())


def _entities(store: Any, kind: str, chosen: Selection, member: str) -> Iterator[dict]:
    repository = store.backend.entity_repository(kind)
    if chosen.full:
        for entity in repository.scan(ScanRequest()):
            yield entity.to_record()
        return
    for batch in chunked(sorted(chosen.ids(member)), SCAN_BATCH):
        found = repository.get_many(batch)
        for entity_id in batch:
            if entity_id in found:
                yield found[entity_id].to_record()


def _nodes(store: Any, chosen: Selection) -> Iterator[dict]:
    lineage = store.backend.lineage
    if chosen.full:
        for node in lineage.scan_nodes():
            yield node.to_record()
        return
    for node_id in sorted(chosen.nodes):
        try:
            yield lineage.get_node(node_id).to_record()
        except NotFoundError:
            continue


def _edges(store: Any, chosen: Selection) -> Iterator[dict]:
    for edge in store.backend.lineage.scan_edges():
        if chosen.full or {edge.source, edge.target} <= chosen.nodes:
            yield edge.to_record()


def _metrics(store: Any, chosen: Selection) -> Iterator[dict]:
    """Stream live points run by run.

    Points archived in the store travel as blob records. Points archived under
    a directory are outside the store, so they travel inline with the live
    ones and the copy does not depend on that directory.
    """
    reader = MetricReader(store.backend)
    for run in _runs(store, chosen):
        location = run.tags.get(ARCHIVE_TAG, "")
        inline = location.startswith(DIR_PREFIX)
        keys = reader.keys(run.id) if inline else store.backend.metrics.keys(run.id)
        for key in keys:
            history = reader.history(run.id, key) if inline else \
                store.backend.metrics.history(run.id, key)
            for point in history:
                yield point_to_record(point)
    if chosen.full:
        yield from _orphan_metrics(store)


def _runs(store: Any, chosen: Selection) -> Iterator[Run]:
    if chosen.full:
        yield from store.backend.runs.scan(ScanRequest())
        return
    for batch in chunked(sorted(chosen.runs), SCAN_BATCH):
        found = store.backend.runs.get_many(batch)
        yield from (found[run_id] for run_id in batch if run_id in found)


def _orphan_metrics(store: Any) -> Iterator[dict]:
    """Stream points of runs that no longer exist, when the backend can list them."""
    metrics = store.backend.metrics
    try:
        run_ids = metrics.runs_with_metrics()
        for batch in chunked(run_ids, SCAN_BATCH):
            existing = store.backend.runs.get_many(batch)
            for run_id in batch:
                if run_id in existing:
                    continue
                for key in metrics.keys(run_id):
                    for point in metrics.history(run_id, key):
                        yield point_to_record(point)
    except UnsupportedCapabilityError:
        logger.info("backend %s cannot list runs with metrics; points of deleted runs "
                    "are not copied", store.backend.capabilities.name)


def _blobs(store: Any, chosen: Selection) -> Iterator[dict]:
    blobs = store.backend.blobs
    if not chosen.full:
        for key, record in blobs.scan(BLOB_NAMESPACE):
            if run_of_key(key) in chosen.runs:
                yield {"namespace": BLOB_NAMESPACE, "key": key, "record": record}
        return
    for namespace in BLOB_NAMESPACES:
        for key, record in blobs.scan(namespace):
            yield {"namespace": namespace, "key": key, "record": record}


# ----------------------------------------------------------------------
# validation of incoming records
# ----------------------------------------------------------------------


def parse_record(member: str, record: Any) -> Any:
    """Return the domain object of an incoming record; raise InvalidInputError."""
    if member in ENTITY_MEMBERS:
        require_keys(record, ("id",), member)
        return ENTITY_TYPES[ENTITY_MEMBERS[member]].from_record(record)
    if member == "metrics":
        return point_from_record(require_keys(record, ("run_id",), member))
    if member == "lineage_nodes":
        return LineageNode.from_record(require_keys(record, ("id", "kind"), member))
    if member == "lineage_edges":
        keys = ("source", "target", "type", "created_at")
        return LineageEdge.from_record(require_keys(record, keys, member))
    if member == "blobs":
        require_keys(record, ("namespace", "key", "record"), member)
        if not isinstance(record["record"], dict):
            raise InvalidInputError(
                f"blob {record['key']!r} contains {record['record']!r}, not a JSON "
                "object", record["key"])
        return record
    if member == "audit":
        return AuditEvent.from_record(require_keys(record, ("seq", "hash"), member))
    raise InvalidInputError(f"unknown member {member!r}; expected one of "
                            f"{', '.join(MEMBERS)}", member)


# ----------------------------------------------------------------------
# writing a store
# ----------------------------------------------------------------------


@dataclass
class MemberCounts:
    added: int = 0
    unchanged: int = 0
    conflicts: int = 0


@dataclass
class ImportReport:
    """Counts per member of one restore or migration.

    For metrics, `added` counts points written: a point whose identity was
    already stored is overwritten with itself, so the count does not tell new
    points from repeated ones. `audit` describes what happened to the audit chain.
    """

    counts: dict[str, MemberCounts] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    audit: str = "not included"

    def member(self, name: str) -> MemberCounts:
        return self.counts.setdefault(name, MemberCounts())

    @property
    def ok(self) -> bool:
        return not any(c.conflicts for c in self.counts.values())

    def conflict(self, member: str, message: str) -> None:
        self.member(member).conflicts += 1
        if len(self.conflicts) < MAX_CONFLICTS_LISTED:
            self.conflicts.append(message)

    def render(self) -> str:
        """Return the report as text for people, one member per line."""
        lines = []
        for name, counts in self.counts.items():
            lines.append(f"  {name}: {counts.added} added, {counts.unchanged} "
                         f"unchanged, {counts.conflicts} conflicts")
        lines.append(f"  audit chain: {self.audit}")
        lines.extend(f"  conflict: {message}" for message in self.conflicts)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": {name: vars(c) for name, c in self.counts.items()},
            "conflicts": list(self.conflicts),
            "audit": self.audit,
        }


class Restorer:
    """Writes incoming records into `store`'s backend; see the module docstring."""

    def __init__(self, store: Any, progress: Progress | None = None) -> None:
        self.store = store
        self.backend = store.backend
        self.progress = progress or no_progress
        self.report = ImportReport()
        self.chain_was_empty = self.backend.audit.last() is None

    def restore(self, member: str, records: Iterable[dict],
                total: int | None = None) -> None:
        handlers = {"lineage_nodes": self._node, "lineage_edges": self._edge,
                    "blobs": self._blob}
        if member == "metrics":
            self._metrics(records, total)
            return
        if member == "audit":
            self._audit(records, total)
            return
        handle = handlers.get(member) or (lambda r: self._entity(member, r))
        counts = self.report.member(member)
        for done, record in enumerate(records, 1):
            handle(record)
            if done % SCAN_BATCH == 0:
                self.progress(member, done, total)
        self.progress(member, counts.added + counts.unchanged + counts.conflicts, total)

    def _entity(self, member: str, record: dict) -> None:
        entity = parse_record(member, record)
        repository = self.backend.entity_repository(entity.kind)
        counts = self.report.member(member)
        try:
            repository.insert(entity)
            counts.added += 1
            return
        except AlreadyExistsError:
            pass
        existing = repository.get_many([entity.id]).get(entity.id)
        if existing is not None and _same_entity(existing, entity):
            counts.unchanged += 1
            return
        self.report.conflict(member, _entity_conflict(repository, entity, existing))

    def _node(self, record: dict) -> None:
        node = parse_record("lineage_nodes", record)
        counts = self.report.member("lineage_nodes")
        try:
            existing = self.backend.lineage.get_node(node.id)
        except NotFoundError:
            self.backend.lineage.put_node(node)
            counts.added += 1
            return
        if existing == node:
            counts.unchanged += 1
        else:
            self.report.conflict("lineage_nodes", f"lineage node {node.id!r} is stored "
                                 f"as {existing.to_record()}, not {node.to_record()}")

    def _edge(self, record: dict) -> None:
        edge = parse_record("lineage_edges", record)
        counts = self.report.member("lineage_edges")
        stored = self.backend.lineage.edges(edge.downstream, "upstream")
        if any(e.key == edge.key for e in stored):
            counts.unchanged += 1
            return
        self.backend.lineage.add_edge(edge)
        counts.added += 1

    def _blob(self, record: dict) -> None:
        parse_record("blobs", record)
        counts = self.report.member("blobs")
        namespace, key, content = record["namespace"], record["key"], record["record"]
        try:
            existing = self.backend.blobs.get(namespace, key)
        except NotFoundError:
            self.backend.blobs.put(namespace, key, content)
            counts.added += 1
            return
        if dumps(existing) == dumps(content):
            counts.unchanged += 1
        else:
            self.report.conflict("blobs", f"blob {namespace}/{key} is stored with "
                                 "different content; kept the stored one")

    def _metrics(self, records: Iterable[dict], total: int | None) -> None:
        counts = self.report.member("metrics")
        size = max(1, min(self.backend.capabilities.max_batch_size, 10_000))
        batch: list[MetricPoint] = []
        for record in records:
            point = parse_record("metrics", record)
            if batch and (point.run_id != batch[0].run_id or len(batch) >= size):
                self._append(batch, counts, total)
                batch = []
            batch.append(point)
        if batch:
            self._append(batch, counts, total)

    def _append(self, batch: list[MetricPoint], counts: MemberCounts,
                total: int | None) -> None:
        # NOTE: a point that the target has since archived is written live
        # again; reads still show it once, because they drop repeated points.
        self.backend.metrics.append(batch[0].run_id, batch)
        counts.added += len(batch)
        self.progress("metrics", counts.added, total)

    def _audit(self, records: Iterable[dict], total: int | None) -> None:
        """Copy events verbatim into an empty chain; otherwise check they are there."""
        counts = self.report.member("audit")
        if self.chain_was_empty and self.backend.audit.last() is None:
            for record in records:
                self.backend.audit.append(parse_record("audit", record))
                counts.added += 1
            self.report.audit = f"copied {counts.added} events"
            self.progress("audit", counts.added, total)
            return
        stored = self.backend.audit.scan()
        for record in records:
            event = parse_record("audit", record)
            mine = next(stored, None)
            if mine is None or mine.hash != event.hash:
                self.report.audit = (
                    f"not copied: the target's audit chain already holds other events "
                    f"(first difference at seq {event.seq}); the import event records "
                    "the source chain's head")
                return
            counts.unchanged += 1
        self.report.audit = f"already present ({counts.unchanged} events)"

    def finish(self, details: dict[str, Any]) -> ImportReport:
        """Append the one `import` audit event and return the report."""
        summary = {name: vars(c) for name, c in self.report.counts.items()}
        self.store._audit("import", "store", "-", {**details, "counts": summary,
                                                   "audit": self.report.audit})
        return self.report


def _same_entity(a: Entity, b: Entity) -> bool:
    return dumps(a.to_record()) == dumps(b.to_record())


def _entity_conflict(repository: Any, entity: Entity, existing: Entity | None) -> str:
    if existing is not None:
        return (f"{entity.kind} {entity.id!r} is stored with different content "
                f"(revision {existing.revision}, incoming {entity.revision}); kept the "
                "stored one")
    key = tuple(getattr(entity, name) for name in repository.unique_key)
    other = repository.find_unique(key)
    holder = f" by {other.id!r}" if other is not None else ""
    return (f"{entity.kind} {entity.id!r} was not imported: its "
            f"{dict(zip(repository.unique_key, key, strict=True))} is already "
            f"taken{holder}")

