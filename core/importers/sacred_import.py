"""Import Sacred FileStorageObserver folders: `<basedir>/<run id>/run.json` and friends.

Each run folder contains `run.json` (experiment, host, status and times),
`config.json`, and optionally `metrics.json`, `info.json` and `cout.txt`. The
observer serialises with jsonpickle and Python's json module, so files may
contain bare `NaN` and `Infinity` tokens and `py/object` wrappers. Both are
read as plain data, and no object is constructed.

Sacred 0.7 and 0.8 write `datetime.utcnow().isoformat()`: UTC times without an
offset. They are read as UTC; a time that names an offset keeps it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mltrail import codec
from mltrail.clock import isoformat, utcnow
from mltrail.domain import MetricPoint, RunStatus
from mltrail.errors import InvalidInputError
from mltrail.importers.source import SourceTree
from mltrail.importers.values import derive_id, parse_time
from mltrail.importers.writer import ImportWriter

FORMAT = "sacred"
RUN_FILE = "run.json"
RESERVED_FOLDERS = frozenset({"_sources", "_resources"})

STATUSES = {
    "QUEUED": RunStatus.PENDING,
    "RUNNING": RunStatus.RUNNING,
    "COMPLETED": RunStatus.COMPLETED,
    "FAILED": RunStatus.FAILED,
    "INTERRUPTED": RunStatus.KILLED,
    "TIMEOUT": RunStatus.KILLED,
}

# A RUNNING run whose last heartbeat is older than this has died without
# telling Sacred (a killed process, a lost machine). Sacred beats every 10 s
# by default; the threshold is the larger of these two bounds.
STALE_AFTER = timedelta(minutes=10)
STALE_BEATS = 20
DEFAULT_BEAT_SECONDS = 10.0

# Characters of a failure trace kept in the run's error; the end of a trace
# names the exception, so a longer one loses its start.
MAX_TRACE_CHARS = 60_000


def import_sacred(tree: SourceTree, writer: ImportWriter) -> None:
    folders = _run_folders(tree)
    writer.progress.start("runs", len(folders))
    for folder in folders:
        reference = tree.relative(folder)
        with writer.guard("run", reference):
            SacredRun(tree, writer, folder, reference).write()
        writer.progress.advance(reference)


def _run_folders(tree: SourceTree) -> list[Path]:
    if tree.is_file(tree.root / RUN_FILE):
        return [tree.root]
    folders = [
        p for p in tree.subdirectories(tree.root) if p.name not in RESERVED_FOLDERS
    ]
    found = [p for p in folders if tree.is_file(p / RUN_FILE)]
    for folder in folders:
        if folder not in found:
            tree.summary.skip("run", tree.relative(folder), "folder has no run.json")
    return sorted(
        found,
        key=lambda p: (
            not p.name.isdigit(),
            int(p.name) if p.name.isdigit() else 0,
            p.name,
        ),
    )


def load_json(tree: SourceTree, path: Path) -> Any:
    """Parse a JSON file, accepting the NaN, Infinity and -Infinity Python writes."""
    try:
        return json.loads(tree.read_text(path))
    except ValueError as error:
        raise InvalidInputError(
            f"{tree.relative(path)!r} is not valid JSON: {error}", str(path)
        ) from None


class SacredRun:
    """One run folder, read and written as one mltrail run."""

    def __init__(
        self, tree: SourceTree, writer: ImportWriter, folder: Path, reference: str
    ) -> None:
        self.tree, self.writer, self.folder, self.reference = (
            tree,
            writer,
            folder,
            reference,
        )
        self.summary = writer.summary
        self.entry = load_json(tree, folder / RUN_FILE)
        if not isinstance(self.entry, dict):
            raise InvalidInputError("run.json does not hold an object", reference)

    def _optional_json(self, name: str) -> Any:
        path = self.folder / name
        return load_json(self.tree, path) if self.tree.is_file(path) else None

    def write(self) -> None:
        entry = self.entry
        experiment = entry.get("experiment") or {}
        experiment_name = experiment.get("name") or self.tree.root.name
        start = self._time(entry.get("start_time"), "start_time")
        queued = self._time((entry.get("meta") or {}).get("queue_time"), "queue_time")
        created = start or queued or self.tree.modified_at(self.folder / RUN_FILE)

        experiment_id = self.writer.experiment(
            id=derive_id("sacred-exp", experiment_name),
            name=experiment_name,
            reference=self.reference,
            tags=self.writer.source_tags(experiment_name),
            created_at=created,
        )
        if experiment_id is None:
            return

        status, end, error = self._status(start)
        config = self._optional_json("config.json") or {}
        source_id = self.folder.name
        result = self.writer.run(
            id=derive_id("sacred-run", experiment_name, source_id, _started(entry)),
            experiment_id=experiment_id,
            name=f"{experiment_name}/{source_id}",
            status=status,
            reference=self.reference,
            created_at=created,
            start_time=start,
            end_time=end,
            params=config if isinstance(config, dict) else {"config": config},
            tags=self._tags(source_id),
            environment=self._environment(),
            seeds=_seeds(config),
            code_version=_code_version(experiment),
            artifact_uris=self._artifacts(),
            error=error,
        )

        if result is not None:
            self._write_metrics(*result)

    def _time(self, value: Any, what: str) -> datetime | None:
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            # A queued run's meta may contain a jsonpickled datetime, whose state is
            # a base64 pickle; reading it would mean unpickling, so it is left out.
            self.summary.note(
                "run", self.reference, f"{what} is stored as a Python object; not read"
            )
            return None
        return parse_time(value, f"{what} in {self.reference}")

    # ------------------------------------------------------------------
    # status, times and failure
    # ------------------------------------------------------------------

    def _status(
        self, start: datetime | None
    ) -> tuple[RunStatus, datetime | None, dict[str, Any] | None]:
        entry = self.entry
        source_status = str(entry.get("status") or "").upper()
        stop = self._time(entry.get("stop_time"), "stop_time")
        if source_status not in STATUSES:
            self.summary.note(
                "run",
                self.reference,
                f"status {entry.get('status')!r} is not one Sacred writes "
                "itself; imported as killed, as a custom interrupt",
            )
            return RunStatus.KILLED, stop, None
        status = STATUSES[source_status]
        if status == RunStatus.FAILED:
            return status, stop, _failure(entry.get("fail_trace"))
        if status == RunStatus.RUNNING:
            return self._running(start)
        return status, stop, None

    def _running(
        self, start: datetime | None
    ) -> tuple[RunStatus, datetime | None, dict[str, Any] | None]:
        """Return a RUNNING run as running, or as failed if its heartbeat is stale."""
        beat = self._time(self.entry.get("heartbeat"), "heartbeat") or start
        if beat is None:
            return RunStatus.RUNNING, None, None
        options = (self.entry.get("meta") or {}).get("options") or {}
        interval = _number(options.get("--beat-interval")) or DEFAULT_BEAT_SECONDS
        limit = max(STALE_AFTER, timedelta(seconds=STALE_BEATS * interval))
        if utcnow() - beat <= limit:
            return RunStatus.RUNNING, None, None
        self.summary.note(
            "run",
            self.reference,
            "RUNNING in Sacred but its last "
            "heartbeat is stale; imported as failed at that heartbeat",
        )
        return (
            RunStatus.FAILED,
            beat,
            {
                "type": "StaleHeartbeat",
                "message": f"the run sent no heartbeat after {isoformat(beat)} "
                "while Sacred recorded it as RUNNING",
            },
        )

    # ------------------------------------------------------------------
    # tags, environment, artifacts
    # ------------------------------------------------------------------

    def _tags(self, source_id: str) -> dict[str, Any]:
        entry = self.entry
        meta = entry.get("meta") or {}
        tags: dict[str, Any] = {
            "sacred.command": entry.get("command") or meta.get("command"),
            "sacred.status": entry.get("status"),
            "sacred.heartbeat": entry.get("heartbeat"),
            "sacred.comment": meta.get("comment"),
        }
        tags = {k: str(v) for k, v in tags.items() if v not in (None, "")}
        if meta.get("options"):
            tags["sacred.options"] = codec.dumps(
                self.writer.plain(meta["options"], "run", self.reference)
            )
        if "result" in entry:
            tags["sacred.result"] = codec.dumps(
                self.writer.plain(entry["result"], "run", self.reference)
            )
        info = self._optional_json("info.json")
        if info:
            tags["sacred.info"] = codec.dumps(
                self.writer.plain(info, "run", self.reference)
            )
        return {**tags, **self.writer.source_tags(source_id)}

    def _environment(self) -> dict[str, Any]:
        host = self.entry.get("host") or {}
        environment: dict[str, Any] = {"host": host}
        if host.get("python_version"):
            environment["python"] = host["python_version"]
        os_info = host.get("os")
        if isinstance(os_info, list) and len(os_info) == 2:
            environment["platform"] = os_info[1]
        hardware = {k: host[k] for k in ("cpu", "gpus") if host.get(k) is not None}
        if hardware:
            environment["hardware"] = hardware
        packages = _packages((self.entry.get("experiment") or {}).get("dependencies"))
        if packages:
            environment["packages"] = packages
        return environment

    def _artifacts(self) -> dict[str, str]:
        """Return artifact name -> file URI; the files themselves are not read."""
        uris: dict[str, str] = {}
        entry = self.entry
        for name in entry.get("artifacts") or []:
            uris[f"artifact:{name}"] = (self.folder / str(name)).as_uri()
        for item in entry.get("resources") or []:
            if isinstance(item, list) and len(item) == 2:
                uris[f"resource:{item[0]}"] = _uri(self.tree.root, str(item[1]))
        for item in (entry.get("experiment") or {}).get("sources") or []:
            if isinstance(item, list) and len(item) == 2:
                uris[f"source:{item[0]}"] = _uri(self.tree.root, str(item[1]))
        if self.tree.is_file(self.folder / "cout.txt"):
            uris["cout.txt"] = (self.folder / "cout.txt").as_uri()
        return uris

    # ------------------------------------------------------------------
    # metrics
    # ------------------------------------------------------------------

    def _write_metrics(self, run_id: str, run_created: bool) -> None:
        metrics = self._optional_json("metrics.json") or {}
        if isinstance(metrics, dict):
            for name in metrics:
                reference = f"{self.reference}/metrics.json {name}"
                with self.writer.guard("metric", reference):
                    reader = SacredMetricReader(metrics[name], run_id, name, reference)
                    self.writer.metric_points(
                        run_id, f"metrics.json/{name}", reader, run_created=run_created
                    )
                    reader.report(self.summary)
        self._write_result(run_id, run_created)

    def _write_result(self, run_id: str, run_created: bool) -> None:
        """Log a numeric result as the metric `result` at the stop time."""
        value = _numeric(self.entry.get("result"))
        when = self._time(self.entry.get("stop_time"), "stop_time")
        if value is None or when is None:
            return
        point = MetricPoint(
            run_id=run_id, key="result", value=value, step=0, timestamp=when
        ).validate()
        self.writer.metric_points(
            run_id, "run.json/result", lambda: iter([point]), run_created=run_created
        )


class SacredMetricReader:
    """Reads one metric of metrics.json (parallel lists of values, steps and times)."""

    def __init__(self, series: Any, run_id: str, key: str, reference: str) -> None:
        self.series, self.run_id, self.key, self.reference = (
            series,
            run_id,
            key,
            reference,
        )
        self.problems: list[tuple[str, str]] = []

    def __call__(self) -> Iterator[MetricPoint]:
        self.problems = []
        return self._points()

    def _points(self) -> Iterator[MetricPoint]:
        series = self.series if isinstance(self.series, dict) else {}
        values = series.get("values") or []
        steps = series.get("steps") or []
        times = series.get("timestamps") or []
        if not (len(values) == len(steps) == len(times)):
            self.problems.append(
                (
                    "lengths",
                    (
                        "values, steps and timestamps differ in length; points "
                        "past the shortest are left out"
                    ),
                )
            )
        for index, (value, step, when) in enumerate(zip(values, steps, times)):
            try:
                number = _numeric(value)
                if number is None:
                    raise InvalidInputError(f"value {value!r} is not a number", value)
                yield MetricPoint(
                    run_id=self.run_id,
                    key=self.key,
                    value=number,
                    step=step,
                    timestamp=parse_time(when, "timestamp"),
                ).validate()
            except InvalidInputError as problem:
                self.problems.append((f"point {index}", " ".join(str(problem).split())))

    def report(self, summary: Any) -> None:
        for where, problem in self.problems:
            summary.skip("metric_point", f"{self.reference} {where}", problem)


# ----------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------


def _numeric(value: Any) -> float | None:
    """Return a number, also from jsonpickle's numpy scalar form; else None.

    jsonpickle writes a numpy scalar such as float32 as
    `{"py/object": "numpy.float32", "dtype": "float32", "value": 0.5}`.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        as_float = float(value)
        return as_float if as_float == value else None
    if isinstance(value, float):
        return value
    if isinstance(value, dict) and str(value.get("py/object", "")).startswith("numpy."):
        return _numeric(value.get("value"))
    return None


def _started(entry: dict[str, Any]) -> str:
    """Return the text that, with the folder name, identifies this run."""
    if isinstance(entry.get("start_time"), str):
        return entry["start_time"]
    queued = (entry.get("meta") or {}).get("queue_time")
    return codec.dumps(queued) if queued is not None else ""


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _failure(trace: Any) -> dict[str, Any] | None:
    if not trace:
        return None
    text = "".join(trace) if isinstance(trace, list) else str(trace)
    last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    kind, _, message = last.partition(":")
    return {
        "type": kind.strip() or "Exception",
        "message": message.strip()[:2000],
        "traceback": text[-MAX_TRACE_CHARS:],
    }


def _seeds(config: Any) -> dict[str, Any]:
    if isinstance(config, dict) and "seed" in config:
        return {"seed": config["seed"]}
    return {}


def _code_version(experiment: dict[str, Any]) -> dict[str, Any]:
    repositories = [
        r for r in experiment.get("repositories") or [] if isinstance(r, dict)
    ]
    code: dict[str, Any] = {}
    if repositories:
        first = repositories[0]
        code = {
            "git_commit": first.get("commit"),
            "dirty": first.get("dirty"),
            "repository": first.get("url"),
        }
        code = {k: v for k, v in code.items() if v is not None}
    if len(repositories) > 1:
        code["repositories"] = repositories
    if experiment.get("mainfile"):
        code["mainfile"] = experiment["mainfile"]
    return code


def _packages(dependencies: Any) -> dict[str, str]:
    """Turn Sacred's ["numpy==1.26.4", ...] into {"numpy": "1.26.4"}."""
    packages = {}
    for item in dependencies or []:
        name, separator, version = str(item).partition("==")
        if separator:
            packages[name.strip().lower()] = version.strip()
    return packages


def _uri(root: Path, relative: str) -> str:
    path = Path(relative)
    return (path if path.is_absolute() else root / path).as_uri()
