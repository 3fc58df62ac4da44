"""Metric histories of the local backend, packed into compressed chunks.

A row of `metric_chunks` holds up to `CHUNK_POINTS` points of one run and
metric, from one appended batch, so a point costs a few bytes of a row
instead of a row of its own. The primary key is (run, metric, first step,
digest of the points' seqs). A retried batch carries the same seqs and steps,
so it rebuilds the same chunks and replaces them, even when its points got new
timestamps. A batch sent again with more or fewer points (an importer
bringing a run forward) forms new chunks. The same transaction removes the
points of its earlier chunks whose seqs it repeats, which the indexed `batch`
column finds. A history read merges the chunks of a metric in step order and
opens a chunk only when the merge reaches its first step, so memory stays
bounded by the chunks whose step ranges overlap.

`metric_latest` keeps the latest point per metric. An append compares its own
latest point with the stored one inside the write transaction, so the row is
right whatever order batches from several processes arrive in.

Chunk layout: `CHUNK_FORMAT` (one byte), then a zlib-compressed body. The
body starts with little-endian arrays of the steps (int64), the timestamps
(int64 microseconds since the epoch) and the values (IEEE 754 doubles, so NaN
payloads, infinities and -0.0 keep their bits). The JSON list of the seqs
follows, then the JSON list of each point's extras, left out when no point
has extras.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import operator
import sqlite3
import struct
import sys
import time
import zlib
from array import array
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Sequence

from mltrail.backend import MetricRepository
from mltrail.clock import from_micros, to_micros
from mltrail.domain import MetricPoint, MetricSeries
from mltrail.errors import BackendUnavailableError

if TYPE_CHECKING:
    from mltrail.backends.local import _Database

CHUNK_FORMAT = 1
CHUNK_POINTS = 4_096
COMPRESSION_LEVEL = 1
_LITTLE_ENDIAN = sys.byteorder == "little"

METRICS_SCHEMA = """
CREATE TABLE IF NOT EXISTS metric_chunks (
    run_id TEXT NOT NULL, key TEXT NOT NULL, first_step INTEGER NOT NULL,
    digest TEXT NOT NULL, first_ts INTEGER NOT NULL, first_seq TEXT NOT NULL,
    last_step INTEGER NOT NULL, last_ts INTEGER NOT NULL, last_seq TEXT NOT NULL,
    count INTEGER NOT NULL, batch TEXT NOT NULL,
    written INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (run_id, key, first_step, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metric_chunks_run_batch ON metric_chunks (run_id, batch);
CREATE TABLE IF NOT EXISTS metric_latest (
    run_id TEXT NOT NULL, key TEXT NOT NULL, seq TEXT NOT NULL,
    step INTEGER NOT NULL, ts INTEGER NOT NULL, value REAL, bits TEXT, extra TEXT,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
"""

_UPSERT_LATEST = (
    "INSERT INTO metric_latest (run_id, key, seq, step, ts, value, bits, extra) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, key) DO UPDATE SET "
    "seq = excluded.seq, step = excluded.step, ts = excluded.ts, "
    "value = excluded.value, bits = excluded.bits, extra = excluded.extra "
    # A retried point replaces itself; otherwise the later point in history
    # order (step, timestamp, seq) wins.
    "WHERE excluded.seq = metric_latest.seq OR (excluded.step, excluded.ts, "
    "excluded.seq) > (metric_latest.step, metric_latest.ts, metric_latest.seq)"
)


def float_row(value: float) -> tuple[float | None, str | None]:
    """Return the (value, bits) columns of a float: bits for NaN, infinities and -0.0."""
    if value != value or value in (math.inf, -math.inf) or (
            value == 0.0 and math.copysign(1.0, value) < 0):
        return None, struct.pack(">d", value).hex()
    return value, None


def float_value(value: float | None, bits: str | None) -> float:
    if bits is not None:
        return struct.unpack(">d", bytes.fromhex(bits))[0]
    return float(value)


def row_point(run_id: str, key: str, row: Sequence[Any]) -> MetricPoint:
    """Return the point of a (seq, step, ts, value, bits, extra) row."""
    seq, step, ts, value, bits, extra = row
    point = MetricPoint(run_id=run_id, key=key, value=float_value(value, bits), step=step,
                        timestamp=from_micros(ts), seq=seq)
    return point.with_extras(json.loads(extra)) if extra else point


_INSERT_CHUNK = (
    "INSERT OR REPLACE INTO metric_chunks (run_id, key, first_step, digest, first_ts, "
    "first_seq, last_step, last_ts, last_seq, count, batch, written, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


class Chunk(NamedTuple):
    """One decoded chunk: parallel columns, sorted in history order."""

    steps: array
    stamps: array
    values: array
    seqs: list[str]
    extras: list[dict[str, Any] | None] | None


def _to_little_endian(column: array) -> bytes:
    if not _LITTLE_ENDIAN:
        column = array(column.typecode, column)
        column.byteswap()
    return column.tobytes()


def _from_little_endian(typecode: str, data: bytes) -> array:
    column = array(typecode)
    column.frombytes(data)
    if not _LITTLE_ENDIAN:
        column.byteswap()
    return column


def encode_chunk(chunk: Chunk) -> bytes:
    """Return the stored bytes of a chunk; see the module docstring for the layout."""
    seqs = json.dumps(chunk.seqs, ensure_ascii=False).encode("utf-8")
    extras = b"" if chunk.extras is None else json.dumps(
        chunk.extras, ensure_ascii=False, separators=(",", ":"),
        allow_nan=False).encode("utf-8")
    body = b"".join((
        _to_little_endian(chunk.steps), _to_little_endian(chunk.stamps),
        _to_little_endian(chunk.values), len(seqs).to_bytes(8, "little"), seqs, extras,
    ))
    return bytes((CHUNK_FORMAT,)) + zlib.compress(body, COMPRESSION_LEVEL)


def decode_chunk(data: bytes, count: int) -> Chunk:
    """Return the columns of a stored chunk of `count` points."""
    if not data or data[0] != CHUNK_FORMAT:
        raise BackendUnavailableError(
            f"metric chunk has format {data[:1].hex() or 'none'}, expected "
            f"{CHUNK_FORMAT:02x}; a newer mltrail wrote this store", data[:1].hex())
    try:
        body = zlib.decompress(data[1:])
    except zlib.error as error:
        raise BackendUnavailableError(f"metric chunk is damaged: {error}", count) from error
    width = 8 * count
    steps = _from_little_endian("q", body[:width])
    stamps = _from_little_endian("q", body[width:2 * width])
    values = _from_little_endian("d", body[2 * width:3 * width])
    offset = 3 * width
    seq_bytes = int.from_bytes(body[offset:offset + 8], "little")
    offset += 8
    seqs = json.loads(body[offset:offset + seq_bytes])
    rest = body[offset + seq_bytes:]
    extras = json.loads(rest) if rest else None
    if not len(steps) == len(stamps) == len(values) == len(seqs) == count:
        raise BackendUnavailableError(
            f"metric chunk is damaged: expected {count} points", count)
    return Chunk(steps, stamps, values, seqs, extras)


_STEP_SEQ = attrgetter("step", "seq")
_TIMESTAMP = attrgetter("timestamp")
_VALUE = attrgetter("value")
_SEQ = attrgetter("seq")
_STEP = attrgetter("step")
_KEY = attrgetter("key")
_OPTIONAL = attrgetter(*MetricPoint.optional_fields)
_NO_OPTIONAL = (None,) * len(MetricPoint.optional_fields)


def pack_points(points: Sequence[MetricPoint]) -> list[tuple[str, list[Chunk]]]:
    """Group points by metric key and split each group into chunks.

    Chunk boundaries follow (step, seq) order, which a retry with new
    timestamps keeps, so a retried batch rebuilds the same chunks. Each chunk is
    then sorted in history order (step, timestamp, seq). The per-point work is
    done with `operator` getters and `map`, because this runs for every point
    logged.
    """
    keys = set(map(_KEY, points))
    if len(keys) == 1:
        groups = {keys.pop(): list(points)}
    else:
        groups = {}
        for point in points:
            group = groups.get(point.key)
            if group is None:
                groups[point.key] = [point]
            else:
                group.append(point)
    packed = []
    for key, group in groups.items():
        order = list(map(_STEP_SEQ, group))
        if not all(map(operator.le, order, order[1:])):
            group.sort(key=_STEP_SEQ)
        chunks = [_chunk(group[start:start + CHUNK_POINTS])
                  for start in range(0, len(group), CHUNK_POINTS)]
        packed.append((key, chunks))
    return packed


def _chunk(points: list[MetricPoint]) -> Chunk:
    stamp_objects = list(map(_TIMESTAMP, points))
    # Points often share one timestamp object (a series, or `log_metrics`), so
    # each distinct time is converted to microseconds once.
    micros_of = {stamp: to_micros(stamp) for stamp in set(stamp_objects)}
    stamps = list(map(micros_of.__getitem__, stamp_objects))
    steps = list(map(_STEP, points))
    seqs = list(map(_SEQ, points))
    order = list(zip(steps, stamps, seqs))
    if not all(map(operator.le, order, order[1:])):
        ranks = sorted(range(len(points)), key=order.__getitem__)
        points = [points[i] for i in ranks]
        stamps = [stamps[i] for i in ranks]
        seqs = [seqs[i] for i in ranks]
        steps = [steps[i] for i in ranks]
    extras = None
    if any(map(_NO_OPTIONAL.__ne__, map(_OPTIONAL, points))):
        extras = [point.extras() for point in points]
    return Chunk(array("q", steps), array("q", stamps), array("d", map(_VALUE, points)),
                 seqs, extras)


def pack_series(series: MetricSeries) -> list[Chunk]:
    """Split a series into chunks without building a `MetricPoint` per value.

    When (step, timestamp) never decreases along the series, its points are
    already in (step, seq) and history order, because seqs grow with the
    index, so its chunks are slices of its columns. Any other series goes
    through `pack_points`, which sorts; both give the same chunks.
    """
    steps, stamps = series.steps, series.stamps
    order = list(zip(steps, stamps))
    if not all(map(operator.le, order, order[1:])):
        return pack_points(series.points())[0][1]
    chunks = []
    for start in range(0, len(steps), CHUNK_POINTS):
        end = start + CHUNK_POINTS
        chunks.append(Chunk(array("q", steps[start:end]), array("q", stamps[start:end]),
                            array("d", series.values[start:end]), series.seqs[start:end],
                            None))
    return chunks


def chunk_digest(chunk: Chunk) -> str:
    """Return the chunk's identity among chunks of one metric with the same first step."""
    seqs = "\x00".join(sorted(chunk.seqs)).encode("utf-8")
    return hashlib.blake2b(seqs, digest_size=12).hexdigest()


def latest_row(run_id: str, key: str, chunk: Chunk) -> tuple:
    """Return the metric_latest row of the last point of a chunk in history order."""
    value, bits = float_row(chunk.values[-1])
    extra = None
    if chunk.extras is not None and chunk.extras[-1] is not None:
        extra = json.dumps(chunk.extras[-1], separators=(",", ":"), ensure_ascii=False,
                           allow_nan=False)
    return (run_id, key, chunk.seqs[-1], chunk.steps[-1], chunk.stamps[-1], value, bits,
            extra)


def batch_of(chunk: Chunk) -> str:
    """Return the batch id that every seq of the chunk starts with, or "" if none.

    The core writes seqs as `BATCH:INDEX`. Strings between two that share a
    prefix share it too, so checking the least and greatest seq is enough.
    """
    low, high = min(chunk.seqs), max(chunk.seqs)
    batch, separator, _ = low.rpartition(":")
    if not separator or not high.startswith(batch + ":"):
        return ""
    return batch


def _chunk_row(run_id: str, key: str, chunk: Chunk, written: int) -> tuple:
    return (run_id, key, chunk.steps[0], chunk_digest(chunk), chunk.stamps[0],
            chunk.seqs[0], chunk.steps[-1], chunk.stamps[-1], chunk.seqs[-1],
            len(chunk.seqs), batch_of(chunk), written, encode_chunk(chunk))


def write_chunks(conn: sqlite3.Connection, run_id: str,
                 packed: list[tuple[str, list[Chunk]]]) -> None:
    """Write packed chunks and update the latest points, inside the caller's transaction.

    A batch sent again replaces the points of its earlier attempt that carry
    the same seqs, also when it has more or fewer points than before or new
    timestamps. The earlier attempt's other points stay, and the latest point
    of a metric touched by such a retry is recomputed from its chunks.
    """
    written = time.time_ns()
    # A flush can pack one key twice: its buffered points and a series.
    by_key: dict[str, list[Chunk]] = {}
    for key, chunks in packed:
        by_key.setdefault(key, []).extend(chunks)
    rows = {key: [_chunk_row(run_id, key, chunk, written) for chunk in chunks]
            for key, chunks in by_key.items()}
    retried = _supersede(conn, run_id, by_key, rows, written)
    conn.executemany(_INSERT_CHUNK, [row for key_rows in rows.values() for row in key_rows])
    conn.executemany(_UPSERT_LATEST, [latest_row(run_id, key, _latest_chunk(chunks))
                                      for key, chunks in by_key.items()
                                      if key not in retried])
    for key in retried:
        _recompute_latest(conn, run_id, key)


def _latest_chunk(chunks: Sequence[Chunk]) -> Chunk:
    """Return the chunk whose last point is the latest in history order."""
    return max(chunks, key=lambda chunk: (chunk.steps[-1], chunk.stamps[-1],
                                          chunk.seqs[-1]))


def _supersede(conn: sqlite3.Connection, run_id: str, packed: dict[str, list[Chunk]],
               rows: dict[str, list[tuple]], written: int) -> set[str]:
    """Remove points that the new chunks' batches stored before; return their keys.

    One indexed query per batch id, usually one per append, finds the chunks
    that earlier attempts of the same batches stored.
    """
    batches = {row[10] for key_rows in rows.values() for row in key_rows if row[10]}
    stored = []
    for batch in batches:
        stored += conn.execute(
            "SELECT key, first_step, digest, count, data FROM metric_chunks "
            "WHERE run_id = ? AND batch = ?", [run_id, batch]).fetchall()
    retried = set()
    for key, first_step, digest, count, data in stored:
        if key not in packed:
            continue
        retried.add(key)
        if any((row[2], row[3]) == (first_step, digest) for row in rows[key]):
            # The same chunk again: the insert replaces it.
            continue
        seqs = {seq for chunk in packed[key] for seq in chunk.seqs}
        old = decode_chunk(data, count)
        keep = [i for i, seq in enumerate(old.seqs) if seq not in seqs]
        conn.execute("DELETE FROM metric_chunks WHERE run_id = ? AND key = ? AND "
                     "first_step = ? AND digest = ?", [run_id, key, first_step, digest])
        if keep:
            rest = Chunk(array("q", [old.steps[i] for i in keep]),
                         array("q", [old.stamps[i] for i in keep]),
                         array("d", [old.values[i] for i in keep]),
                         [old.seqs[i] for i in keep],
                         None if old.extras is None else [old.extras[i] for i in keep])
            conn.execute(_INSERT_CHUNK, _chunk_row(run_id, key, rest, written))
    return retried


def _recompute_latest(conn: sqlite3.Connection, run_id: str, key: str) -> None:
    """Rewrite the latest point of a metric from the chunk whose last point is latest.

    A chunk is sorted in history order, so its last point is its latest, and
    the columns `last_step`, `last_ts` and `last_seq` find the chunk.
    """
    found = conn.execute(
        "SELECT data, count FROM metric_chunks WHERE run_id = ? AND key = ? "
        "ORDER BY last_step DESC, last_ts DESC, last_seq DESC LIMIT 1",
        [run_id, key]).fetchone()
    if found is None:
        conn.execute("DELETE FROM metric_latest WHERE run_id = ? AND key = ?",
                     [run_id, key])
        return
    conn.execute("INSERT OR REPLACE INTO metric_latest (run_id, key, seq, step, ts, value, "
                 "bits, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 latest_row(run_id, key, decode_chunk(*found)))


class _ChunkMeta(NamedTuple):
    first: tuple[int, int, str]
    digest: str
    last: tuple[int, int, str]
    count: int
    written: int


class LocalMetricRepository(MetricRepository):
    def __init__(self, db: _Database) -> None:
        self.db = db

    def append(self, run_id: str, points: Sequence[MetricPoint]) -> None:
        if not points:
            return
        packed = pack_points(points)
        with self.db.write() as conn:
            write_chunks(conn, run_id, packed)

    def append_series(self, run_id: str, series: Sequence[MetricSeries]) -> None:
        packed = [(one.key, pack_series(one)) for one in series if len(one)]
        if not packed:
            return
        with self.db.write() as conn:
            write_chunks(conn, run_id, packed)

    def history(self, run_id, key, *, min_step=None, max_step=None, start=None,
                end=None) -> Iterator[MetricPoint]:
        sql = ("SELECT first_step, first_ts, first_seq, digest, last_step, last_ts, "
               "last_seq, count, written FROM metric_chunks WHERE run_id = ? AND key = ?")
        params: list[Any] = [run_id, key]
        if min_step is not None:
            sql += " AND last_step >= ?"
            params.append(min_step)
        if max_step is not None:
            sql += " AND first_step <= ?"
            params.append(max_step)
        sql += " ORDER BY first_step, first_ts, first_seq, digest"
        metas = [_ChunkMeta(row[0:3], row[3], row[4:7], row[7], row[8])
                 for row in self.db.query(sql, params)]
        low = None if start is None else to_micros(start)
        high = None if end is None else to_micros(end)
        for step, stamp, seq, value, extra in self._merged(run_id, key, metas):
            if min_step is not None and step < min_step:
                continue
            if max_step is not None and step > max_step:
                break
            if low is not None and stamp < low:
                continue
            if high is not None and stamp > high:
                continue
            point = MetricPoint(run_id=run_id, key=key, value=value, step=step,
                                timestamp=from_micros(stamp), seq=seq)
            yield point.with_extras(extra) if extra else point

    def _load(self, run_id: str, key: str, meta: _ChunkMeta) -> Iterator[tuple]:
        rows = self.db.query(
            "SELECT data, count FROM metric_chunks WHERE run_id = ? AND key = ? AND "
            "first_step = ? AND digest = ?", [run_id, key, meta.first[0], meta.digest])
        if not rows:
            # Replaced or deleted since the chunk list was read.
            return iter(())
        chunk = decode_chunk(*rows[0])
        extras = chunk.extras or [None] * len(chunk.seqs)
        return zip(chunk.steps, chunk.stamps, chunk.seqs, chunk.values, extras)

    def _merged(self, run_id: str, key: str, metas: list[_ChunkMeta]) -> Iterator[tuple]:
        """Yield (step, timestamp, seq, value, extra) of every chunk in history order.

        A chunk contains no point before its first one in history order, so it
        is opened only when the smallest point waiting in the merge reaches
        that first point. Among
        copies of one (step, timestamp, seq), the most recently written chunk's
        comes first and the others are dropped.
        """
        heap: list[tuple] = []
        waiting = 0
        previous = None
        while True:
            while waiting < len(metas) and (
                    not heap or metas[waiting].first <= heap[0][0]):
                entries = self._load(run_id, key, metas[waiting])
                first = next(entries, None)
                if first is not None:
                    heapq.heappush(heap, (first[:3], -metas[waiting].written, waiting,
                                          first, entries))
                waiting += 1
            if not heap:
                return
            if len(heap) == 1 and (waiting == len(metas)
                                   or metas[waiting].first > metas[heap[0][2]].last):
                # No other chunk overlaps this one, so stream it straight through.
                order, _, _, entry, entries = heap.pop()
                if order != previous:
                    yield entry
                yield from entries
                previous = None
                continue
            order, newness, index, entry, entries = heap[0]
            if order != previous:
                yield entry
                previous = order
            following = next(entries, None)
            if following is None:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (following[:3], newness, index, following, entries))

    def latest(self, run_ids, keys=None) -> dict[str, dict[str, MetricPoint]]:
        result: dict[str, dict[str, MetricPoint]] = {}
        ids = list(dict.fromkeys(run_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            sql = ("SELECT run_id, key, seq, step, ts, value, bits, extra FROM "
                   f"metric_latest WHERE run_id IN ({','.join('?' * len(chunk))})")
            params = list(chunk)
            if keys is not None:
                sql += f" AND key IN ({','.join('?' * len(keys))})"
                params += list(keys)
            for row in self.db.query(sql, params):
                result.setdefault(row[0], {})[row[1]] = row_point(row[0], row[1], row[2:])
        return result

    def keys(self, run_id: str) -> list[str]:
        rows = self.db.query("SELECT key FROM metric_latest WHERE run_id = ? ORDER BY key",
                             [run_id])
        return [row[0] for row in rows]

    def delete_run(self, run_id: str) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM metric_chunks WHERE run_id = ?", [run_id])
            conn.execute("DELETE FROM metric_latest WHERE run_id = ?", [run_id])

    def runs_with_metrics(self) -> Iterator[str]:
        rows = self.db.query("SELECT DISTINCT run_id FROM metric_latest ORDER BY run_id")
        for (run_id,) in rows:
            yield run_id


def migrate_point_rows(conn: sqlite3.Connection) -> int:
    """Pack the rows of a `metric_points` table, the layout before chunks, and drop it.

    Runs inside the caller's write transaction and returns the points moved.
    `metric_latest` keeps its layout, so it is left as it is.
    """
    cursor = conn.execute(
        "SELECT run_id, key, seq, step, ts, value, bits, extra FROM metric_points "
        "ORDER BY run_id, key, step, ts, seq")
    moved = 0
    group: list[MetricPoint] = []
    current = None
    for row in cursor:
        if (row[0], row[1]) != current or len(group) >= CHUNK_POINTS:
            _write_group(conn, group)
            group = []
            current = (row[0], row[1])
        group.append(row_point(row[0], row[1], row[2:]))
        moved += 1
    _write_group(conn, group)
    conn.execute("DROP TABLE metric_points")
    return moved


def _write_group(conn: sqlite3.Connection, points: list[MetricPoint]) -> None:
    if not points:
        return
    chunk = _chunk(points)
    conn.execute(_INSERT_CHUNK, _chunk_row(points[0].run_id, points[0].key, chunk,
                                           time.time_ns()))
