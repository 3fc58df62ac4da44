"""Metric histories as sorted JSON Lines chunk files, and a latest-values file per run.

Each `append` writes one chunk file per metric key in the batch, with that
key's points sorted by (step, timestamp, seq). A line looks like

    {"seq":"01HX...:000003","step":3,"ts":1715949045123456,"value":"3fe8000000000000"}

`ts` is microseconds since the Unix epoch and `value` is the 16 hex digits of
the float's IEEE 754 bits, so NaN payloads, infinities and -0.0 survive
exactly. Optional fields (unit, confidence interval, drift ...) go under
`extra` in the core's encoded form.

A chunk file's name is a digest of its points' seqs, so a retried batch
replaces its own files instead of adding copies. `history` merges the sorted
chunk files with a heap and keeps one line per file in memory. When a metric
has more than MAX_CHUNK_FILES files, `append` merges the smallest ones into
one, which bounds the number of files a reader opens. Readers drop repeated
(step, timestamp, seq) keys, which covers a batch that is retried after its
first copy was merged.
"""

from __future__ import annotations

import hashlib
import heapq
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from mltrail.backend import MetricRepository
from mltrail.clock import from_micros, to_micros
from mltrail.codec import bits_to_float, float_to_bits
from mltrail.domain import MetricPoint

from mltrail_jsondir.files import JsonFiles, dumps
from mltrail_jsondir.layout import Layout

# A reader opens every chunk file of a metric at once. Compaction keeps that
# number at most MAX_CHUNK_FILES by merging the COMPACTION_FAN_IN smallest
# files, so each point is rewritten about log16(history length) times.
MAX_CHUNK_FILES = 32
COMPACTION_FAN_IN = 16


def point_line(point: MetricPoint) -> dict[str, Any]:
    """Return the JSON Lines form of a point, without its run id and key."""
    line = {
        "seq": point.seq,
        "step": point.step,
        "ts": to_micros(point.timestamp),
        "value": float_to_bits(point.value),
    }
    extra = point.extras()
    if extra is not None:
        line["extra"] = extra
    return line


def point_from_line(run_id: str, key: str, line: dict[str, Any]) -> MetricPoint:
    point = MetricPoint(run_id=run_id, key=key, value=bits_to_float(line["value"]),
                        step=line["step"], timestamp=from_micros(line["ts"]),
                        seq=line["seq"])
    return point.with_extras(line.get("extra"))


def history_order(line: dict[str, Any]) -> tuple[int, int, str]:
    return (line["step"], line["ts"], line["seq"])


def _without_repeats(lines: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Drop lines whose order key equals the previous line's (the same point again)."""
    previous = None
    for line in lines:
        order = history_order(line)
        if order != previous:
            yield line
        previous = order


def _in_step_range(lines: Iterable[dict[str, Any]], min_step: int | None,
                   max_step: int | None) -> Iterator[dict[str, Any]]:
    """Yield the lines of one sorted file whose step is in range, stopping past it."""
    for line in lines:
        if max_step is not None and line["step"] > max_step:
            return
        if min_step is None or line["step"] >= min_step:
            yield line


class JsonDirMetricRepository(MetricRepository):
    def __init__(self, files: JsonFiles, layout: Layout) -> None:
        self.files = files
        self.layout = layout

    def append(self, run_id: str, points: Sequence[MetricPoint]) -> None:
        if not points:
            return
        by_key: dict[str, list[dict[str, Any]]] = {}
        for point in points:
            by_key.setdefault(point.key, []).append(point_line(point))

        # Writing and fsyncing the chunk files is the slow part, so it happens
        # before taking the lock. If it fails, nothing has become visible.
        staged = []
        try:
            for key, lines in by_key.items():
                lines.sort(key=history_order)
                chunk = (dumps(line) + "\n" for line in lines)
                path = self._chunk_path(run_id, key, lines)
                staged.append((self.files.stage(path, chunk), path))
        except BaseException:
            for temp, _ in staged:
                self.files.discard(temp)
            raise

        # NOTE: the renames below are atomic one by one, not together. If the
        # process dies halfway, part of the batch is visible until the caller
        # retries it with the same batch id.
        with self.files.lock(self.layout.metric_lock(run_id)):
            for temp, path in staged:
                self.files.commit(temp, path)
            self._update_latest(run_id, by_key)
            for key in by_key:
                self._compact(run_id, key)

    def _chunk_path(self, run_id: str, key: str, lines: list[dict[str, Any]]) -> Path:
        seqs = "\n".join(line["seq"] for line in lines)
        digest = hashlib.sha256(seqs.encode("utf-8")).hexdigest()[:32]
        return self.layout.series(run_id, key) / f"b-{digest}.jsonl"

    def _update_latest(self, run_id: str,
                       by_key: dict[str, list[dict[str, Any]]]) -> None:
        """Replace each key's latest point when the batch has a greater one.

        The caller holds the run's metric lock, which makes the read, compare
        and write one step for other processes.
        """
        path = self.layout.latest(run_id)
        document = self.files.read(path) or {"run_id": run_id, "metrics": {}}
        latest = document["metrics"]
        for key, lines in by_key.items():
            best = lines[-1]
            current = latest.get(key)
            if current is None or history_order(best) >= history_order(current):
                latest[key] = best
        self.files.write(path, document)

    def _compact(self, run_id: str, key: str) -> None:
        """Merge the smallest chunk files of a metric when it has too many.

        The caller holds the run's metric lock, so no reader is opening files.
        """
        folder = self.layout.series(run_id, key)
        names = self.files.names(folder, ".jsonl")
        if len(names) <= MAX_CHUNK_FILES:
            return
        chosen = sorted(names, key=lambda name: self.files.size(folder / name))
        chosen = chosen[:COMPACTION_FAN_IN]
        handles = [self.files.open_lines(folder / name) for name in chosen]
        try:
            streams = [self.files.parse_lines(handle) for handle in handles]
            merged = _without_repeats(heapq.merge(*streams, key=history_order))
            target = folder / f"c-{uuid.uuid4().hex}.jsonl"
            temp = self.files.stage(target, (dumps(line) + "\n" for line in merged))
        finally:
            for handle in handles:
                handle.close()
        # The merged file is in place before its inputs go, so a crash in
        # between leaves repeated points, which readers drop, and loses none.
        self.files.commit(temp, target)
        for name in chosen:
            self.files.remove(folder / name)

    def history(self, run_id, key, *, min_step=None, max_step=None, start=None,
                end=None) -> Iterator[MetricPoint]:
        handles = self._open_chunks(run_id, key)
        try:
            streams = [
                _in_step_range(self.files.parse_lines(handle), min_step, max_step)
                for handle in handles
            ]
            low = None if start is None else to_micros(start)
            high = None if end is None else to_micros(end)
            for line in _without_repeats(heapq.merge(*streams, key=history_order)):
                if low is not None and line["ts"] < low:
                    continue
                if high is not None and line["ts"] > high:
                    continue
                yield point_from_line(run_id, key, line)
        finally:
            for handle in handles:
                handle.close()

    def _open_chunks(self, run_id: str, key: str) -> list:
        """Open every chunk file of a metric under a shared lock.

        Compaction deletes files only under the exclusive lock, so the set
        opened here is complete. An open file stays readable after it is
        deleted, so reading continues without the lock.
        """
        folder = self.layout.series(run_id, key)
        handles = []
        with self.files.lock(self.layout.metric_lock(run_id), shared=True):
            try:
                for name in self.files.names(folder, ".jsonl"):
                    handles.append(self.files.open_lines(folder / name))
            except BaseException:
                for handle in handles:
                    handle.close()
                raise
        return handles

    def latest(self, run_ids, keys=None) -> dict[str, dict[str, MetricPoint]]:
        result: dict[str, dict[str, MetricPoint]] = {}
        for run_id in dict.fromkeys(run_ids):
            document = self.files.read(self.layout.latest(run_id))
            if document is None:
                continue
            points = {key: point_from_line(run_id, key, line)
                      for key, line in document["metrics"].items()
                      if keys is None or key in keys}
            if points:
                result[run_id] = points
        return result

    def keys(self, run_id: str) -> list[str]:
        document = self.files.read(self.layout.latest(run_id))
        return [] if document is None else sorted(document["metrics"])

    def delete_run(self, run_id: str) -> None:
        with self.files.lock(self.layout.metric_lock(run_id)):
            self.files.remove_tree(self.layout.run_metrics(run_id))

    def runs_with_metrics(self) -> Iterator[str]:
        folder = self.layout.root / "metrics"
        run_ids = []
        for name in self.files.names(folder):
            document = self.files.read(folder / name / "latest.json")
            if document is not None and document["metrics"]:
                run_ids.append(document["run_id"])
        yield from sorted(run_ids)
