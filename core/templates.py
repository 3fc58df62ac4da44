"""Named, typed query templates over a Store.

Each template is a thin, documented function over `Store`, so every backend
answers it the same way; backends make them fast by indexing the fields in
`mltrail.backend.INDEXED_FIELDS` and keeping latest metric values at hand.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from mltrail.audit import AuditEvent
from mltrail.clock import isoformat, to_utc
from mltrail.domain import EdgeType, MetricPoint, ModelVersion, Run, RunStatus
from mltrail.errors import InvalidInputError
from mltrail.lineage import LineageGraph
from mltrail.query.ast import format_field, format_literal
from mltrail.query.paging import parse_order
from mltrail.store import Store


def _field(name: str, prefix: str) -> str:
    return format_field((prefix, *parse_order([name])[0].field)) if prefix \
        else format_field(parse_order([name])[0].field)


def runs_by_experiment(store: Store, experiment: str) -> list[Run]:
    """Return the runs of one experiment (id or name), oldest first."""
    target = store.get_experiment(experiment)
    return list(store.iter_runs(experiment_ids=[target.id]))


def runs_by_status(store: Store, status: RunStatus | str) -> list[Run]:
    value = RunStatus(status).value
    return list(store.iter_runs(f"status = {format_literal(value)}"))


def runs_by_tag(store: Store, key: str, value: str) -> list[Run]:
    return list(store.iter_runs(f"tags.{format_field((key,))} = {format_literal(value)}"))


def runs_by_param_range(store: Store, param: str, *, low: float | None = None,
                        high: float | None = None) -> list[Run]:
    """Return runs whose param lies in [low, high]; either bound may be None."""
    if low is None and high is None:
        raise InvalidInputError("give low, high or both for a param range", param)
    field = _field(param, "params")
    parts = []
    if low is not None:
        parts.append(f"{field} >= {format_literal(low)}")
    if high is not None:
        parts.append(f"{field} <= {format_literal(high)}")
    return list(store.iter_runs(" and ".join(parts), order_by=[f"{field} asc"]))


def runs_by_time_range(store: Store, start: datetime | str | None,
                       end: datetime | str | None) -> list[Run]:
    """Return runs created within [start, end]; either bound may be None."""
    parts = []
    if start is not None:
        parts.append(f"created_at >= {format_literal(isoformat(to_utc(start)))}")
    if end is not None:
        parts.append(f"created_at <= {format_literal(isoformat(to_utc(end)))}")
    return list(store.iter_runs(" and ".join(parts) or None))


def runs_by_dataset(store: Store, dataset_id: str) -> list[Run]:
    """Return the runs that consumed a dataset, found through lineage."""
    store.backend.datasets.get(dataset_id)
    edges = store.backend.lineage.edges(dataset_id, "downstream")
    run_ids = [e.source for e in edges if e.type == EdgeType.CONSUMED]
    found = store.backend.runs.get_many(run_ids)
    return sorted(found.values(), key=lambda r: (r.created_at, r.id))


def runs_by_model(store: Store, model: str) -> list[Run]:
    """Return the runs that produced a version of `model`."""
    run_ids = [v.run_id for v in store.list_model_versions(model, include_deleted=True)
               if v.run_id]
    found = store.backend.runs.get_many(run_ids)
    return sorted(found.values(), key=lambda r: (r.created_at, r.id))


def metric_history(store: Store, run_id: str, key: str, **ranges: Any) -> list[MetricPoint]:
    """Return a metric's history with optional step and time ranges and downsampling."""
    return list(store.metric_history(run_id, key, **ranges))


def latest_value(store: Store, run_id: str, key: str) -> float | None:
    point = store.latest_metrics(run_id).get(key)
    return None if point is None else point.value


def model_version_history(store: Store, model: str) -> list[ModelVersion]:
    return store.list_model_versions(model, include_deleted=True)


def lineage(store: Store, node_id: str, direction: str, depth: int = 10) -> LineageGraph:
    if direction == "upstream":
        return store.upstream(node_id, depth)
    if direction == "downstream":
        return store.downstream(node_id, depth)
    raise InvalidInputError(
        f"direction {direction!r} is invalid; expected 'upstream' or 'downstream'",
        direction)


def audit_log(store: Store, entity_id: str) -> list[AuditEvent]:
    return list(store.audit_log(entity_id))


TEMPLATES: dict[str, Callable[..., Any]] = {
    "runs_by_experiment": runs_by_experiment,
    "runs_by_status": runs_by_status,
    "runs_by_tag": runs_by_tag,
    "runs_by_param_range": runs_by_param_range,
    "runs_by_time_range": runs_by_time_range,
    "runs_by_dataset": runs_by_dataset,
    "runs_by_model": runs_by_model,
    "metric_history": metric_history,
    "latest_value": latest_value,
    "model_version_history": model_version_history,
    "lineage": lineage,
    "audit_log": audit_log,
}

__all__ = [*TEMPLATES, "TEMPLATES"]
