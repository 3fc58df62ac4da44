"""Compare the content of two stores, of any backends, after a backup or migration."""

from __future__ import annotations

import hashlib
from itertools import zip_longest
from typing import Any

from mltrail import codec
from mltrail.backend import ScanRequest
from mltrail.errors import UnsupportedCapabilityError
from mltrail.ops.cold import MetricReader
from mltrail.ops.portable import BLOB_NAMESPACES, ENTITY_MEMBERS
from mltrail.ops.records import dumps, point_to_record

AUDIT_MODES = ("exact", "prefix", "skip")


class _Enough(Exception):
    """Raised when the list of differences is full."""


class _Differences(list):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def add(self, message: str) -> None:
        self.append(message)
        if len(self) >= self.limit:
            raise _Enough


def diff_stores(a: Any, b: Any, *, audit: str = "prefix", limit: int = 50) -> list[str]:
    """Return up to `limit` differences between the content of stores `a` and `b`.

    Entities are compared record by record (ids, values, timestamps,
    revisions), metric histories point by point with floats bit for bit,
    archived points included, and lineage nodes, edges and blobs by content.
    `audit` is `exact` (same chain), `prefix` (b's chain starts with a's, as
    after an import that appended its own event) or `skip`. An empty list
    means no difference was found. Memory grows with the number of ids of one
    kind (a digest per record), not with the records themselves.
    """
    if audit not in AUDIT_MODES:
        raise ValueError(f"audit must be one of {AUDIT_MODES}, got {audit!r}")
    found = _Differences(limit)
    try:
        run_ids = set()
        for kind in ENTITY_MEMBERS.values():
            ids = _diff_entities(a, b, kind, found)
            if kind == "run":
                run_ids = ids
        _diff_lineage(a, b, found)
        _diff_metrics(a, b, run_ids | _orphan_runs(a) | _orphan_runs(b), found)
        _diff_blobs(a, b, found)
        if audit != "skip":
            _diff_audit(a, b, audit, found)
    except _Enough:
        pass
    return list(found)


def _digest(record: Any) -> str:
    return hashlib.sha256(dumps(record).encode("utf-8")).hexdigest()


def _diff_entities(a: Any, b: Any, kind: str, found: _Differences) -> set[str]:
    repository = a.backend.entity_repository(kind)
    left = {e.id: _digest(e.to_record()) for e in repository.scan(ScanRequest())}
    seen = set()
    for entity in b.backend.entity_repository(kind).scan(ScanRequest()):
        seen.add(entity.id)
        mine = left.get(entity.id)
        if mine is None:
            found.add(f"{kind} {entity.id!r} is only in {b.url}")
        elif mine != _digest(entity.to_record()):
            stored = repository.get(entity.id).to_record()
            found.add(f"{kind} {entity.id!r} differs: {dumps(stored)} != "
                      f"{dumps(entity.to_record())}")
    for entity_id in sorted(set(left) - seen):
        found.add(f"{kind} {entity_id!r} is only in {a.url}")
    return seen | set(left)


def _diff_lineage(a: Any, b: Any, found: _Differences) -> None:
    for what, scan in (("lineage node", lambda s: s.backend.lineage.scan_nodes()),
                       ("lineage edge", lambda s: s.backend.lineage.scan_edges())):
        left = {dumps(item.to_record()) for item in scan(a)}
        right = {dumps(item.to_record()) for item in scan(b)}
        for record in sorted(left - right):
            found.add(f"{what} {record} is only in {a.url}")
        for record in sorted(right - left):
            found.add(f"{what} {record} is only in {b.url}")


def _orphan_runs(store: Any) -> set[str]:
    try:
        listed = set(store.backend.metrics.runs_with_metrics())
    except UnsupportedCapabilityError:
        return set()
    return listed - set(store.backend.runs.get_many(sorted(listed)))


def _diff_metrics(a: Any, b: Any, run_ids: set[str], found: _Differences) -> None:
    left, right = MetricReader(a.backend), MetricReader(b.backend)
    for run_id in sorted(run_ids):
        keys_a, keys_b = left.keys(run_id), right.keys(run_id)
        if keys_a != keys_b:
            found.add(f"run {run_id!r} has metric keys {keys_a} in {a.url} and "
                      f"{keys_b} in {b.url}")
            continue
        for key in keys_a:
            _diff_history(run_id, key, left, right, found)


def _diff_history(run_id: str, key: str, left: MetricReader, right: MetricReader,
                  found: _Differences) -> None:
    pairs = zip_longest(left.history(run_id, key), right.history(run_id, key))
    for index, (mine, theirs) in enumerate(pairs):
        if mine is None or theirs is None:
            found.add(f"run {run_id!r} metric {key!r} has a different number of points "
                      f"(first difference at point {index})")
            return
        if not codec.values_equal(point_to_record(mine), point_to_record(theirs)):
            found.add(f"run {run_id!r} metric {key!r} point {index} differs: "
                      f"{point_to_record(mine)} != {point_to_record(theirs)}")
            return


def _diff_blobs(a: Any, b: Any, found: _Differences) -> None:
    for namespace in BLOB_NAMESPACES:
        left = {key: _digest(value) for key, value in a.backend.blobs.scan(namespace)}
        right = {key: _digest(value) for key, value in b.backend.blobs.scan(namespace)}
        for key in sorted(set(left) | set(right)):
            if left.get(key) != right.get(key):
                found.add(f"blob {namespace}/{key} differs or is missing on one side")


def _diff_audit(a: Any, b: Any, mode: str, found: _Differences) -> None:
    mine = a.backend.audit.scan()
    theirs = b.backend.audit.scan()
    for event in mine:
        other = next(theirs, None)
        if other is None:
            found.add(f"audit event {event.seq} is only in {a.url}")
            return
        if other.hash != event.hash:
            found.add(f"audit event {event.seq} differs (hash {event.hash[:12]} != "
                      f"{other.hash[:12]})")
            return
    extra = next(theirs, None)
    if mode == "exact" and extra is not None:
        found.add(f"audit event {extra.seq} is only in {b.url}")
