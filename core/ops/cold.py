"""Cold metric segments: where they live and how reads merge them with live points.

`archive_metrics` moves the histories of a run into compressed segments (see
`mltrail.ops.segments`) and marks the run with the reserved tag
`ARCHIVE_TAG`, whose value names the location: `store` for the store's own
blob records, or `dir:/absolute/path` for files under a directory. Reads
consult the archive only for runs with that tag, so runs that were never
archived cost nothing extra.

Layout under a location, with `|` separating key parts (run ids never contain
it):

- `RUN|head`: the committed generations of the run's archive. Writing the
  head is the commit point of one archiving pass.
- `RUN|gNNNN|catalog|PPPP`: catalog parts of generation N, listing its
  segments with their metric key, point count, first and last order key, the
  last point itself, and the SHA-256 of the compressed bytes.
- `RUN|gNNNN|sSSSSSS|PPP`: the compressed segment, base64-encoded and split so
  that no record exceeds `MAX_RECORD_BYTES`.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import itertools
import json
import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from mltrail.backend import Backend, BlobRepository
from mltrail.clock import to_micros
from mltrail.domain import MetricPoint, Run
from mltrail.errors import InvalidInputError, NotFoundError
from mltrail.ops import segments
from mltrail.ops.records import order_key, point_from_record

ARCHIVE_TAG = "mltrail-archive"
BLOB_NAMESPACE = "metric-archive"
STORE_LOCATION = "store"
DIR_PREFIX = "dir:"
ARCHIVE_FORMAT = 1

# DynamoDB items are at most 400 KB, so no archive record exceeds 256 KiB as
# JSON. A segment part is base64 (4 bytes of text per 3 of data) and keeps
# 1 KiB for the record's other fields.
MAX_RECORD_BYTES = 256 * 1024
MAX_PART_BYTES = (MAX_RECORD_BYTES - 1024) // 4 * 3

CATALOG_CACHE_RUNS = 256

OrderKey = tuple[int, int, str]


# ----------------------------------------------------------------------
# locations
# ----------------------------------------------------------------------


class SegmentStore(ABC):
    """A key-value home for archive records: the store's blobs or a directory."""

    location: str

    @abstractmethod
    def put(self, key: str, record: dict[str, Any]) -> None:
        """Store a JSON-safe record, replacing any record under `key`."""

    @abstractmethod
    def get(self, key: str) -> dict[str, Any]:
        """Return the record under `key`; raise NotFoundError naming the key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the record under `key`; removing an absent key does nothing."""

    @abstractmethod
    def scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Stream every (key, record), sorted by key."""

    def find(self, key: str) -> dict[str, Any] | None:
        try:
            return self.get(key)
        except NotFoundError:
            return None


class BlobSegmentStore(SegmentStore):
    """Archive records as blob records of the store itself, in `BLOB_NAMESPACE`."""

    location = STORE_LOCATION

    def __init__(self, blobs: BlobRepository) -> None:
        self.blobs = blobs

    def put(self, key: str, record: dict[str, Any]) -> None:
        self.blobs.put(BLOB_NAMESPACE, key, record)

    def get(self, key: str) -> dict[str, Any]:
        return self.blobs.get(BLOB_NAMESPACE, key)

    def delete(self, key: str) -> None:
        self.blobs.delete(BLOB_NAMESPACE, key)

    def scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return self.blobs.scan(BLOB_NAMESPACE)


class DirectorySegmentStore(SegmentStore):
    """Archive records as JSON files under a directory, one folder per run.

    Files are written to a temporary name, flushed to disk and renamed, so a
    reader never sees half a record.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()
        self.location = DIR_PREFIX + str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("|")).with_suffix(".json")

    def put(self, key: str, record: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "w", encoding="utf-8") as handle:
            json.dump(record, handle, ensure_ascii=False, allow_nan=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)

    def get(self, key: str) -> dict[str, Any]:
        try:
            with open(self._path(key), encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            raise NotFoundError(f"archive record {key!r} not found under "
                                f"{str(self.root)!r}", key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def scan(self) -> Iterator[tuple[str, dict[str, Any]]]:
        if not self.root.is_dir():
            return
        keys = sorted("|".join(path.relative_to(self.root).with_suffix("").parts)
                      for path in self.root.rglob("*.json"))
        for key in keys:
            record = self.find(key)
            if record is not None:
                yield key, record


def open_location(backend: Backend, location: str) -> SegmentStore:
    """Return the segment store for a location as written in `ARCHIVE_TAG`."""
    if location == STORE_LOCATION:
        return BlobSegmentStore(backend.blobs)
    if location.startswith(DIR_PREFIX) and len(location) > len(DIR_PREFIX):
        return DirectorySegmentStore(location[len(DIR_PREFIX):])
    raise InvalidInputError(
        f"archive location {location!r} is invalid; expected 'store' or "
        "'dir:/absolute/path'", location)


def parse_destination(backend: Backend,
                      destination: str | os.PathLike | None) -> SegmentStore:
    """Return the segment store for `archive_metrics(destination=...)`.

    None or `store` means the store's own blob records; `dir:PATH` or a plain
    path means files under that directory.
    """
    if destination is None or destination == STORE_LOCATION:
        return BlobSegmentStore(backend.blobs)
    text = os.fspath(destination)
    if text.startswith(DIR_PREFIX):
        text = text[len(DIR_PREFIX):]
    if not text:
        raise InvalidInputError(
            f"archive destination {destination!r} is invalid; expected 'store', "
            "'dir:/path' or a directory path", destination)
    return DirectorySegmentStore(text)


# ----------------------------------------------------------------------
# keys and records
# ----------------------------------------------------------------------


def head_key(run_id: str) -> str:
    return f"{run_id}|head"


def catalog_key(run_id: str, generation: int, part: int) -> str:
    return f"{run_id}|g{generation:04d}|catalog|{part:04d}"


def segment_key(run_id: str, generation: int, segment: int, part: int) -> str:
    return f"{run_id}|g{generation:04d}|s{segment:06d}|{part:03d}"


def run_of_key(key: str) -> str:
    return key.partition("|")[0]


def empty_head(run_id: str) -> dict[str, Any]:
    return {"format": ARCHIVE_FORMAT, "run_id": run_id, "generations": []}


def read_head(store: SegmentStore, run_id: str) -> dict[str, Any]:
    """Return the run's committed archive head, or an empty one."""
    head = store.find(head_key(run_id))
    if head is None:
        return empty_head(run_id)
    if head.get("format") != ARCHIVE_FORMAT:
        raise InvalidInputError(
            f"the metric archive of run {run_id!r} at {store.location!r} has format "
            f"{head.get('format')!r}; this mltrail reads format {ARCHIVE_FORMAT}",
            head.get("format"))
    return head


def read_descriptors(store: SegmentStore, head: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the segment descriptors of every committed generation in `head`."""
    found = []
    for generation in head["generations"]:
        for part in range(generation["catalog_parts"]):
            key = catalog_key(head["run_id"], generation["generation"], part)
            found.extend(store.get(key)["segments"])
    return found


def purge_archive(backend: Backend, run: Run) -> int:
    """Delete the archived metric records of a run; return how many were deleted.

    The head goes first, so an interrupted purge leaves segment records that
    no head refers to: readers ignore them, and `fsck --repair` removes them.
    Records of an archiving pass that never committed are not in the head,
    so they stay for fsck as well.
    """
    location = run.tags.get(ARCHIVE_TAG)
    if location is None:
        return 0
    store = open_location(backend, location)
    head = read_head(store, run.id)
    keys = []
    for generation in head["generations"]:
        keys.extend(catalog_key(run.id, generation["generation"], part)
                    for part in range(generation["catalog_parts"]))
    for descriptor in read_descriptors(store, head):
        keys.extend(segment_key(run.id, descriptor["generation"], descriptor["segment"],
                                part)
                    for part in range(descriptor["parts"]))
    store.delete(head_key(run.id))
    for key in keys:
        store.delete(key)
    return len(keys) + 1


def split_payload(data: bytes) -> list[str]:
    """Cut compressed bytes into base64 texts of at most `MAX_RECORD_BYTES` each."""
    pieces = [data[start:start + MAX_PART_BYTES]
              for start in range(0, len(data), MAX_PART_BYTES)] or [b""]
    return [base64.b64encode(piece).decode("ascii") for piece in pieces]


def read_segment(store: SegmentStore, run_id: str, descriptor: dict[str, Any]) -> bytes:
    """Return a segment's compressed bytes; raise SegmentFormatError if altered."""
    pieces = []
    for part in range(descriptor["parts"]):
        record = store.get(segment_key(run_id, descriptor["generation"],
                                       descriptor["segment"], part))
        pieces.append(base64.b64decode(record["data"]))
    data = b"".join(pieces)
    if hashlib.sha256(data).hexdigest() != descriptor["sha256"]:
        raise segments.SegmentFormatError(
            f"archived segment {descriptor['segment']} of run {run_id!r} metric "
            f"{descriptor['key']!r} at {store.location!r} does not match its SHA-256; "
            "it was altered or partly written", run_id)
    return data


def load_segment(store: SegmentStore, run_id: str,
                 descriptor: dict[str, Any]) -> Iterator[MetricPoint]:
    """Read, check and decode one segment; raise SegmentFormatError when damaged."""
    data = read_segment(store, run_id, descriptor)
    body = segments.decompress(data, descriptor["compression"])
    count, points = segments.iter_points(run_id, descriptor["key"], body)
    if count != descriptor["count"]:
        raise segments.SegmentFormatError(
            f"archived segment {descriptor['segment']} of run {run_id!r} contains "
            f"{count} points; its catalog says {descriptor['count']}", run_id)
    return points


# ----------------------------------------------------------------------
# merging
# ----------------------------------------------------------------------


Source = tuple[tuple, Callable[[], Iterable[MetricPoint]]]


def merge_sources(sources: Sequence[Source]) -> Iterator[MetricPoint]:
    """Merge sorted point sources in history order, dropping repeated points.

    Each source is (its first order key, a function that opens it). A source
    is opened only when the merge reaches its first key, so memory grows with
    the segments that overlap, not with the whole history. A point stored both live and
    archived (after a crash between writing segments and deleting live points)
    has the same (step, timestamp, seq) in both and is yielded once.
    """
    pending = sorted(sources, key=lambda source: source[0])
    heap: list[tuple[OrderKey, int, MetricPoint, Iterator[MetricPoint]]] = []
    counter = itertools.count()
    index = 0
    previous: OrderKey | None = None
    while index < len(pending) or heap:
        while index < len(pending) and (not heap or pending[index][0] <= heap[0][0]):
            iterator = iter(pending[index][1]())
            index += 1
            _push(heap, counter, iterator)
        if not heap:
            continue
        key, _, point, iterator = heapq.heappop(heap)
        _push(heap, counter, iterator)
        if key != previous:
            yield point
        previous = key


def _push(heap: list, counter: Iterator[int], iterator: Iterator[MetricPoint]) -> None:
    point = next(iterator, None)
    if point is not None:
        heapq.heappush(heap, (order_key(point), next(counter), point, iterator))


def _in_bounds(point: MetricPoint, bounds: dict[str, Any]) -> bool:
    if bounds["min_step"] is not None and point.step < bounds["min_step"]:
        return False
    if bounds["max_step"] is not None and point.step > bounds["max_step"]:
        return False
    if bounds["start"] is not None and point.timestamp < bounds["start"]:
        return False
    return bounds["end"] is None or point.timestamp <= bounds["end"]


def _overlaps(descriptor: dict[str, Any], bounds: dict[str, Any]) -> bool:
    if bounds["min_step"] is not None and descriptor["max"][0] < bounds["min_step"]:
        return False
    if bounds["max_step"] is not None and descriptor["min"][0] > bounds["max_step"]:
        return False
    start = bounds["start"]
    if start is not None and descriptor["max_ts"] < to_micros(start):
        return False
    return bounds["end"] is None or descriptor["min_ts"] <= to_micros(bounds["end"])


# ----------------------------------------------------------------------
# the reader the Store uses
# ----------------------------------------------------------------------


class MetricReader:
    """Reads metric histories, latest points and keys, merging archived segments.

    It returns what `MetricRepository` returns, plus the archived points of
    runs tagged with `ARCHIVE_TAG`. Catalogs of recently
    read runs are cached; a run's head is read on every call, so a new
    archiving pass is seen at once.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._catalogs: OrderedDict[tuple[str, str], tuple[Any, list[dict]]] = \
            OrderedDict()

    # -- locations and catalogs -----------------------------------------

    def location_of(self, run_id: str) -> str | None:
        """Return the archive location of a run, or None when it has no archive."""
        try:
            run = self.backend.runs.get(run_id)
        except NotFoundError:
            return None
        return run.tags.get(ARCHIVE_TAG)

    def descriptors(self, run_id: str, location: str) -> list[dict[str, Any]]:
        store = open_location(self.backend, location)
        head = read_head(store, run_id)
        signature = json.dumps(head["generations"], sort_keys=True)
        cache_key = (location, run_id)
        with self._lock:
            cached = self._catalogs.get(cache_key)
            if cached is not None and cached[0] == signature:
                self._catalogs.move_to_end(cache_key)
                return cached[1]
        found = read_descriptors(store, head)
        with self._lock:
            self._catalogs[cache_key] = (signature, found)
            while len(self._catalogs) > CATALOG_CACHE_RUNS:
                self._catalogs.popitem(last=False)
        return found

    # -- the MetricRepository reads -------------------------------------

    def history(self, run_id: str, key: str, *, min_step: int | None = None,
                max_step: int | None = None, start: datetime | None = None,
                end: datetime | None = None) -> Iterator[MetricPoint]:
        bounds = {"min_step": min_step, "max_step": max_step, "start": start,
                  "end": end}
        location = self.location_of(run_id)
        live = self.backend.metrics.history(run_id, key, **bounds)
        if location is None:
            return live
        return self.merged_history(run_id, key, location, live, bounds)

    def merged_history(self, run_id: str, key: str, location: str,
                       live: Iterator[MetricPoint],
                       bounds: dict[str, Any]) -> Iterator[MetricPoint]:
        store = open_location(self.backend, location)
        sources: list[Source] = [((-1,), lambda: live)]
        for descriptor in self.descriptors(run_id, location):
            if descriptor["key"] != key or not _overlaps(descriptor, bounds):
                continue
            sources.append((tuple(descriptor["min"]),
                            _segment_opener(store, run_id, descriptor, bounds)))
        return merge_sources(sources)

    def latest(self, runs: Sequence[Run],
               keys: Sequence[str] | None = None) -> dict[str, dict[str, MetricPoint]]:
        """Return run id -> key -> latest point, like `MetricRepository.latest`."""
        result = self.backend.metrics.latest([run.id for run in runs], keys)
        for run in runs:
            location = run.tags.get(ARCHIVE_TAG)
            if location is None:
                continue
            archived = self._archived_latest(run.id, location, keys)
            if archived:
                merged = result.setdefault(run.id, {})
                for key, point in archived.items():
                    current = merged.get(key)
                    if current is None or order_key(current) < order_key(point):
                        merged[key] = point
        return result

    def latest_of(self, run_id: str,
                  keys: Sequence[str] | None = None) -> dict[str, MetricPoint]:
        """Return metric key -> latest point of one run."""
        try:
            run = self.backend.runs.get(run_id)
        except NotFoundError:
            return self.backend.metrics.latest([run_id], keys).get(run_id, {})
        return self.latest([run], keys).get(run_id, {})

    def keys(self, run_id: str) -> list[str]:
        live = self.backend.metrics.keys(run_id)
        location = self.location_of(run_id)
        if location is None:
            return live
        archived = {d["key"] for d in self.descriptors(run_id, location)}
        return sorted(archived.union(live))

    def _archived_latest(self, run_id: str, location: str,
                         keys: Sequence[str] | None) -> dict[str, MetricPoint]:
        best: dict[str, dict[str, Any]] = {}
        for descriptor in self.descriptors(run_id, location):
            key = descriptor["key"]
            if keys is not None and key not in keys:
                continue
            current = best.get(key)
            if current is None or _order(current["max"]) < _order(descriptor["max"]):
                best[key] = descriptor
        return {key: point_from_record(d["last"]) for key, d in best.items()}


def _order(values: Sequence[Any]) -> OrderKey:
    return (values[0], values[1], values[2])


def _segment_opener(store: SegmentStore, run_id: str, descriptor: dict[str, Any],
                    bounds: dict[str, Any]) -> Callable[[], Iterator[MetricPoint]]:
    def open_segment() -> Iterator[MetricPoint]:
        for point in load_segment(store, run_id, descriptor):
            if _in_bounds(point, bounds):
                yield point
    return open_segment
