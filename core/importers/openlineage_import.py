"""Import OpenLineage events: run events, and the static job and dataset events.

The source is one file or a folder of `.json`, `.jsonl` and `.ndjson` files,
each holding a JSON array of events, one event, or one event per line.

A job namespace becomes an experiment and each OpenLineage run a run in it,
named after its job, with the status and times its events report (START and
RUNNING: running; COMPLETE: completed; FAIL: failed; ABORT: killed). A job
becomes a pipeline lineage node, and each input and output dataset a dataset
versioned by its `version` facet. Edges: the run and its job consumed the inputs
and produced the outputs; a run is a child of the run its `parent` facet names.

Producers bend the spec in known ways. Where the meaning is clear, the event
is imported and the summary notes the deviation. Such deviations are event
types in lower case or as COMPLETED/FAILED/ABORTED, times without an offset
(read as UTC) or as epoch numbers, and `runId` at the top level. So are a job
without a namespace (OpenLineage's default namespace `default` is used) and
datasets given as URIs. An event whose run, job or time is unclear is skipped
and reported.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mltrail import codec
from mltrail.domain import EdgeType, NodeKind, RunStatus
from mltrail.errors import InvalidInputError
from mltrail.importers.source import SourceTree
from mltrail.importers.values import derive_id, has_offset, parse_time
from mltrail.importers.writer import ImportWriter

FORMAT = "openlineage"
SUFFIXES = (".json", ".jsonl", ".ndjson")
DEFAULT_NAMESPACE = "default"  # openlineage.client.constants.DEFAULT_NAMESPACE_NAME
EVENT_TYPES = ("START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER")
EVENT_TYPE_SYNONYMS = {"COMPLETED": "COMPLETE", "FAILED": "FAIL", "ABORTED": "ABORT"}
STATUS_BY_EVENT = {
    "START": RunStatus.RUNNING,
    "RUNNING": RunStatus.RUNNING,
    "COMPLETE": RunStatus.COMPLETED,
    "FAIL": RunStatus.FAILED,
    "ABORT": RunStatus.KILLED,
}
UNVERSIONED = "unversioned"
# Facets larger than this, as JSON, are left out of a run's environment; some
# producers attach whole query plans that would not fit a record.
MAX_FACET_BYTES = 16_384
# Epoch numbers above this are milliseconds, below it seconds (1e11 seconds
# is the year 5138, 1e11 milliseconds is 1973).
MILLISECONDS_ABOVE = 1e11


@dataclass(frozen=True)
class DatasetRef:
    namespace: str
    name: str
    version: str

    @property
    def uri(self) -> str:
        if self.name.startswith("/") or self.namespace.endswith("/"):
            return self.namespace + self.name
        return f"{self.namespace}/{self.name}"


@dataclass
class Event:
    """One event after normalisation; `run_id` is None for job and dataset events."""

    reference: str
    event_type: str
    time: datetime
    run_id: str | None
    job: tuple[str, str] | None
    producer: str | None
    inputs: list[DatasetRef] = field(default_factory=list)
    outputs: list[DatasetRef] = field(default_factory=list)
    run_facets: dict[str, Any] = field(default_factory=dict)
    job_facets: dict[str, Any] = field(default_factory=dict)
    parent: tuple[str, str, str] | None = None  # run id, job namespace, job name


@dataclass
class RunState:
    """The events of one run, with the parent they name."""

    run_id: str
    job: tuple[str, str]
    events: list[Event] = field(default_factory=list)
    parent: tuple[str, str, str] | None = None


def import_openlineage(tree: SourceTree, writer: ImportWriter) -> None:
    reader = EventReader(tree, writer)
    events = list(reader.events())
    OpenLineageWriter(writer, reader.dataset_facets).write(events)


# ----------------------------------------------------------------------
# reading and normalising
# ----------------------------------------------------------------------


class EventReader:
    """Reads event files and normalises each event, noting every deviation."""

    def __init__(self, tree: SourceTree, writer: ImportWriter) -> None:
        self.tree, self.summary = tree, writer.summary
        # The facets last read for each dataset, for its schema and data source.
        self.dataset_facets: dict[DatasetRef, dict[str, Any]] = {}

    def events(self) -> Iterator[Event]:
        for path in self._files():
            try:
                documents = list(self._documents(path))
            except (InvalidInputError, OSError, UnicodeDecodeError) as error:
                self.summary.skip(
                    "event", self.tree.relative(path), " ".join(str(error).split())
                )
                continue
            for reference, raw in documents:
                event = self._normalise(raw, reference)
                if event is not None:
                    yield event

    def _files(self) -> list[Path]:
        if self.tree.is_file(self.tree.root):
            return [self.tree.root]
        return [
            path
            for key, path in self.tree.files(self.tree.root)
            if path.suffix.lower() in SUFFIXES
        ]

    def _documents(self, path: Path) -> Iterator[tuple[str, Any]]:
        """Yield (reference, parsed event) from a JSON array, one object or JSON lines.

        JSON lines are streamed, so a long event log is never read whole.
        """
        relative = self.tree.relative(path)
        with self.tree.open_text(path) as handle:
            first = _first_character(handle)
        if first == "[" or (first == "{" and not self._one_object_per_line(path)):
            whole = self._whole(path, relative)
            items = whole if isinstance(whole, list) else [whole]
            for index, item in enumerate(items):
                name = f"{relative}[{index}]" if isinstance(whole, list) else relative
                yield name, item
            return
        with self.tree.open_text(path) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{relative}:{number}", json.loads(line)
                except ValueError as error:
                    self.summary.skip(
                        "event",
                        f"{relative}:{number}",
                        f"line is not valid JSON ({error.msg})",
                    )

    def _one_object_per_line(self, path: Path) -> bool:
        """Tell JSON lines from one pretty-printed object by the first line."""
        with self.tree.open_text(path) as handle:
            line = next((text for text in handle if text.strip()), "")
        try:
            return isinstance(json.loads(line), dict)
        except ValueError:
            return False

    def _whole(self, path: Path, relative: str) -> Any:
        try:
            return json.loads(self.tree.read_text(path))
        except ValueError as error:
            raise InvalidInputError(
                f"{relative!r} is not valid JSON: {error}", relative
            ) from None

    def _deviation(self, reference: str, message: str) -> None:
        self.summary.note("event", reference, message)

    def _normalise(self, raw: Any, reference: str) -> Event | None:
        if not isinstance(raw, dict):
            self.summary.skip("event", reference, "event is not a JSON object")
            return None
        try:
            event_type = self._event_type(raw, reference)
            time = self._time(raw.get("eventTime"), reference)
            run_id = self._run_id(raw, reference)
            job = self._job(raw.get("job"), reference)
        except InvalidInputError as problem:
            self.summary.skip("event", reference, str(problem))
            return None
        if run_id is None and job is None and not isinstance(raw.get("dataset"), dict):
            self.summary.skip("event", reference, "event names no run, job or dataset")
            return None
        if run_id is not None and job is None:
            self.summary.skip("event", reference, "run event names no job")
            return None
        if not raw.get("producer"):
            self._deviation(reference, "producer is missing")
        run = raw.get("run") if isinstance(raw.get("run"), dict) else {}
        inputs = raw.get("inputs")
        outputs = raw.get("outputs")
        if run_id is None and isinstance(raw.get("dataset"), dict):
            outputs = [raw["dataset"]]  # a DatasetEvent: the dataset alone
        return Event(
            reference=reference,
            event_type=event_type,
            time=time,
            run_id=run_id,
            job=job,
            producer=raw.get("producer"),
            inputs=self._datasets(inputs, reference),
            outputs=self._datasets(outputs, reference),
            run_facets=_facets(run.get("facets")),
            job_facets=_facets(
                (raw.get("job") or {}).get("facets")
                if isinstance(raw.get("job"), dict)
                else None
            ),
            parent=self._parent(_facets(run.get("facets")).get("parent"), reference),
        )

    def _event_type(self, raw: dict[str, Any], reference: str) -> str:
        value = raw.get("eventType")
        if value is None:
            return "OTHER"
        text = str(value).strip().upper()
        if text in EVENT_TYPE_SYNONYMS:
            self._deviation(reference, "eventType is a synonym of a spec value")
            text = EVENT_TYPE_SYNONYMS[text]
        elif text != value:
            self._deviation(reference, "eventType is not in upper case")
        if text not in EVENT_TYPES:
            raise InvalidInputError(
                f"eventType {value!r} is not one of {', '.join(EVENT_TYPES)}", value
            )
        return text

    def _time(self, value: Any, reference: str) -> datetime:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self._deviation(reference, "eventTime is an epoch number, not ISO 8601")
            seconds = value / 1000 if value > MILLISECONDS_ABOVE else value
            return datetime.fromtimestamp(seconds, timezone.utc)
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError("eventTime is missing", value)
        if not has_offset(value):
            self._deviation(reference, "eventTime has no UTC offset; read as UTC")
        return parse_time(value, "eventTime")

    def _run_id(self, raw: dict[str, Any], reference: str) -> str | None:
        run = raw.get("run")
        if isinstance(run, dict) and run.get("runId"):
            return str(run["runId"])
        if raw.get("runId"):
            self._deviation(reference, "runId is at the top level, not under run")
            return str(raw["runId"])
        if run is not None:
            raise InvalidInputError("run has no runId", run)
        return None

    def _job(self, job: Any, reference: str) -> tuple[str, str] | None:
        if job is None:
            return None
        if not isinstance(job, dict) or not job.get("name"):
            raise InvalidInputError("job has no name", job)
        namespace = job.get("namespace")
        if not namespace:
            self._deviation(
                reference,
                "job has no namespace; OpenLineage's default "
                "namespace 'default' is used",
            )
            namespace = DEFAULT_NAMESPACE
        return str(namespace), str(job["name"])

    def _parent(self, facet: Any, reference: str) -> tuple[str, str, str] | None:
        if not isinstance(facet, dict):
            return None
        run = facet.get("run") or {}
        job = facet.get("job") or {}
        if not isinstance(run, dict) or not run.get("runId"):
            self._deviation(reference, "parent facet names no run; parent not linked")
            return None
        return (
            str(run["runId"]),
            str(job.get("namespace") or DEFAULT_NAMESPACE),
            str(job.get("name") or "parent"),
        )

    def _datasets(self, items: Any, reference: str) -> list[DatasetRef]:
        refs = []
        for item in items or []:
            ref = self._dataset(item, reference)
            if ref is not None:
                refs.append(ref)
        return refs

    def _dataset(self, item: Any, reference: str) -> DatasetRef | None:
        if isinstance(item, str):
            self._deviation(reference, "dataset given as a string; read as a URI")
            return _from_uri(item, UNVERSIONED, self.summary, reference)
        if not isinstance(item, dict):
            self.summary.skip("dataset", reference, "dataset is not an object")
            return None
        version = _version(item)
        if item.get("namespace") and item.get("name"):
            ref = DatasetRef(str(item["namespace"]), str(item["name"]), version)
        elif isinstance(item.get("uri"), str):
            self._deviation(reference, "dataset given by uri, not namespace and name")
            ref = _from_uri(item["uri"], version, self.summary, reference)
        else:
            self.summary.skip("dataset", reference, "dataset has no namespace and name")
            return None
        if ref is not None and _facets(item.get("facets")):
            self.dataset_facets[ref] = _facets(item.get("facets"))
        return ref


def _first_character(handle: Any) -> str:
    """Return the first character that is not whitespace, or "" for an empty file."""
    while True:
        chunk = handle.read(4096)
        if not chunk:
            return ""
        stripped = chunk.lstrip()
        if stripped:
            return stripped[0]


def _from_uri(
    text: str, version: str, summary: Any, reference: str
) -> DatasetRef | None:
    parts = urlsplit(text)
    if not parts.scheme or not parts.path:
        summary.skip(
            "dataset", f"{reference} {text}", "dataset URI has no scheme or path"
        )
        return None
    return DatasetRef(f"{parts.scheme}://{parts.netloc}", parts.path, version)


def _version(item: dict[str, Any]) -> str:
    facet = _facets(item.get("facets")).get("version")
    if isinstance(facet, dict) and facet.get("datasetVersion") not in (None, ""):
        return str(facet["datasetVersion"])
    return UNVERSIONED


def _facets(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# ----------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------


class OpenLineageWriter:
    """Writes normalised events: datasets, experiments, runs, pipelines, edges."""

    def __init__(
        self, writer: ImportWriter, dataset_facets: dict[DatasetRef, dict[str, Any]]
    ) -> None:
        self.writer, self.summary = writer, writer.summary
        self.dataset_facets = dataset_facets
        self.dataset_ids: dict[DatasetRef, str] = {}
        self.first_seen: dict[DatasetRef, datetime] = {}

    def write(self, events: list[Event]) -> None:
        events.sort(key=lambda e: e.time)
        for event in events:
            for ref in event.inputs + event.outputs:
                self.first_seen.setdefault(ref, event.time)
        runs = _group_runs(events, self.summary)
        self.writer.progress.start("runs", len(runs))
        for ref in self.first_seen:
            self._write_dataset(ref)
        for event in (e for e in events if e.run_id is None and e.job is not None):
            self._write_job(event.job, event.inputs, event.outputs, event.reference)
        for state in _parents_first(runs):
            with self.writer.guard("run", state.events[0].reference):
                self._write_run(state, runs)
            self.writer.progress.advance(state.run_id)

    def _write_dataset(self, ref: DatasetRef) -> None:
        reference = ref.uri
        facets = self.dataset_facets.get(ref, {})
        schema = facets.get("schema")
        fields = schema.get("fields") if isinstance(schema, dict) else None
        provenance: dict[str, Any] = {"namespace": ref.namespace, "name": ref.name}
        if isinstance(facets.get("dataSource"), dict):
            provenance["data_source"] = {
                k: v for k, v in facets["dataSource"].items() if not k.startswith("_")
            }
        with self.writer.guard("dataset", reference):
            stored = self.writer.dataset(
                id=derive_id("ol-dataset", ref.namespace, ref.name, ref.version),
                name=ref.uri,
                version=ref.version,
                reference=reference,
                source_uri=ref.uri,
                ingested_at=self.first_seen[ref],
                schema={"fields": fields} if isinstance(fields, list) else {},
                provenance=provenance,
                tags=self.writer.source_tags(f"{ref.namespace}|{ref.name}"),
            )
            if stored is not None:
                self.dataset_ids[ref] = stored

    def _write_job(
        self,
        job: tuple[str, str],
        inputs: list[DatasetRef],
        outputs: list[DatasetRef],
        reference: str,
    ) -> str:
        node_id = derive_id("ol-job", *job)
        self.writer.node(node_id, NodeKind.PIPELINE, f"{job[0]}/{job[1]}", reference)
        self._link(node_id, inputs, outputs, reference)
        return node_id

    def _link(
        self,
        node_id: str,
        inputs: list[DatasetRef],
        outputs: list[DatasetRef],
        reference: str,
    ) -> None:
        for ref in dict.fromkeys(outputs):
            if ref in self.dataset_ids:
                self.writer.edge(
                    node_id, EdgeType.PRODUCED, self.dataset_ids[ref], reference
                )
        for ref in dict.fromkeys(inputs):
            if ref not in self.dataset_ids:
                continue
            if ref in outputs:
                # Reading and writing one dataset version (an in-place update)
                # would close a cycle; the write is the edge kept.
                self.summary.note(
                    "lineage_edge",
                    f"{reference} {ref.uri}",
                    "dataset is both input and output; recorded as output",
                )
                continue
            self.writer.edge(
                node_id, EdgeType.CONSUMED, self.dataset_ids[ref], reference
            )

    def _write_run(self, state: RunState, runs: dict[str, RunState]) -> None:
        namespace, job_name = state.job
        first = state.events[0]

        experiment_id = self.writer.experiment(
            id=derive_id("ol-exp", namespace),
            name=namespace,
            reference=namespace,
            tags=self.writer.source_tags(namespace),
            created_at=first.time,
        )
        if experiment_id is None:
            return

        status, start, end, error = _lifecycle(state, self.summary)
        inputs = list(dict.fromkeys(r for e in state.events for r in e.inputs))
        outputs = list(dict.fromkeys(r for e in state.events for r in e.outputs))
        run_facets = _merged(state, "run_facets")
        job_facets = _merged(state, "job_facets")
        local_parent = _parent_in(state, runs, namespace)
        result = self.writer.run(
            id=derive_id("ol-run", state.run_id),
            experiment_id=experiment_id,
            name=job_name,
            status=status,
            reference=first.reference,
            created_at=first.time,
            start_time=start,
            end_time=end,
            tags=self._tags(state, run_facets),
            parent_run_id=local_parent,
            environment=self._environment(run_facets, job_facets, first.reference),
            code_version=_code_version(job_facets),
            dataset_ids=[
                self.dataset_ids[r]
                for r in inputs
                if r in self.dataset_ids and r not in outputs
            ],
            error=error,
        )
        if result is None:
            return

        run_id = result[0]
        for ref in outputs:
            if ref in self.dataset_ids:
                self.writer.edge(
                    run_id, EdgeType.PRODUCED, self.dataset_ids[ref], first.reference
                )
        self._write_job(state.job, inputs, outputs, first.reference)
        if state.parent is not None and local_parent is None:
            self._link_parent(run_id, state.parent, first.reference)

    def _link_parent(
        self, run_id: str, parent: tuple[str, str, str], reference: str
    ) -> None:
        """Link a run to a parent in another namespace or not in the events."""
        parent_id = derive_id("ol-run", parent[0])
        if not self.writer.known(self.writer.backend.runs, parent_id):
            self.writer.node(
                parent_id, NodeKind.RUN, f"{parent[1]}/{parent[2]}", reference
            )
            self.summary.note(
                "run",
                reference,
                "parent run is not in the events; it is a lineage node without a run",
            )
        self.writer.edge(run_id, EdgeType.CHILD_OF, parent_id, reference)

    def _tags(self, state: RunState, run_facets: dict[str, Any]) -> dict[str, Any]:
        tags: dict[str, Any] = {
            "openlineage.job.namespace": state.job[0],
            "openlineage.job.name": state.job[1],
        }
        producers = sorted({e.producer for e in state.events if e.producer})
        if producers:
            tags["openlineage.producer"] = " ".join(producers)
        nominal = run_facets.get("nominalTime")
        if isinstance(nominal, dict) and nominal.get("nominalStartTime"):
            tags["openlineage.nominal_start_time"] = str(nominal["nominalStartTime"])
        return {**tags, **self.writer.source_tags(state.run_id)}

    def _environment(
        self, run_facets: dict[str, Any], job_facets: dict[str, Any], reference: str
    ) -> dict[str, Any]:
        kept: dict[str, Any] = {}
        for scope, facets in (("run_facets", run_facets), ("job_facets", job_facets)):
            for name, facet in facets.items():
                if name in ("parent", "errorMessage"):
                    continue  # carried as the parent link and the run's error
                size = len(codec.dumps(self.writer.plain(facet, "run", reference)))
                if size > MAX_FACET_BYTES:
                    self.summary.skip(
                        "facet",
                        f"{reference} {name}",
                        f"facet exceeds {MAX_FACET_BYTES} bytes as JSON",
                    )
                    continue
                kept.setdefault(scope, {})[name] = facet
        return {"openlineage": kept} if kept else {}


def _group_runs(events: list[Event], summary: Any) -> dict[str, RunState]:
    runs: dict[str, RunState] = {}
    for event in events:
        if event.run_id is None or event.job is None:
            continue
        state = runs.setdefault(event.run_id, RunState(event.run_id, event.job))
        if event.job != state.job:
            summary.note(
                "event",
                event.reference,
                "run's events name different jobs; the first job is used",
            )
        state.events.append(event)
        if event.parent is not None and state.parent is None:
            state.parent = event.parent
    return runs


def _parents_first(runs: dict[str, RunState]) -> list[RunState]:
    ordered: list[RunState] = []
    done: set[str] = set()

    def visit(run_id: str, chain: frozenset[str]) -> None:
        if run_id in done or run_id in chain:
            return
        state = runs[run_id]
        if state.parent is not None and state.parent[0] in runs:
            visit(state.parent[0], chain | {run_id})
        done.add(run_id)
        ordered.append(state)

    for run_id in runs:
        visit(run_id, frozenset())
    return ordered


def _parent_in(
    state: RunState, runs: dict[str, RunState], namespace: str
) -> str | None:
    """Return the parent's run id when its events are here and in the same namespace.

    Such a parent is in the same experiment and becomes the run's parent run;
    any other parent is linked by a lineage edge only.
    """
    if state.parent is None or state.parent[0] not in runs:
        return None
    if runs[state.parent[0]].job[0] != namespace:
        return None
    return derive_id("ol-run", state.parent[0])


def _lifecycle(
    state: RunState, summary: Any
) -> tuple[RunStatus, datetime | None, datetime | None, dict | None]:
    """Return status, start, end and error from a run's events in time order."""
    status = RunStatus.RUNNING
    start = next(
        (e.time for e in state.events if e.event_type == "START"), state.events[0].time
    )
    end = error = None
    for event in state.events:
        target = STATUS_BY_EVENT.get(event.event_type)
        if target is None:
            continue
        if status.terminal and target != status:
            summary.note(
                "event",
                event.reference,
                f"{event.event_type} arrives after "
                f"the run ended as {status.value}; the first end is kept",
            )
            continue
        if target.terminal and not status.terminal:
            end = event.time
            failure = event.run_facets.get("errorMessage")
            if target == RunStatus.FAILED and isinstance(failure, dict):
                error = {
                    "type": str(failure.get("programmingLanguage") or "error"),
                    "message": str(failure.get("message") or ""),
                    "traceback": str(failure.get("stackTrace") or ""),
                }
        status = target
    return status, start, end, error


def _merged(state: RunState, attribute: str) -> dict[str, Any]:
    """Return the facets of all events, later events overriding earlier ones."""
    merged: dict[str, Any] = {}
    for event in state.events:
        merged.update(getattr(event, attribute))
    return merged


def _code_version(job_facets: dict[str, Any]) -> dict[str, Any]:
    location = job_facets.get("sourceCodeLocation")
    if not isinstance(location, dict):
        return {}
    code = {
        "repository": location.get("url") or location.get("repoUrl"),
        "git_commit": location.get("version"),
        "branch": location.get("branch"),
        "path": location.get("path"),
    }
    return {k: str(v) for k, v in code.items() if v}
