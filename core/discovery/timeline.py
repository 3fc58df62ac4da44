"""A run's timeline: everything that happened to it, in time order, for audits.

Facts come from four places, each entry naming its `source`:

- `run`: the run record itself (created_at, start_time, end_time, deleted_at,
  and params, artifacts or datasets that the audit trail does not cover);
- `audit`: the run's audit events (status changes, params logged, tags,
  artifacts, deletion, denied requests and any other action), each with its
  actor, chain position (`audit_seq`) and hash;
- `metrics`: one entry per metric summarising its history, archived segments
  included, from the first to the last point;
- `lineage`: datasets consumed and model versions produced, timed by their
  lineage edges; child runs come from a search on `parent_run_id`.

Times are those the store recorded. A fact whose time the store does not know
(for example params of a run written without an audit trail) is listed last
with `at` None, instead of being given a made-up time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mltrail import codec
from mltrail.clock import isoformat, utcnow
from mltrail.domain import (
    TERMINAL_STATUSES, AuditEvent, EdgeType, MetricPoint, Run, RunStatus,
)
from mltrail.errors import InvalidInputError
from mltrail.query.ast import format_literal
from mltrail.store import Store

logger = logging.getLogger(__name__)

# Lineage edges whose source is the run and that the timeline lists itself.
_RUN_EDGES = frozenset({EdgeType.CONSUMED.value, EdgeType.PRODUCED.value,
                        EdgeType.CHILD_OF.value})
# Tie-break for entries at the same instant, so a creation sorts before what
# was logged in the same microsecond.
KIND_ORDER = ("created", "params", "status", "dataset", "tags", "metric", "artifact",
              "child_run", "model_version", "deleted", "restored", "audit")


@dataclass
class TimelineEntry:
    """One thing that happened to the run.

    `until` is set for spans, such as a metric's first to last point. `at` is
    None when the store does not record when the fact happened.
    """

    at: datetime | None
    kind: str
    summary: str
    source: str
    details: dict[str, Any] = field(default_factory=dict)
    actor: str | None = None
    audit_seq: int | None = None
    audit_hash: str | None = None
    until: datetime | None = None

    def sort_key(self) -> tuple:
        rank = KIND_ORDER.index(self.kind) if self.kind in KIND_ORDER \
            else len(KIND_ORDER)
        return (self.at is None, self.at or utcnow(), rank, self.audit_seq or 0,
                self.summary)

    def record(self) -> dict[str, Any]:
        return {"at": self.at, "until": self.until, "kind": self.kind,
                "summary": self.summary, "source": self.source, "actor": self.actor,
                "audit_seq": self.audit_seq, "audit_hash": self.audit_hash,
                "details": self.details}


@dataclass
class MetricSummary:
    """One metric's history in brief; min and max skip NaN values."""

    key: str
    count: int = 0
    nan_count: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None
    first_step: int | None = None
    last_step: int | None = None
    min: float | None = None
    max: float | None = None
    last: float | None = None

    def add(self, point: MetricPoint) -> None:
        self.count += 1
        if self.first_at is None or point.timestamp < self.first_at:
            self.first_at = point.timestamp
        if self.last_at is None or point.timestamp > self.last_at:
            self.last_at = point.timestamp
        if self.first_step is None:
            self.first_step = point.step
        # History order is (step, timestamp, seq), so the last point read is
        # the latest value.
        self.last_step = point.step
        self.last = point.value
        if math.isnan(point.value):
            self.nan_count += 1
            return
        if self.min is None or point.value < self.min:
            self.min = point.value
        if self.max is None or point.value > self.max:
            self.max = point.value

    def record(self) -> dict[str, Any]:
        return {"key": self.key, "count": self.count, "nan_count": self.nan_count,
                "first_at": self.first_at, "last_at": self.last_at,
                "first_step": self.first_step, "last_step": self.last_step,
                "min": self.min, "max": self.max, "last": self.last}


@dataclass
class Timeline:
    """A run, its entries in time order and its metric summaries."""

    run: Run
    experiment_name: str | None
    entries: list[TimelineEntry]
    metrics: list[MetricSummary]
    store_url: str
    generated_at: datetime
    generated_by: str

    def record(self) -> dict[str, Any]:
        return {
            "run": {"id": self.run.id, "name": self.run.name,
                    "experiment_id": self.run.experiment_id,
                    "experiment_name": self.experiment_name,
                    "namespace": self.run.namespace, "status": self.run.status.value,
                    "parent_run_id": self.run.parent_run_id},
            "store": self.store_url,
            "generated_at": self.generated_at,
            "generated_by": self.generated_by,
            "entries": [entry.record() for entry in self.entries],
            "metrics": [summary.record() for summary in self.metrics],
        }


def timeline(store: Store, run_id: str) -> Timeline:
    """Reconstruct everything that happened to a run, in time order.

    Reads the run, its audit events, its metric histories (streamed, so memory
    grows with the number of metrics, not points), its lineage edges and its
    child runs. The principal needs the reader role in the run's namespace.
    """
    run = store.get_run(run_id)
    builder = _Builder(store, run)
    builder.add_audit(store.audit_log(run.id))
    builder.add_run_facts()
    builder.add_lineage()
    builder.add_children()
    metrics = builder.add_metrics()
    entries = sorted(builder.entries, key=TimelineEntry.sort_key)
    return Timeline(run=run, experiment_name=_experiment_name(store, run),
                    entries=entries, metrics=metrics, store_url=store.url,
                    generated_at=utcnow(), generated_by=store.actor)


def _experiment_name(store: Store, run: Run) -> str | None:
    found = store.backend.experiments.get_many([run.experiment_id])
    experiment = found.get(run.experiment_id)
    return None if experiment is None else experiment.name


class _Builder:
    """Turns a run's records into entries, tracking what the audit trail covered."""

    def __init__(self, store: Store, run: Run) -> None:
        self.store = store
        self.run = run
        self.entries: list[TimelineEntry] = []
        self.created_seen = False
        self.status: str | None = None
        # Statuses reached through set_status events; start and end times not
        # explained by one of them are added from the run record.
        self.statuses_set: set[str] = set()
        self.params: dict[str, Any] = {}
        self.tags: dict[str, str] = {}
        self.artifacts: dict[str, str] = {}
        self.dataset_times: dict[str, tuple[datetime, AuditEvent | None]] = {}
        self.deleted_seen = False
        # add_edge events keyed by edge key, to credit lineage entries' actors.
        self.edge_events: dict[str, AuditEvent] = {}

    def add(self, at: datetime | None, kind: str, summary: str, source: str,
            event: AuditEvent | None = None,
            details: dict[str, Any] | None = None) -> TimelineEntry:
        entry = TimelineEntry(at=at, kind=kind, summary=summary, source=source,
                              details=details or {})
        if event is not None:
            entry.actor = event.actor
            entry.audit_seq = event.seq
            entry.audit_hash = event.hash
        self.entries.append(entry)
        return entry

    # -- audit events ---------------------------------------------------

    def add_audit(self, events: Iterable[AuditEvent]) -> None:
        handlers = {
            "create": self._on_create, "set_status": self._on_status,
            "log_params": self._on_params, "log_artifact": self._on_artifact,
            "link_dataset": self._on_link_dataset, "add_edge": self._on_edge,
            "delete": self._on_delete, "restore": self._on_restore,
            "denied": self._on_denied,
        }
        for event in events:
            handler = handlers.get(event.action)
            if handler is None and "tags" in event.details:
                handler = self._on_tags
            (handler or self._on_other)(event)

    def _on_create(self, event: AuditEvent) -> None:
        record = event.details.get("record") or {}
        created = self.run
        if record.get("id") == self.run.id:
            try:
                created = Run.from_record(record)
            except (InvalidInputError, KeyError, TypeError):
                # A record the current schema cannot read still dates the
                # creation, so the run as stored now replaces its content.
                logger.info("audit event %d has an unreadable run record; using "
                            "run %s as stored", event.seq, self.run.id)
        self.created_seen = True
        self.status = created.status.value
        self.tags = dict(created.tags)
        self.artifacts = dict(created.artifact_uris)
        for dataset_id in created.dataset_ids:
            self.dataset_times.setdefault(dataset_id, (created.created_at, event))
        details: dict[str, Any] = {"status": self.status, "tags": dict(created.tags)}
        if created.parent_run_id:
            details["parent_run_id"] = created.parent_run_id
        if event.at != created.created_at:
            details["recorded_at"] = event.at
        self.add(created.created_at, "created", _created_summary(created), "audit",
                 event, details)
        new = _flat(created.params)
        if new:
            self.params.update(new)
            self.add(created.created_at, "params", _params_summary(new, "at creation"),
                     "audit", event, {"params": new})

    def _on_status(self, event: AuditEvent) -> None:
        target = event.details.get("status")
        summary = f"status {self.status or '?'} -> {target}"
        details = {"from": self.status, "to": target}
        if event.details.get("error"):
            details["error"] = event.details["error"]
            summary += f" ({_error_text(event.details['error'])})"
        self.status = target
        self.statuses_set.add(str(target))
        self.add(event.at, "status", summary, "audit", event, details)

    def _on_params(self, event: AuditEvent) -> None:
        merged = _flat(event.details.get("params") or {})
        new = {path: value for path, value in merged.items() if path not in self.params}
        self.params.update(new)
        self.add(event.at, "params", _params_summary(new, "logged"), "audit", event,
                 {"params": new})

    def _on_artifact(self, event: AuditEvent) -> None:
        uris = event.details.get("artifact_uris") or {}
        for name in sorted(uris):
            if self.artifacts.get(name) != uris[name]:
                self.add(event.at, "artifact", f"artifact {name!r} at {uris[name]}",
                         "audit", event, {"name": name, "uri": uris[name]})
        self.artifacts = dict(uris)

    def _on_link_dataset(self, event: AuditEvent) -> None:
        for dataset_id in event.details.get("dataset_ids") or []:
            self.dataset_times.setdefault(dataset_id, (event.at, event))

    def _on_edge(self, event: AuditEvent) -> None:
        edge = event.details.get("edge") or {}
        key = f"{edge.get('source')}|{edge.get('type')}|{edge.get('target')}"
        if edge.get("source") == self.run.id and edge.get("type") in _RUN_EDGES:
            self.edge_events[key] = event
            return
        self._on_other(event)

    def _on_tags(self, event: AuditEvent) -> None:
        tags = event.details.get("tags") or {}
        changes = [f"{k}={v}" for k, v in sorted(tags.items()) if self.tags.get(k) != v]
        changes += [f"removed {k}" for k in sorted(self.tags) if k not in tags]
        self.tags = dict(tags)
        summary = f"{event.action}: " + ("; ".join(changes) or "no change")
        self.add(event.at, "tags", summary, "audit", event, {"tags": dict(tags)})

    def _on_delete(self, event: AuditEvent) -> None:
        self.deleted_seen = True
        self.add(event.at, "deleted", "run deleted (soft delete)", "audit", event)

    def _on_restore(self, event: AuditEvent) -> None:
        self.add(event.at, "restored", "run restored", "audit", event)

    def _on_denied(self, event: AuditEvent) -> None:
        value = event.details
        summary = (f"denied {value.get('operation')!r} to {value.get('principal')!r} "
                   f"(role {value.get('role')!r} in namespace "
                   f"{value.get('namespace')!r})")
        self.add(event.at, "audit", summary, "audit", event,
                 {"action": "denied", **value})

    def _on_other(self, event: AuditEvent) -> None:
        fields = ", ".join(sorted(event.details)) or "no details"
        self.add(event.at, "audit", f"{event.action} ({fields})", "audit", event,
                 {"action": event.action, "changes": event.details})

    # -- the run record -------------------------------------------------

    def add_run_facts(self) -> None:
        run = self.run
        if not self.created_seen:
            self.add(run.created_at, "created",
                     _created_summary(run) + " (no audit event)", "run")
        started = RunStatus.RUNNING.value in self.statuses_set
        if run.start_time is not None and not started:
            self.add(run.start_time, "status", "started (run start_time)", "run")
        ended = {s.value for s in TERMINAL_STATUSES} & self.statuses_set
        if run.end_time is not None and not ended:
            self.add(run.end_time, "status",
                     f"ended with status {run.status.value} (run end_time)", "run")
        missing = {path: value for path, value in _flat(run.params).items()
                   if path not in self.params}
        if missing:
            summary = _params_summary(missing, "not in the audit trail:")
            self.add(None, "params", summary, "run", details={"params": missing})
        for name in sorted(run.artifact_uris):
            if name not in self.artifacts:
                uri = run.artifact_uris[name]
                self.add(None, "artifact", f"artifact {name!r} at {uri} (not in the "
                         "audit trail)", "run", details={"name": name, "uri": uri})
        if run.deleted_at is not None and not self.deleted_seen:
            self.add(run.deleted_at, "deleted", "run deleted (run deleted_at)", "run")

    # -- lineage and children -------------------------------------------

    def add_lineage(self) -> None:
        lineage = self.store.backend.lineage
        upstream = [e for e in lineage.edges(self.run.id, "upstream")
                    if e.type == EdgeType.CONSUMED and e.source == self.run.id]
        downstream = [e for e in lineage.edges(self.run.id, "downstream")
                      if e.type == EdgeType.PRODUCED and e.source == self.run.id]
        self._add_datasets(upstream)
        self._add_versions(downstream)

    def _add_datasets(self, edges: list) -> None:
        by_target = {edge.target: edge for edge in edges}
        dataset_ids = list(dict.fromkeys([*self.run.dataset_ids, *by_target]))
        found = self.store.backend.datasets.get_many(dataset_ids)
        for dataset_id in dataset_ids:
            dataset = found.get(dataset_id)
            edge = by_target.get(dataset_id)
            at, event = self.dataset_times.get(dataset_id, (None, None))
            if edge is not None:
                at = edge.created_at
                event = self.edge_events.get(edge.key, event)
            label = dataset_id
            if dataset is not None and self.store._may_read(dataset.namespace):
                label = f"{dataset.name}@{dataset.version} ({dataset_id})"
            self.add(at, "dataset", f"consumed dataset {label}",
                     "lineage" if edge is not None else "run", event,
                     {"dataset_id": dataset_id})

    def _add_versions(self, edges: list) -> None:
        versions = self.store.backend.model_versions.get_many([e.target for e in edges])
        models = self.store.backend.models.get_many(
            list({v.model_id for v in versions.values()}))
        for edge in edges:
            version = versions.get(edge.target)
            if version is None:
                self.add(edge.created_at, "model_version",
                         f"produced {edge.target} (no longer a model version)",
                         "lineage", self.edge_events.get(edge.key),
                         {"node_id": edge.target})
                continue
            model = models.get(version.model_id)
            name = model.name if model is not None else version.model_id
            aliases = sorted(a for a, n in (model.aliases if model else {}).items()
                             if n == version.version)
            summary = f"produced model {name} version {version.version}"
            if aliases:
                summary += f" (aliases: {', '.join(aliases)})"
            self.add(version.created_at, "model_version", summary, "lineage",
                     self.edge_events.get(edge.key),
                     {"model_id": version.model_id, "model_version_id": version.id,
                      "version": version.version, "aliases": aliases})

    def add_children(self) -> None:
        query = f"parent_run_id = {format_literal(self.run.id)}"
        children = self.store.iter_runs(query, include_deleted=True)
        for child in children:
            deleted = " (deleted)" if child.deleted_at is not None else ""
            self.add(child.created_at, "child_run",
                     f"child run {child.name} ({child.id}) created; now "
                     f"{child.status.value}{deleted}", "search",
                     details={"run_id": child.id})

    # -- metrics --------------------------------------------------------

    def add_metrics(self) -> list[MetricSummary]:
        summaries = []
        for key in self.store.metric_keys(self.run.id):
            summary = summarise(key, self.store.metric_history(self.run.id, key))
            if summary.count == 0:
                continue
            summaries.append(summary)
            entry = self.add(summary.first_at, "metric", _metric_summary(summary),
                             "metrics", details=summary.record())
            entry.until = summary.last_at
        return summaries


def summarise(key: str, points: Iterator[MetricPoint]) -> MetricSummary:
    """Summarise a stream of one metric's points in history order."""
    summary = MetricSummary(key)
    for point in points:
        summary.add(point)
    return summary


def _flat(params: dict[str, Any]) -> dict[str, Any]:
    return {codec.join_path(path): value for path, value in codec.flatten(params)}


def _created_summary(run: Run) -> str:
    text = f"run {run.name} created with status {run.status.value}"
    if run.parent_run_id:
        text += f", child of {run.parent_run_id}"
    return text


def _params_summary(params: dict[str, Any], verb: str) -> str:
    if not params:
        return f"params {verb}: none new"
    listed = ", ".join(f"{path}={_short(value)}" for path, value in
                       list(params.items())[:6])
    more = f" and {len(params) - 6} more" if len(params) > 6 else ""
    return f"{len(params)} params {verb} {listed}{more}"


def _short(value: Any) -> str:
    text = codec.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return ": ".join(str(error[k]) for k in ("type", "message") if error.get(k))
    return str(error)


def _metric_summary(summary: MetricSummary) -> str:
    steps = f"steps {summary.first_step}-{summary.last_step}"
    values = f"last {_number(summary.last)}, min {_number(summary.min)}, " \
             f"max {_number(summary.max)}"
    nan = f", {summary.nan_count} NaN" if summary.nan_count else ""
    return f"metric {summary.key}: {summary.count} points, {steps}, {values}{nan}"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}"


def render_text(result: Timeline) -> str:
    """Return the plain-text audit report of a timeline: header, events, metrics."""
    run = result.run
    experiment = result.experiment_name or "?"
    lines = [
        f"Timeline of run {run.id}",
        f"  name        {run.name}",
        f"  experiment  {experiment} ({run.experiment_id})",
        f"  namespace   {run.namespace}",
        f"  status      {run.status.value}",
        f"  store       {result.store_url}",
        f"  generated   {isoformat(result.generated_at)} by {result.generated_by}",
        "",
        f"Events ({len(result.entries)}), oldest first, times in UTC:",
    ]
    for entry in result.entries:
        when = isoformat(entry.at) if entry.at is not None else "time unknown"
        credit = _credit(entry)
        lines.append(f"  {when:<27}  {entry.kind:<13}  {entry.summary}{credit}")
        if entry.until is not None and entry.until != entry.at:
            lines.append(f"  {'':<27}  {'':<13}  until {isoformat(entry.until)}")
    lines += ["", f"Metrics ({len(result.metrics)}):"]
    for summary in result.metrics:
        lines.append(f"  {summary.key}: {summary.count} points, steps "
                     f"{summary.first_step}-{summary.last_step}, "
                     f"{isoformat(summary.first_at)} to {isoformat(summary.last_at)}, "
                     f"last {_number(summary.last)}, min {_number(summary.min)}, "
                     f"max {_number(summary.max)}, NaN {summary.nan_count}")
    return "\n".join(lines) + "\n"


def _credit(entry: TimelineEntry) -> str:
    parts = []
    if entry.actor:
        parts.append(entry.actor)
    if entry.audit_seq is not None:
        short_hash = (entry.audit_hash or "")[:12]
        parts.append(f"audit #{entry.audit_seq} {short_hash}".rstrip())
    if entry.source not in ("audit",):
        parts.append(f"from {entry.source}")
    return f"  [{', '.join(parts)}]" if parts else ""

