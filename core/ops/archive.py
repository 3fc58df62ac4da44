"""Move old metric histories into compressed cold segments that reads merge back.

`archive_metrics` picks runs (ended before a cut-off, in a status, or the run
that produced a model version), and for each run:

1. streams every live point that the run's archive does not hold yet into
   segments of one metric each (`mltrail.ops.segments`), checking that each
   segment decodes to exactly the points it was made from before writing it;
2. writes the segments and a catalog as a new generation, reads them back and
   checks their SHA-256 and point counts;
3. commits the generation by rewriting the run's head record;
4. tags the run with `ARCHIVE_TAG` so reads consult the archive;
5. deletes the live points, unless new points arrived meanwhile.

A crash anywhere leaves every point readable. Before step 3 the new segments
are not referenced, and the next pass rewrites them under the same keys.
Between steps 3 and 5 reads see points in both places and yield each once.
Running the same archive again skips what is already archived.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any, Iterable, Iterator

from mltrail.access import Role
from mltrail.backend import chunked
from mltrail.clock import isoformat, to_micros, utcnow
from mltrail.domain import MetricPoint, Run, RunStatus
from mltrail.errors import InvalidInputError, NotFoundError
from mltrail.ops import segments
from mltrail.ops.cold import (
    ARCHIVE_TAG, MAX_RECORD_BYTES, SegmentStore, catalog_key, head_key,
    load_segment, merge_sources, parse_destination, read_descriptors, read_head,
    read_segment, segment_key, split_payload,
)
from mltrail.ops.records import (
    Progress, json_size, no_progress, order_key, point_to_record,
)

logger = logging.getLogger(__name__)

# Room left in a catalog record for its own fields besides the descriptors.
CATALOG_OVERHEAD_BYTES = 1_024


@dataclass
class ArchiveReport:
    """Counts and sizes of one `archive_metrics` call.

    `bytes_before` is the size of the moved live points as compact JSON, in
    the portable form of `mltrail.ops.records`. It is the same for every
    backend, because the contract does not expose a store's physical size.
    `bytes_after` is the size of the archive records written.
    """

    destination: str
    runs_selected: int = 0
    runs_archived: int = 0
    points: int = 0
    segments: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after

    @property
    def ratio(self) -> float | None:
        """Bytes before per byte after, or None when nothing was written."""
        return self.bytes_before / self.bytes_after if self.bytes_after else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_saved": self.bytes_saved, "ratio": self.ratio}


def archive_metrics(
    store: Any,
    *,
    older_than: timedelta | None = None,
    status: RunStatus | str | None = None,
    model_version: str | tuple[str, int] | None = None,
    destination: str | None = None,
    compression: str = segments.DEFAULT_COMPRESSION,
    progress: Progress | None = None,
) -> ArchiveReport:
    """Archive the metric histories of the selected runs; see the module docstring.

    Runs are selected by all given criteria together: ended (or, without an
    end time, created) more than `older_than` ago, in `status`, or the run
    that produced `model_version` (`"NAME:N"`, `"NAME:ALIAS"` or a version
    id). `destination` is None or `"store"` for the store's own blob records,
    or `"dir:/path"` for files under a directory. Needs the admin role in
    every namespace.
    """
    if older_than is None and status is None and model_version is None:
        raise InvalidInputError(
            "archive_metrics needs at least one of older_than, status or "
            "model_version; archiving every run at once is never the default", None)
    segments.check_compression(compression)
    store._authorize(Role.ADMIN, "archive_metrics", "*")
    target = parse_destination(store.backend, destination)
    report = ArchiveReport(destination=target.location)
    progress = progress or no_progress
    for run in _select_runs(store, older_than, status, model_version):
        report.runs_selected += 1
        reason = _skip_reason(store, run, target)
        if reason is not None:
            report.skipped.append((run.id, reason))
        else:
            _archive_run(store, run, target, compression, report)
        progress("archive", report.runs_selected, None)
    return report


# ----------------------------------------------------------------------
# selection
# ----------------------------------------------------------------------


def _select_runs(store: Any, older_than: timedelta | None, status: Any,
                 model_version: Any) -> Iterator[Run]:
    cutoff = None
    if older_than is not None:
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise InvalidInputError(
                f"older_than must be a non-negative timedelta, got {older_than!r}",
                older_than)
        cutoff = utcnow() - older_than
    wanted = None if status is None else _status(status)
    if model_version is not None:
        candidates: Iterable[Run] = [_producing_run(store, model_version)]
    else:
        where = None if wanted is None else f"status = '{wanted.value}'"
        candidates = store.iter_runs(where, include_deleted=True)
    for run in candidates:
        if wanted is not None and run.status != wanted:
            continue
        if cutoff is not None and (run.end_time or run.created_at) >= cutoff:
            continue
        yield run


def _status(value: Any) -> RunStatus:
    try:
        return RunStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in RunStatus)
        raise InvalidInputError(f"run status {value!r} is invalid; expected one of "
                                f"{known}", value) from None


def _producing_run(store: Any, model_version: str | tuple[str, int]) -> Run:
    """Return the run that produced a version given as NAME:N, NAME:ALIAS or id."""
    if isinstance(model_version, tuple):
        name, number = model_version
        version = store.get_model_version(name, number)
    elif ":" in model_version:
        name, _, number = model_version.rpartition(":")
        version = store.get_model_version(name, number)
    else:
        try:
            version = store.backend.model_versions.get(model_version)
        except NotFoundError:
            raise InvalidInputError(
                f"model version {model_version!r} is neither NAME:N, NAME:ALIAS nor a "
                "version id", model_version) from None
    if version.run_id is None:
        raise InvalidInputError(
            f"model version {model_version!r} records no producing run, so there "
            "are no metrics to archive for it", model_version)
    return store.backend.runs.get(version.run_id)


def _skip_reason(store: Any, run: Run, target: SegmentStore) -> str | None:
    if not run.status.terminal:
        return (f"run is {run.status.value}; only completed, failed or killed runs are "
                "archived, because a live run may still log points")
    current = run.tags.get(ARCHIVE_TAG)
    if current is not None and current != target.location:
        return f"already archived at {current!r}; archive it there again"
    if not store.backend.metrics.keys(run.id):
        if current is not None:
            return "already archived; no live metric points left"
        return "no live metric points"
    return None


# ----------------------------------------------------------------------
# one run
# ----------------------------------------------------------------------


@dataclass
class _Pass:
    """Counters of one run's archiving pass."""

    generation: int
    descriptors: list[dict[str, Any]] = field(default_factory=list)
    live_points: int = 0
    live_bytes: int = 0
    stored_bytes: int = 0


def _archive_run(store: Any, run: Run, target: SegmentStore, compression: str,
                 report: ArchiveReport) -> None:
    backend = store.backend
    head = read_head(target, run.id)
    archived = read_descriptors(target, head)
    generation = max((g["generation"] for g in head["generations"]), default=0) + 1
    latest_before = backend.metrics.latest([run.id]).get(run.id, {})
    work = _Pass(generation)
    for key in backend.metrics.keys(run.id):
        live = _counted(backend.metrics.history(run.id, key), work)
        fresh = _not_archived(live, _archived_points(target, run.id, key, archived))
        for chunk in chunked(fresh, segments.SEGMENT_POINTS):
            work.descriptors.append(_write_segment(target, run.id, work, key, chunk,
                                                   compression))
    if work.descriptors:
        _verify(target, run.id, work.descriptors)
        _commit(target, head, work)
    if run.tags.get(ARCHIVE_TAG) != target.location:
        _tag(store, run, target.location)
    latest_after = backend.metrics.latest([run.id]).get(run.id, {})
    if _latest_keys(latest_after) != _latest_keys(latest_before):
        reason = ("points arrived while archiving; the archived points are kept, "
                  "run the archive again")
        report.skipped.append((run.id, reason))
        return
    backend.metrics.delete_run(run.id)
    logger.info("archived %d metric points of run %s into %s", work.live_points, run.id,
                target.location)
    report.runs_archived += 1
    report.points += work.live_points
    report.segments += len(work.descriptors)
    report.bytes_before += work.live_bytes
    report.bytes_after += work.stored_bytes


def _counted(points: Iterator[MetricPoint], work: _Pass) -> Iterator[MetricPoint]:
    for point in points:
        work.live_points += 1
        work.live_bytes += json_size(point_to_record(point))
        yield point


def _archived_points(target: SegmentStore, run_id: str, key: str,
                     descriptors: list[dict[str, Any]]) -> Iterator[MetricPoint]:
    sources = [(tuple(d["min"]), _opener(target, run_id, d))
               for d in descriptors if d["key"] == key]
    return merge_sources(sources)


def _opener(target: SegmentStore, run_id: str, descriptor: dict[str, Any]):
    return lambda: load_segment(target, run_id, descriptor)


def _not_archived(live: Iterator[MetricPoint],
                  archived: Iterator[MetricPoint]) -> Iterator[MetricPoint]:
    """Yield the live points whose (step, timestamp, seq) the archive lacks.

    Both streams are in history order, so one forward walk suffices.
    """
    pending = next(archived, None)
    for point in live:
        key = order_key(point)
        while pending is not None and order_key(pending) < key:
            pending = next(archived, None)
        if pending is not None and order_key(pending) == key:
            continue
        yield point


def _write_segment(target: SegmentStore, run_id: str, work: _Pass, key: str,
                   points: list[MetricPoint], compression: str) -> dict[str, Any]:
    body = segments.encode_points(points)
    data = segments.compress(body, compression)
    decoded = segments.decode_points(run_id, key,
                                     segments.decompress(data, compression))
    # Encoding the decoded points again must give the same bytes: every field
    # of every point, floats bit for bit, survived the round trip.
    if segments.encode_points(decoded) != body:
        raise segments.SegmentFormatError(
            f"the segment encoding of run {run_id!r} metric {key!r} did not reproduce "
            "its points; nothing was archived or deleted", run_id)
    number = len(work.descriptors)
    pieces = split_payload(data)
    for part, text in enumerate(pieces):
        record = {"data": text}
        target.put(segment_key(run_id, work.generation, number, part), record)
        work.stored_bytes += json_size(record)
    micros = [to_micros(p.timestamp) for p in points]
    return {
        "generation": work.generation, "segment": number, "key": key,
        "count": len(points), "parts": len(pieces),
        "sha256": hashlib.sha256(data).hexdigest(), "compression": compression,
        "min": list(order_key(points[0])), "max": list(order_key(points[-1])),
        "min_ts": min(micros), "max_ts": max(micros),
        "last": point_to_record(points[-1]),
    }


def _verify(target: SegmentStore, run_id: str,
            descriptors: list[dict[str, Any]]) -> None:
    """Read every new segment back and check its SHA-256.

    The digest was taken of bytes that decoded to exactly the archived points,
    so a match proves that the stored copy contains them too.
    """
    for descriptor in descriptors:
        read_segment(target, run_id, descriptor)


def _commit(target: SegmentStore, head: dict[str, Any], work: _Pass) -> None:
    """Write the catalog parts, then the head, which makes the generation visible."""
    run_id = head["run_id"]
    parts = _catalog_parts(work.descriptors)
    for number, descriptors in enumerate(parts):
        record = {"run_id": run_id, "generation": work.generation, "part": number,
                  "segments": descriptors}
        target.put(catalog_key(run_id, work.generation, number), record)
        work.stored_bytes += json_size(record)
    head = {**head, "generations": [*head["generations"], {
        "generation": work.generation, "catalog_parts": len(parts),
        "segments": len(work.descriptors),
        "points": sum(d["count"] for d in work.descriptors),
        "archived_at": isoformat(utcnow()),
    }]}
    target.put(head_key(run_id), head)
    work.stored_bytes += json_size(head)


def _catalog_parts(descriptors: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    parts: list[list[dict[str, Any]]] = [[]]
    size = CATALOG_OVERHEAD_BYTES
    for descriptor in descriptors:
        extra = json_size(descriptor) + 1
        if parts[-1] and size + extra > MAX_RECORD_BYTES:
            parts.append([])
            size = CATALOG_OVERHEAD_BYTES
        parts[-1].append(descriptor)
        size += extra
    return parts


def _tag(store: Any, run: Run, location: str) -> None:
    def change(current: Run) -> dict[str, Any] | None:
        if current.tags.get(ARCHIVE_TAG) == location:
            return None
        return {"tags": {**current.tags, ARCHIVE_TAG: location}}

    store._modify(store.backend.runs, run.id, change, "archive_metrics")


def _latest_keys(latest: dict[str, MetricPoint]) -> dict[str, tuple]:
    return {key: order_key(point) for key, point in latest.items()}
