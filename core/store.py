"""The Store: every operation on recorded metadata, with the core's rules applied.

`mltrail.connect(url)` returns a Store over the backend registered for the
URL's scheme. The Store validates input, generates ids, enforces status
transitions, write-once params, gapless version numbers and acyclic lineage,
and appends an audit event for each change, so every backend behaves alike.

Every write can be retried: creating with the same `id` and content returns the
stored entity, setting a status or param to its current value does nothing, and
metric batches carry ids that make a repeated batch overwrite itself.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import os
import random
import time
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from mltrail import codec, limits
from mltrail.access import OPEN_POLICY, AccessPolicy, Role
from mltrail.audit import append_event, verify_chain, VerifyResult
from mltrail.backend import Backend, EntityRepository, ScanRequest, chunked
from mltrail.clock import new_id, to_utc, utcnow
from mltrail.domain import (
    DEFAULT_NAMESPACE, AuditEvent, Dataset, EdgeType, Entity, Experiment, LineageEdge,
    LineageNode, MetricPoint, MetricSeries, Model, ModelVersion, NodeKind, Run,
    RunStatus, check_id, check_key, check_name, check_namespace, check_tags, check_transition,
)
from mltrail.errors import (
    AlreadyExistsError, ConflictError, InvalidInputError, NotFoundError,
    PermissionDeniedError,
)
from mltrail.lineage import LineageGraph, traverse
from mltrail.ops.cold import MetricReader
from mltrail.query.ast import And, Exists, Expr, fields_of
from mltrail.query.evaluate import MISSING, matches, resolve, sort_value
from mltrail.query.paging import (
    Page, decode_token, fingerprint, page_of, parse_order,
)
from mltrail.query.parser import parse_optional
from mltrail.pseudonym import NO_PSEUDONYMS, Pseudonymizer
from mltrail.query.stats import GroupStats

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Entity)

MAX_UPDATE_ATTEMPTS = 20
# Changes that only an admin may make; every other change needs a writer.
ADMIN_ACTIONS = frozenset({"delete", "restore"})
PRINCIPAL_ENV = "MLTRAIL_PRINCIPAL"


def default_actor() -> str:
    try:
        return os.environ.get(PRINCIPAL_ENV) or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class Store:
    """Records and queries experiments, runs, metrics, datasets, models and lineage."""

    def __init__(self, backend: Backend, actor: str | None = None, *,
                 policy: AccessPolicy | None = None,
                 pseudonymizer: Pseudonymizer | None = None) -> None:
        self.backend = backend
        self.actor = actor or default_actor()
        self.policy = policy or OPEN_POLICY
        self.pseudonymizer = pseudonymizer or NO_PSEUDONYMS
        # Metric reads go through this reader so archived histories (see
        # mltrail.ops.archive) are merged back in; writes use the backend.
        self.metric_reader = MetricReader(backend)

    # ------------------------------------------------------------------
    # plumbing
    # ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.backend.url

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _audit(self, action: str, entity_type: str, entity_id: str,
               details: dict[str, Any] | None = None) -> AuditEvent:
        return append_event(
            self.backend.audit, actor=self.actor, action=action,
            entity_type=entity_type, entity_id=entity_id, details=details or {},
        )

    def _tags(self, tags: Any) -> dict[str, str]:
        """Copy a tags argument, replacing configured identifying values by pseudonyms."""
        return self.pseudonymizer.tags(_as_dict(tags, "tags")) or {}

    def _authorize(self, required: Role, operation: str, namespace: str | None,
                   entity_type: str = "store", entity_id: str = "-") -> None:
        """Check the principal's role; audit and raise PermissionDeniedError if too low."""
        try:
            self.policy.check(self.actor, required, operation, namespace)
        except PermissionDeniedError as error:
            self._audit("denied", entity_type, entity_id, dict(error.value))
            raise

    def _namespace_of(self, entity: Entity) -> str:
        namespace = getattr(entity, "namespace", None)
        if namespace is not None:
            return namespace
        if isinstance(entity, ModelVersion):
            return self.backend.models.get(entity.model_id).namespace
        raise TypeError(f"no namespace for {entity!r}")

    def _readable(self, entity: Entity) -> E:
        """Return `entity` if the principal may read its namespace, else raise."""
        if self.policy.enabled:
            self._authorize(Role.READER, "read", self._namespace_of(entity), entity.kind,
                            entity.id)
        return entity

    def _insert(self, repository: EntityRepository[E], entity: E) -> E:
        """Insert `entity`, or return the stored one when a retry finds it unchanged."""
        self._authorize(Role.WRITER, f"create_{entity.kind}", self._namespace_of(entity),
                        entity.kind, entity.id)
        try:
            repository.insert(entity)
        except AlreadyExistsError:
            existing = self._existing_for(repository, entity)
            if existing is not None and existing.same_content(entity):
                return existing
            raise
        self._audit("create", entity.kind, entity.id, {"record": entity.to_record()})
        return entity

    def _existing_for(self, repository: EntityRepository[E], entity: E) -> E | None:
        try:
            return repository.get(entity.id)
        except NotFoundError:
            pass
        if repository.unique_key:
            key = tuple(getattr(entity, name) for name in repository.unique_key)
            found = repository.find_unique(key)
            if found is not None and found.id == entity.id:
                return found
        return None

    def _modify(
        self,
        repository: EntityRepository[E],
        entity_id: str,
        change: Callable[[E], dict[str, Any] | None],
        action: str,
    ) -> E:
        """Apply `change` with compare-and-set, retrying when another writer won.

        `change` returns the fields to replace, or None when the entity already
        has the requested state; then nothing is written or audited.
        """
        required = Role.ADMIN if action in ADMIN_ACTIONS else Role.WRITER
        for attempt in range(MAX_UPDATE_ATTEMPTS):
            current = repository.get(entity_id)
            self._authorize(required, action, self._namespace_of(current),
                            repository.kind, entity_id)
            fields = change(current)
            if fields is None:
                return current
            updated = current.touched(**fields)
            try:
                repository.update(updated)
            except ConflictError:
                logger.debug("%s %s changed concurrently, retrying (attempt %d)",
                             repository.kind, entity_id, attempt + 1)
                time.sleep(random.uniform(0, 0.005 * (attempt + 1)))
                continue
            details = {k: _auditable(v) for k, v in fields.items()}
            self._audit(action, repository.kind, entity_id, details)
            return updated
        raise ConflictError(
            f"{repository.kind} {entity_id!r} kept changing concurrently; gave up after "
            f"{MAX_UPDATE_ATTEMPTS} attempts",
            entity_id,
        )

    # ------------------------------------------------------------------
    # experiments
    # ------------------------------------------------------------------

    def create_experiment(
        self,
        name: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
        id: str | None = None,
        created_at: datetime | str | None = None,
    ) -> Experiment:
        """Create an experiment; its name must be unique in the namespace.

        `created_at` keeps the creation time of imported history; it defaults
        to now.
        """
        experiment = Experiment(id=id or new_id(), name=name, namespace=namespace,
                                description=description, tags=self._tags(tags),
                                created_at=_time_or_now(created_at, "created_at"))
        return self._insert(self.backend.experiments, experiment)

    def get_or_create_experiment(self, name: str, *,
                                 namespace: str = DEFAULT_NAMESPACE) -> Experiment:
        found = self.backend.experiments.find_unique((namespace, name))
        if found is not None:
            return found
        try:
            return self.create_experiment(name, namespace=namespace)
        except AlreadyExistsError:
            found = self.backend.experiments.find_unique((namespace, name))
            if found is None:
                raise
            return found

    def get_experiment(self, id_or_name: str, *,
                       namespace: str = DEFAULT_NAMESPACE) -> Experiment:
        """Return an experiment by id, or else by name within `namespace`."""
        try:
            return self._readable(self.backend.experiments.get(id_or_name))
        except NotFoundError:
            found = self.backend.experiments.find_unique((namespace, id_or_name))
            if found is None:
                raise NotFoundError(
                    f"experiment {id_or_name!r} not found (by id, or by name in "
                    f"namespace {namespace!r})",
                    id_or_name,
                ) from None
            return self._readable(found)

    def list_experiments(self, *, namespace: str | None = None, filter: str | None = None,
                         include_deleted: bool = False) -> Iterator[Experiment]:
        yield from self._iterate(self.backend.experiments, self._plain_view, filter,
                                 namespace, include_deleted, order_by=["name"])

    def delete_experiment(self, experiment_id: str) -> Experiment:
        return self._soft_delete(self.backend.experiments, experiment_id)

    def restore_experiment(self, experiment_id: str) -> Experiment:
        return self._restore(self.backend.experiments, experiment_id)

    def purge_experiment(self, experiment_id: str) -> None:
        """Remove an experiment, its runs, their metrics and lineage nodes for good."""
        experiment = self.backend.experiments.get(experiment_id)
        self._authorize(Role.ADMIN, "purge", experiment.namespace, "experiment",
                        experiment.id)
        for run in self.iter_runs(experiment_ids=[experiment.id], include_deleted=True):
            self.purge_run(run.id)
        self.backend.experiments.delete(experiment.id)
        self._audit("purge", "experiment", experiment.id, {"name": experiment.name})

    def _soft_delete(self, repository: EntityRepository[E], entity_id: str) -> E:
        return self._modify(
            repository, entity_id,
            lambda e: None if e.deleted_at is not None else {"deleted_at": utcnow()},
            "delete",
        )

    def _restore(self, repository: EntityRepository[E], entity_id: str) -> E:
        return self._modify(
            repository, entity_id,
            lambda e: None if e.deleted_at is None else {"deleted_at": None},
            "restore",
        )

    # ------------------------------------------------------------------
    # runs
    # ------------------------------------------------------------------

    def create_run(
        self,
        experiment_id: str,
        *,
        name: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        trainer: str | None = None,
        resources: Mapping[str, Any] | None = None,
        environment: Mapping[str, Any] | None = None,
        seeds: Mapping[str, Any] | None = None,
        code_version: Mapping[str, Any] | None = None,
        dataset_ids: Sequence[str] = (),
        status: RunStatus | str = RunStatus.PENDING,
        id: str | None = None,
        created_at: datetime | str | None = None,
        start_time: datetime | str | None = None,
        end_time: datetime | str | None = None,
    ) -> Run:
        """Create a run in an experiment and record its lineage.

        The parent run and the datasets must exist; the parent is fixed for good.
        A run may be created in any status. `created_at`, `start_time` and
        `end_time` keep the times of imported history; by default they follow
        `status` (start and end are now when the status implies them).
        """
        experiment = self.backend.experiments.get(check_id(experiment_id, "experiment id"))
        run_id = id or new_id()
        if parent_run_id is not None:
            parent = self.backend.runs.get(check_id(parent_run_id, "parent run id"))
            if parent.experiment_id != experiment.id:
                raise InvalidInputError(
                    f"parent run {parent.id!r} belongs to experiment "
                    f"{parent.experiment_id!r}, not {experiment.id!r}",
                    parent.id,
                )
        for dataset_id in dataset_ids:
            self.backend.datasets.get(check_id(dataset_id, "dataset id"))
        status = _status_of(status)
        now = _time_or_now(created_at, "created_at")
        run = Run(
            id=run_id, experiment_id=experiment.id, namespace=experiment.namespace,
            name=name or f"run-{run_id[-8:].lower()}", params=_as_dict(params, "params"),
            tags=self._tags(tags), parent_run_id=parent_run_id,
            trainer=self.pseudonymizer.trainer(trainer),
            resources=_as_dict(resources, "resources"), environment=_as_dict(environment, "environment"),
            seeds=_as_dict(seeds, "seeds"), code_version=_as_dict(code_version, "code_version"),
            dataset_ids=list(dict.fromkeys(dataset_ids)), status=status,
            start_time=_optional_time(start_time, "start_time")
            or (now if status != RunStatus.PENDING else None),
            end_time=_optional_time(end_time, "end_time") or (now if status.terminal else None),
            created_at=now,
        )
        _check_param_count(run.params)
        run = self._insert(self.backend.runs, run)
        self._record_run_lineage(run)
        self._record_configuration(run)
        return run

    def _record_configuration(self, run: Run) -> None:
        """Index the run's whole param set by content hash for same-config lookups."""
        from mltrail.discovery.configs import record_configuration

        record_configuration(self, run)

    def _record_run_lineage(self, run: Run) -> None:
        self.backend.lineage.put_node(LineageNode(id=run.id, kind=NodeKind.RUN,
                                                  label=run.name))
        if run.parent_run_id is not None:
            self._add_edge(LineageEdge(source=run.id, target=run.parent_run_id,
                                       type=EdgeType.CHILD_OF))
        for dataset_id in run.dataset_ids:
            self._add_edge(LineageEdge(source=run.id, target=dataset_id,
                                       type=EdgeType.CONSUMED))

    def get_run(self, run_id: str) -> Run:
        return self._readable(self.backend.runs.get(run_id))

    def set_run_status(self, run_id: str, status: RunStatus | str,
                       error: Mapping[str, Any] | None = None) -> Run:
        """Move a run to `status`; start and end times follow the transition."""

        def change(run: Run) -> dict[str, Any] | None:
            target = check_transition(run, status)
            if target == run.status:
                return None
            now = utcnow()
            fields: dict[str, Any] = {"status": target}
            if target == RunStatus.RUNNING or run.start_time is None:
                fields["start_time"] = run.start_time or now
            if target.terminal:
                fields["end_time"] = now
            if error is not None:
                fields["error"] = dict(error)
            return fields

        return self._modify(self.backend.runs, run_id, change, "set_status")

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> Run:
        """Add params to a run; they are write-once.

        Logging a key again with an identical value does nothing; a different
        value raises ConflictError and nothing from the call is written.
        """
        if not isinstance(params, Mapping):
            raise InvalidInputError(f"params must be a dict, got {params!r}", params)
        new_params = codec.decode_value(codec.encode_value(dict(params), "params"))
        _check_param_count(new_params)

        def change(run: Run) -> dict[str, Any] | None:
            merged, changed = merge_params(run.id, run.params, new_params)
            return {"params": merged} if changed else None

        run = self._modify(self.backend.runs, run_id, change, "log_params")
        self._record_configuration(run)
        return run

    def set_tags(self, kind: str, entity_id: str, tags: Mapping[str, str]) -> Entity:
        """Set tags on any entity; unlike params, tags may change."""
        tags = self._tags(tags)
        check_tags(tags)
        repository = self._repository(kind)

        def change(entity: Entity) -> dict[str, Any] | None:
            merged = {**entity.tags, **tags}
            return None if merged == entity.tags else {"tags": merged}

        return self._modify(repository, entity_id, change, "set_tags")

    def delete_tag(self, kind: str, entity_id: str, key: str) -> Entity:
        repository = self._repository(kind)

        def change(entity: Entity) -> dict[str, Any] | None:
            if key not in entity.tags:
                return None
            return {"tags": {k: v for k, v in entity.tags.items() if k != key}}

        return self._modify(repository, entity_id, change, "delete_tag")

    def _repository(self, kind: str) -> EntityRepository:
        try:
            return self.backend.entity_repository(kind)
        except KeyError:
            raise InvalidInputError(
                f"unknown entity kind {kind!r}; expected experiment, run, dataset, "
                "model or model_version", kind) from None

    def log_artifact(self, run_id: str, name: str, uri: str) -> Run:
        """Record where an artifact lives; the bytes themselves are never stored."""
        check_key(name, "artifact name")
        if not isinstance(uri, str) or not uri:
            raise InvalidInputError(f"artifact URI must be a non-empty string, got {uri!r}",
                                    uri)

        def change(run: Run) -> dict[str, Any] | None:
            current = run.artifact_uris.get(name)
            if current == uri:
                return None
            if current is not None:
                raise ConflictError(
                    f"run {run.id!r} already has artifact {name!r} at {current!r}", name)
            return {"artifact_uris": {**run.artifact_uris, name: uri}}

        return self._modify(self.backend.runs, run_id, change, "log_artifact")

    def link_dataset(self, run_id: str, dataset_id: str) -> Run:
        """Record that a run consumed a dataset."""
        self.backend.datasets.get(dataset_id)

        def change(run: Run) -> dict[str, Any] | None:
            if dataset_id in run.dataset_ids:
                return None
            return {"dataset_ids": [*run.dataset_ids, dataset_id]}

        run = self._modify(self.backend.runs, run_id, change, "link_dataset")
        self._add_edge(LineageEdge(source=run_id, target=dataset_id,
                                   type=EdgeType.CONSUMED))
        return run

    def delete_run(self, run_id: str) -> Run:
        return self._soft_delete(self.backend.runs, run_id)

    def restore_run(self, run_id: str) -> Run:
        return self._restore(self.backend.runs, run_id)

    def purge_run(self, run_id: str) -> None:
        """Remove a run, its metrics (archived ones too) and its lineage node for good."""
        from mltrail.ops.cold import purge_archive

        run = self.backend.runs.get(run_id)
        self._authorize(Role.ADMIN, "purge", run.namespace, "run", run.id)
        purge_archive(self.backend, run)
        self.backend.metrics.delete_run(run.id)
        self.backend.lineage.delete_node(run.id)
        self.backend.runs.delete(run.id)
        from mltrail.discovery.configs import forget_configuration

        forget_configuration(self, run.id)
        self._audit("purge", "run", run.id, {"name": run.name})

    # ------------------------------------------------------------------
    # metrics
    # ------------------------------------------------------------------

    def log_metrics(
        self,
        run_id: str,
        points: Iterable[MetricPoint | Mapping[str, Any]],
        *,
        batch_id: str | None = None,
    ) -> int:
        """Append metric points to a run; return how many were written.

        Points are validated before anything is written. `batch_id` is the
        idempotency key: sending the same batch again with the same `batch_id`
        overwrites the points instead of adding them.
        """
        batch_id = batch_id or new_id()
        prepared = [self._prepare_point(run_id, point, batch_id, index)
                    for index, point in enumerate(points)]
        return self.append_prepared_points(run_id, prepared)

    def append_prepared_points(self, run_id: str, points: Sequence[MetricPoint],
                               series: Sequence[MetricSeries] = ()) -> int:
        """Append points and series that are validated and carry their seqs already.

        The Python API's buffered runs use this to avoid validating twice;
        everyone else calls `log_metrics`. Returns the number of points written.
        """
        for one in series:
            if one.run_id != run_id:
                raise InvalidInputError(
                    f"metric series for run {one.run_id!r} sent to run {run_id!r}",
                    one.run_id)
        run = self.backend.runs.get(run_id)
        self._authorize(Role.WRITER, "log_metrics", run.namespace, "run", run.id)
        for chunk in chunked(points, limits.MAX_METRIC_BATCH):
            self.backend.metrics.append(run_id, chunk)
        if series:
            self.backend.metrics.append_series(run_id, list(series))
        return len(points) + sum(len(one) for one in series)

    def log_metric(self, run_id: str, key: str, value: float, step: int = 0,
                   timestamp: datetime | None = None, **extra: Any) -> MetricPoint:
        try:
            point = MetricPoint(run_id=run_id, key=key, value=value, step=step,
                                timestamp=utcnow() if timestamp is None else timestamp,
                                **extra)
        except TypeError as error:
            raise InvalidInputError(f"invalid metric point for {key!r}: {error}",
                                    sorted(extra)) from None
        self.log_metrics(run_id, [point])
        return point

    @staticmethod
    def _prepare_point(run_id: str, point: MetricPoint | Mapping[str, Any],
                       batch_id: str, index: int) -> MetricPoint:
        if isinstance(point, MetricPoint):
            fields = {name: getattr(point, name) for name in MetricPoint.__slots__}
        elif isinstance(point, Mapping):
            fields = {"run_id": run_id, **point}
        else:
            raise InvalidInputError(f"expected a MetricPoint or dict, got {point!r}", point)
        if fields.get("run_id") != run_id:
            raise InvalidInputError(
                f"metric point for run {fields.get('run_id')!r} sent to run {run_id!r}",
                fields.get("run_id"))
        fields["seq"] = f"{batch_id}:{index:010d}"
        try:
            copy = MetricPoint(**fields)
        except TypeError as error:
            raise InvalidInputError(f"invalid metric point {fields!r}: {error}",
                                    fields) from None
        return copy.validate()

    def metric_history(
        self,
        run_id: str,
        key: str,
        *,
        min_step: int | None = None,
        max_step: int | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        max_points: int | None = None,
    ) -> Iterator[MetricPoint]:
        """Stream a metric's points in (step, timestamp, write) order.

        With `max_points`, the step range is cut into that many equal buckets
        and the last point of each bucket is kept (a downsampled view).
        """
        if self.policy.enabled:
            self.get_run(run_id)
        start_at = None if start is None else to_utc(start, "start")
        end_at = None if end is None else to_utc(end, "end")
        points = self.metric_reader.history(
            run_id, key, min_step=min_step, max_step=max_step, start=start_at, end=end_at
        )
        if max_points is None:
            return points
        if isinstance(max_points, bool) or not isinstance(max_points, int) \
                or max_points < 1:
            raise InvalidInputError(f"max_points must be a positive int, got {max_points!r}",
                                    max_points)
        return _downsample(points, max_points, self._step_span(run_id, key, min_step,
                                                                max_step))

    def _step_span(self, run_id: str, key: str, min_step: int | None,
                   max_step: int | None) -> tuple[int, int]:
        first = next(self.metric_reader.history(run_id, key, min_step=min_step,
                                                max_step=max_step), None)
        latest = self.metric_reader.latest_of(run_id, [key]).get(key)
        low = first.step if first else 0
        high = latest.step if latest else low
        if max_step is not None:
            high = min(high, max_step)
        return low, max(low, high)

    def latest_metrics(self, run_id: str) -> dict[str, MetricPoint]:
        if self.policy.enabled:
            self.get_run(run_id)
        return self.metric_reader.latest_of(run_id)

    def metric_keys(self, run_id: str) -> list[str]:
        return self.metric_reader.keys(run_id)

    # ------------------------------------------------------------------
    # datasets
    # ------------------------------------------------------------------

    def register_dataset(
        self,
        name: str,
        version: str = "1",
        *,
        namespace: str = DEFAULT_NAMESPACE,
        source_uri: str | None = None,
        content_hash: str | None = None,
        ingested_at: datetime | str | None = None,
        schema: Mapping[str, Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
        derived_from: Sequence[str] = (),
        id: str | None = None,
    ) -> Dataset:
        """Register a dataset version; registering identical content again returns it.

        `provenance` may name `source`, `preprocessing` (list of steps) and
        `pipeline`; a pipeline becomes a lineage node that produced the dataset.
        `derived_from` lists dataset ids this one was made from.
        """
        for parent_id in derived_from:
            self.backend.datasets.get(check_id(parent_id, "dataset id"))
        existing = self.backend.datasets.find_unique((namespace, name, str(version)))
        dataset = Dataset(
            id=id or (existing.id if existing else new_id()), name=name,
            version=str(version), namespace=namespace, source_uri=source_uri,
            content_hash=content_hash,
            ingested_at=to_utc(ingested_at) if ingested_at is not None else utcnow(),
            schema=_as_dict(schema, "schema"), provenance=_as_dict(provenance, "provenance"),
            description=description, tags=self._tags(tags),
        )
        if existing is not None:
            if not _same_dataset(existing, dataset):
                raise AlreadyExistsError(
                    f"dataset {name!r} version {dataset.version!r} already exists with "
                    f"different content (id {existing.id!r}); register a new version",
                    (name, dataset.version),
                )
            dataset = existing
        else:
            dataset = self._insert(self.backend.datasets, dataset)
        self._record_dataset_lineage(dataset, derived_from)
        return dataset

    def _record_dataset_lineage(self, dataset: Dataset, derived_from: Sequence[str]) -> None:
        self.backend.lineage.put_node(LineageNode(
            id=dataset.id, kind=NodeKind.DATASET, label=f"{dataset.name}@{dataset.version}"))
        for parent_id in derived_from:
            self._add_edge(LineageEdge(source=dataset.id, target=parent_id,
                                       type=EdgeType.DERIVED_FROM))
        pipeline = dataset.provenance.get("pipeline")
        if isinstance(pipeline, str) and pipeline:
            pipeline_id = "pipeline:" + codec_digest(pipeline)
            self.backend.lineage.put_node(LineageNode(id=pipeline_id,
                                                      kind=NodeKind.PIPELINE,
                                                      label=pipeline))
            self._add_edge(LineageEdge(source=pipeline_id, target=dataset.id,
                                       type=EdgeType.PRODUCED))

    def get_dataset(self, id_or_name: str, version: str | None = None, *,
                    namespace: str = DEFAULT_NAMESPACE) -> Dataset:
        """Return a dataset by id, or by name and version (the newest without one)."""
        if version is None:
            try:
                return self.backend.datasets.get(id_or_name)
            except NotFoundError:
                pass
            versions = [d for d in self.list_datasets(namespace=namespace)
                        if d.name == id_or_name]
            if not versions:
                raise NotFoundError(f"dataset {id_or_name!r} not found", id_or_name)
            return max(versions, key=lambda d: (d.created_at, d.id))
        found = self.backend.datasets.find_unique((namespace, id_or_name, str(version)))
        if found is None:
            raise NotFoundError(f"dataset {id_or_name!r} version {version!r} not found",
                                (id_or_name, version))
        return found

    def list_datasets(self, *, namespace: str | None = None,
                      filter: str | None = None) -> Iterator[Dataset]:
        yield from self._iterate(self.backend.datasets, self._plain_view, filter,
                                 namespace, True, order_by=["name", "created_at"])

    # ------------------------------------------------------------------
    # models and versions
    # ------------------------------------------------------------------

    def create_model(self, name: str, *, namespace: str = DEFAULT_NAMESPACE,
                     description: str | None = None,
                     tags: Mapping[str, str] | None = None, id: str | None = None,
                     created_at: datetime | str | None = None) -> Model:
        model = Model(id=id or new_id(), name=name, namespace=namespace,
                      description=description, tags=self._tags(tags),
                      created_at=_time_or_now(created_at, "created_at"))
        return self._insert(self.backend.models, model)

    def get_or_create_model(self, name: str, *,
                            namespace: str = DEFAULT_NAMESPACE) -> Model:
        found = self.backend.models.find_unique((namespace, name))
        if found is not None:
            return found
        try:
            return self.create_model(name, namespace=namespace)
        except AlreadyExistsError:
            found = self.backend.models.find_unique((namespace, name))
            if found is None:
                raise
            return found

    def get_model(self, id_or_name: str, *, namespace: str = DEFAULT_NAMESPACE) -> Model:
        try:
            return self._readable(self.backend.models.get(id_or_name))
        except NotFoundError:
            found = self.backend.models.find_unique((namespace, id_or_name))
            if found is None:
                raise NotFoundError(f"model {id_or_name!r} not found", id_or_name) from None
            return self._readable(found)

    def list_models(self, *, namespace: str | None = None, filter: str | None = None,
                    include_deleted: bool = False) -> Iterator[Model]:
        yield from self._iterate(self.backend.models, self._plain_view, filter,
                                 namespace, include_deleted, order_by=["name"])

    def register_model_version(
        self,
        model: str,
        *,
        run_id: str | None = None,
        git_commit: str | None = None,
        script_hash: str | None = None,
        script_uri: str | None = None,
        reproducibility_hash: str | None = None,
        artifact_uri: str | None = None,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        id: str | None = None,
        created_at: datetime | str | None = None,
    ) -> ModelVersion:
        """Register the next version of a model: numbers are 1, 2, 3 ... with no gaps.

        Concurrent registrations get distinct consecutive numbers. Pass `id` to
        make the call retryable: a retry with the same id returns the version
        already registered instead of adding another.
        """
        target = self.get_model(model, namespace=namespace)
        version_id = id or new_id()
        if run_id is not None:
            self.backend.runs.get(check_id(run_id, "run id"))
        try:
            existing = self.backend.model_versions.get(version_id)
        except NotFoundError:
            existing = None
        if existing is not None:
            if existing.model_id != target.id or existing.run_id != run_id:
                raise AlreadyExistsError(
                    f"model version id {version_id!r} is already used for model "
                    f"{existing.model_id!r} version {existing.version}", version_id)
            return existing
        version = self._insert_next_version(target, lambda number: ModelVersion(
            id=version_id, model_id=target.id, version=number, run_id=run_id,
            git_commit=git_commit, script_hash=script_hash, script_uri=script_uri,
            reproducibility_hash=reproducibility_hash, artifact_uri=artifact_uri,
            description=description, tags=self._tags(tags),
            created_at=_time_or_now(created_at, "created_at"),
        ))
        self.backend.lineage.put_node(LineageNode(
            id=version.id, kind=NodeKind.MODEL_VERSION,
            label=f"{target.name} v{version.version}"))
        if run_id is not None:
            self._add_edge(LineageEdge(source=run_id, target=version.id,
                                       type=EdgeType.PRODUCED))
        return version

    def _insert_next_version(self, model: Model,
                             build: Callable[[int], ModelVersion]) -> ModelVersion:
        for attempt in range(MAX_UPDATE_ATTEMPTS * 5):
            number = self._max_version(model.id) + 1
            version = build(number)
            try:
                self.backend.model_versions.insert(version)
            except AlreadyExistsError:
                try:
                    stored = self.backend.model_versions.get(version.id)
                except NotFoundError:
                    time.sleep(random.uniform(0, 0.003 * (attempt + 1)))
                    continue
                return stored
            self._audit("create", "model_version", version.id,
                        {"record": version.to_record()})
            return version
        raise ConflictError(f"could not allocate a version number for model {model.id!r}",
                            model.id)

    def _max_version(self, model_id: str) -> int:
        versions = self.backend.model_versions.scan(
            ScanRequest(filter=parse_optional(f"model_id = {_quote(model_id)}")))
        return max((v.version for v in versions if v.model_id == model_id), default=0)

    def get_model_version(self, model: str, version: int | str, *,
                          namespace: str = DEFAULT_NAMESPACE) -> ModelVersion:
        """Return a version by number or by alias (such as `production`)."""
        target = self.get_model(model, namespace=namespace)
        number = version
        if isinstance(version, str) and not version.isdigit():
            if version not in target.aliases:
                raise NotFoundError(f"model {target.name!r} has no alias {version!r}",
                                    version)
            number = target.aliases[version]
        found = self.backend.model_versions.find_unique((target.id, int(number)))
        if found is None:
            raise NotFoundError(f"model {target.name!r} has no version {number!r}", number)
        return found

    def list_model_versions(self, model: str, *, namespace: str = DEFAULT_NAMESPACE,
                            include_deleted: bool = False) -> list[ModelVersion]:
        """Return the version history of a model, oldest first."""
        target = self.get_model(model, namespace=namespace)
        versions = self.backend.model_versions.scan(
            ScanRequest(filter=parse_optional(f"model_id = {_quote(target.id)}")))
        kept = [v for v in versions if v.model_id == target.id
                and (include_deleted or v.deleted_at is None)]
        return sorted(kept, key=lambda v: v.version)

    def set_alias(self, model: str, alias: str, version: int, *,
                  namespace: str = DEFAULT_NAMESPACE) -> Model:
        """Point `alias` at a version; the previous target is kept for rollback."""
        check_name(alias, "alias")
        target = self.get_model(model, namespace=namespace)
        chosen = self.get_model_version(target.id, int(version))
        if chosen.deleted_at is not None:
            raise ConflictError(f"version {chosen.version} of model {target.name!r} is "
                                "deleted; restore it first", chosen.version)

        def change(current: Model) -> dict[str, Any] | None:
            if current.aliases.get(alias) == chosen.version:
                return None
            history = dict(current.alias_history)
            if alias in current.aliases:
                history[alias] = [*history.get(alias, []), current.aliases[alias]]
            return {"aliases": {**current.aliases, alias: chosen.version},
                    "alias_history": history}

        return self._modify(self.backend.models, target.id, change, "set_alias")

    def rollback_alias(self, model: str, alias: str, *,
                       namespace: str = DEFAULT_NAMESPACE) -> Model:
        """Point `alias` back at the version it named before its last change."""
        target = self.get_model(model, namespace=namespace)

        def change(current: Model) -> dict[str, Any] | None:
            history = list(current.alias_history.get(alias, []))
            if not history:
                raise ConflictError(
                    f"alias {alias!r} of model {current.name!r} has no earlier version "
                    "to roll back to", alias)
            previous = history.pop()
            return {"aliases": {**current.aliases, alias: previous},
                    "alias_history": {**current.alias_history, alias: history}}

        return self._modify(self.backend.models, target.id, change, "rollback_alias")

    def delete_model_version(self, model: str, version: int, *,
                             namespace: str = DEFAULT_NAMESPACE) -> ModelVersion:
        """Soft-delete a version; its number is never reused and it can be restored."""
        found = self.get_model_version(model, version, namespace=namespace)
        owner = self.backend.models.get(found.model_id)
        in_use = [a for a, v in owner.aliases.items() if v == found.version]
        if in_use:
            raise ConflictError(
                f"version {found.version} of model {owner.name!r} is the target of "
                f"alias(es) {in_use}; move them first", in_use)
        return self._soft_delete(self.backend.model_versions, found.id)

    def restore_model_version(self, model: str, version: int, *,
                              namespace: str = DEFAULT_NAMESPACE) -> ModelVersion:
        found = self.get_model_version(model, version, namespace=namespace)
        return self._restore(self.backend.model_versions, found.id)

    def delete_model(self, model: str, *, namespace: str = DEFAULT_NAMESPACE) -> Model:
        return self._soft_delete(self.backend.models,
                                 self.get_model(model, namespace=namespace).id)

    def restore_model(self, model: str, *, namespace: str = DEFAULT_NAMESPACE) -> Model:
        return self._restore(self.backend.models,
                             self.get_model(model, namespace=namespace).id)

    # ------------------------------------------------------------------
    # lineage
    # ------------------------------------------------------------------

    def add_lineage_node(self, node_id: str, kind: NodeKind | str,
                         label: str | None = None) -> LineageNode:
        """Add a node that is not an entity of the store, such as a pipeline."""
        check_id(node_id, "lineage node id")
        try:
            node_kind = NodeKind(kind)
        except ValueError:
            known = ", ".join(k.value for k in NodeKind)
            raise InvalidInputError(f"lineage node kind {kind!r} is invalid; expected one "
                                    f"of {known}", kind) from None
        node = LineageNode(id=node_id, kind=node_kind, label=label)
        self._authorize(Role.WRITER, "add_lineage_node", None, "lineage", node_id)
        self.backend.lineage.put_node(node)
        return node

    def add_lineage_edge(self, source: str, type: EdgeType | str,
                         target: str) -> LineageEdge:
        """Add a typed edge; both nodes must exist and the edge may not close a cycle."""
        try:
            edge_type = EdgeType(type)
        except ValueError:
            known = ", ".join(t.value for t in EdgeType)
            raise InvalidInputError(f"lineage edge type {type!r} is invalid; expected one "
                                    f"of {known}", type) from None
        edge = LineageEdge(source=source, target=target, type=edge_type)
        self._authorize(Role.WRITER, "add_lineage_edge", None, "lineage", source)
        self._add_edge(edge)
        return edge

    def _add_edge(self, edge: LineageEdge) -> None:
        for node_id in (edge.source, edge.target):
            self.backend.lineage.get_node(node_id)
        if edge.source == edge.target:
            raise ConflictError(f"lineage edge {edge.key!r} points at its own source",
                                edge.key)
        # A new edge upstream -> downstream closes a cycle when the upstream end
        # is already reachable downstream of the downstream end.
        reachable = traverse(self.backend.lineage, edge.downstream, "downstream",
                             limits.MAX_LINEAGE_DEPTH * 100, with_details=False)
        if edge.upstream in reachable.nodes:
            raise ConflictError(
                f"lineage edge {edge.key!r} would close a cycle: {edge.upstream!r} is "
                f"already downstream of {edge.downstream!r}", edge.key)
        existing = {e.key for e in self.backend.lineage.edges(edge.downstream, "upstream")}
        if edge.key in existing:
            return
        self.backend.lineage.add_edge(edge)
        self._audit("add_edge", "lineage", edge.source, {"edge": edge.to_record()})

    def upstream(self, node_id: str, depth: int = 10) -> LineageGraph:
        """Return what `node_id` came from, up to `depth` hops."""
        return self._traverse(node_id, "upstream", depth)

    def downstream(self, node_id: str, depth: int = 10) -> LineageGraph:
        """Return what came from `node_id`, up to `depth` hops."""
        return self._traverse(node_id, "downstream", depth)

    def _traverse(self, node_id: str, direction: str, depth: int) -> LineageGraph:
        if isinstance(depth, bool) or not isinstance(depth, int) or \
                not 1 <= depth <= limits.MAX_LINEAGE_DEPTH:
            raise InvalidInputError(
                f"depth {depth!r} is invalid; expected 1 to {limits.MAX_LINEAGE_DEPTH}",
                depth)
        self._authorize(Role.READER, "lineage", None, "lineage", node_id)
        self.backend.lineage.get_node(node_id)
        return traverse(self.backend.lineage, node_id, direction, depth)

    # ------------------------------------------------------------------
    # search and query templates
    # ------------------------------------------------------------------

    def search_runs(
        self,
        filter: str | Expr | None = None,
        *,
        experiment_ids: Sequence[str] | None = None,
        namespace: str | None = None,
        order_by: Sequence[str] | str | None = None,
        page_size: int = 100,
        page_token: str | None = None,
        include_deleted: bool = False,
    ) -> Page[Run]:
        """Return one page of runs matching a filter, in the requested order.

        The order always ends with the run id, so ties are broken the same way on
        every call, and `page_token` continues exactly where the last page ended.
        A token only works with the same filter, order and scope.
        """
        return self._search(self.backend.runs, self._run_view_factory, filter,
                            namespace, include_deleted, order_by, page_size, page_token,
                            extra_scope=tuple(experiment_ids or ()),
                            experiment_ids=experiment_ids)

    def iter_runs(self, filter: str | Expr | None = None, **options: Any) -> Iterator[Run]:
        """Stream every run matching a filter, page by page, with bounded memory."""
        options.setdefault("page_size", 500)
        token = None
        while True:
            page = self.search_runs(filter, page_token=token, **options)
            yield from page.items
            token = page.next_page_token
            if token is None:
                return

    def _search(self, repository, view_factory, filter, namespace, include_deleted,
                order_by, page_size, page_token, extra_scope=(), experiment_ids=None):
        if isinstance(page_size, bool) or not isinstance(page_size, int) or \
                not 1 <= page_size <= limits.MAX_PAGE_SIZE:
            raise InvalidInputError(
                f"page_size {page_size!r} is invalid; expected 1 to {limits.MAX_PAGE_SIZE}",
                page_size)
        self._authorize(Role.READER, "search", namespace)
        expr = parse_optional(filter) if isinstance(filter, str) or filter is None \
            else filter
        expr = self.pseudonymizer.rewrite(expr)
        if namespace is not None:
            check_namespace(namespace)
        order = parse_order(order_by)
        scope_filter = _scope_filter(expr, experiment_ids)
        query_id = fingerprint(repository.kind, scope_filter, order, namespace,
                               include_deleted, extra_scope)
        after = None if page_token is None else decode_token(page_token, query_id)
        needs_metrics = any(f and f[0] == "metrics"
                            for f in fields_of(expr) | {k.field for k in order})
        native = {k.field[0] for k in order if len(k.field) == 1}
        presorted = bool(order) and all(len(k.field) == 1 for k in order) and \
            native <= self.backend.capabilities.native_order_fields
        request = ScanRequest(namespace=namespace, filter=scope_filter,
                              order=order if presorted else (),
                              after=after if presorted else None)
        candidates = repository.scan(request)
        view_of = view_factory(scope_filter, include_deleted, needs_metrics)
        page = page_of(_batched_views(candidates, view_of), lambda pair: pair[1],
                       order, page_size, after, query_id, presorted)
        return Page([entity for entity, _ in page.items], page.next_page_token)

    def _run_view_factory(self, expr, include_deleted, needs_metrics):
        def views(runs: list[Run]) -> list[tuple[Run, dict | None]]:
            latest = self.metric_reader.latest(runs) \
                if needs_metrics else {}
            result = []
            for run in runs:
                if not self._may_read(run.namespace) or \
                        run.deleted_at is not None and not include_deleted:
                    result.append((run, None))
                    continue
                view = run_view(run, latest.get(run.id, {}))
                result.append((run, view if matches(expr, view) else None))
            return result
        return views

    def _plain_view(self, expr, include_deleted, needs_metrics):
        def views(entities: list[Entity]) -> list[tuple[Entity, dict | None]]:
            result = []
            for entity in entities:
                deleted = getattr(entity, "deleted_at", None) is not None
                hidden = deleted and not include_deleted or \
                    not self._may_read(getattr(entity, "namespace", None))
                view = None if hidden else vars(entity)
                result.append((entity, view if view is not None and matches(expr, view)
                               else None))
            return result
        return views

    def _may_read(self, namespace: str | None) -> bool:
        if not self.policy.enabled or namespace is None:
            return True
        return self.policy.allows(self.actor, Role.READER, namespace)

    def _iterate(self, repository, view_factory, filter, namespace, include_deleted,
                 order_by=None) -> Iterator:
        token = None
        while True:
            page = self._search(repository, view_factory, filter, namespace,
                                include_deleted, order_by, 500, token)
            yield from page.items
            token = page.next_page_token
            if token is None:
                return

    def best_runs(self, metric: str, k: int = 5, *, mode: str = "max",
                  filter: str | None = None,
                  experiment_ids: Sequence[str] | None = None) -> list[tuple[Run, float]]:
        """Return the k runs with the best latest value of `metric`; NaN ranks last."""
        if mode not in ("max", "min"):
            raise InvalidInputError(f"mode {mode!r} is invalid; expected 'max' or 'min'",
                                    mode)
        direction = "desc" if mode == "max" else "asc"
        field = f"metrics.{_quote_key(metric)}"
        # Combine syntax trees, not text, so an error in `filter` reports its
        # position within the caller's own text.
        present = Exists(("metrics", metric))
        user = parse_optional(filter) if isinstance(filter, str) else filter
        combined = present if user is None else And((user, present))
        page = self.search_runs(combined, experiment_ids=experiment_ids,
                                order_by=[f"{field} {direction}"], page_size=k)
        latest = self.metric_reader.latest(page.items, [metric])
        return [(run, latest[run.id][metric].value) for run in page.items]

    def aggregate(
        self,
        metric: str,
        *,
        group_by: str | None = None,
        filter: str | None = None,
        experiment_ids: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Summarise the latest value of `metric` across runs, per group.

        `group_by` names a field such as `params.optimizer` or `tags.team`; runs
        without it form the group None. Each group reports count, mean, median,
        sample standard deviation, min, max and a 95% confidence interval of the
        mean (Student's t).
        """
        group_field = None
        if group_by is not None:
            group_field = parse_order([group_by])[0].field
        groups: dict[str, GroupStats] = {}
        runs = self.iter_runs(filter, experiment_ids=experiment_ids)
        for batch in chunked(runs, 500):
            latest = self.metric_reader.latest(batch, [metric])
            for run in batch:
                point = latest.get(run.id, {}).get(metric)
                if point is None:
                    continue
                group = None
                if group_field is not None:
                    value = resolve(run_view(run, {}), group_field)
                    group = None if value is MISSING else value
                label = codec.dumps(group)
                groups.setdefault(label, GroupStats(group)).add(point.value)
        # Groups sort like an ascending order key: numbers, strings, booleans,
        # then runs without the field (group None).
        ordered = sorted(groups.values(), key=lambda g: (
            g.group is None, sort_value(g.group, False), codec.dumps(g.group)))
        return [group.summary() for group in ordered]

    def compare_runs(self, run_ids: Sequence[str]) -> dict[str, Any]:
        """Return params and latest metrics of several runs side by side."""
        runs = [self.backend.runs.get(run_id) for run_id in run_ids]
        latest = self.metric_reader.latest(runs)
        param_keys = sorted({codec.join_path(p) for r in runs for p in r.params_flat})
        metric_keys = sorted({k for r in runs for k in latest.get(r.id, {})})
        return {
            "runs": [{"id": r.id, "name": r.name, "status": r.status.value} for r in runs],
            "params": {key: [r.params_flat.get(codec.split_path(key), None) for r in runs]
                       for key in param_keys},
            "metrics": {key: [_value_or_none(latest.get(r.id, {}).get(key)) for r in runs]
                        for key in metric_keys},
        }

    # ------------------------------------------------------------------
    # audit
    # ------------------------------------------------------------------

    def audit_log(self, entity_id: str | None = None) -> Iterator[AuditEvent]:
        self._authorize(Role.READER, "audit_log", None, "audit", entity_id or "-")
        if entity_id is None:
            return self.backend.audit.scan()
        return self.backend.audit.for_entity(entity_id)

    def verify_audit(self) -> VerifyResult:
        return verify_chain(self.backend.audit.scan())


# ----------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------


def run_view(run: Run, latest: Mapping[str, MetricPoint]) -> dict[str, Any]:
    """Return the fields a run filter can name; `metrics` holds latest values."""
    view = dict(vars(run))
    view["status"] = run.status.value
    view["metrics"] = {key: point.value for key, point in latest.items()}
    view["experiment"] = run.experiment_id
    return view


def _batched_views(candidates: Iterable, view_of, size: int = 500) -> Iterator[tuple]:
    for batch in chunked(candidates, size):
        yield from view_of(batch)


def merge_params(run_id: str, current: dict[str, Any],
                 new: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Merge write-once params; raise ConflictError on any changed value."""
    merged = codec.decode_value(codec.encode_value(current))
    changed = False
    for path, value in codec.flatten(new):
        node = merged
        for depth, segment in enumerate(path[:-1]):
            existing = node.get(segment)
            if existing is None and segment not in node:
                node[segment] = {}
            elif not isinstance(existing, dict) or existing == {}:
                raise ConflictError(
                    f"run {run_id!r} param {codec.join_path(path[:depth + 1])!r} is "
                    f"already {existing!r}; cannot nest {codec.join_path(path)!r} under it",
                    codec.join_path(path))
            node = node[segment]
        leaf = path[-1]
        if leaf in node:
            if not codec.values_equal(node[leaf], value):
                raise ConflictError(
                    f"run {run_id!r} param {codec.join_path(path)!r} is already "
                    f"{node[leaf]!r}; cannot change it to {value!r} (params are "
                    "write-once)", codec.join_path(path))
            continue
        node[leaf] = value
        changed = True
    Run(experiment_id="x", name="x", params=merged)  # validates the merged size
    return merged, changed


def _status_of(value: Any) -> RunStatus:
    try:
        return RunStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in RunStatus)
        raise InvalidInputError(f"run status {value!r} is invalid; expected one of {known}",
                                value) from None


def _optional_time(value: datetime | str | None, what: str) -> datetime | None:
    return None if value is None else to_utc(value, what)


def _time_or_now(value: datetime | str | None, what: str) -> datetime:
    return utcnow() if value is None else to_utc(value, what)


def _as_dict(value: Any, what: str) -> dict[str, Any]:
    """Copy an optional mapping argument, rejecting anything that is not a mapping."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{what} must be a dict, got {value!r}", value)
    return dict(value)


def _check_param_count(params: Mapping[str, Any]) -> None:
    count = sum(1 for _ in codec.flatten(dict(params)))
    if count > limits.MAX_PARAMS_PER_CALL:
        raise InvalidInputError(
            f"{count} params in one call; the maximum is {limits.MAX_PARAMS_PER_CALL}",
            count)


def _same_dataset(a: Dataset, b: Dataset) -> bool:
    fields = ("name", "version", "namespace", "source_uri", "content_hash")
    return all(getattr(a, f) == getattr(b, f) for f in fields) and \
        codec.values_equal(a.provenance, b.provenance) and \
        codec.values_equal(a.schema, b.schema)


def _scope_filter(expr: Expr | None, experiment_ids: Sequence[str] | None) -> Expr | None:
    if not experiment_ids:
        return expr
    from mltrail.query.ast import And, In

    scope = In(("experiment_id",), tuple(experiment_ids))
    return scope if expr is None else And((scope, expr))


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_key(key: str) -> str:
    return "`" + key.replace("`", "``") + "`"


def _auditable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, RunStatus):
        return value.value
    return codec.decode_value(codec.encode_value(value))


def _value_or_none(point: MetricPoint | None) -> float | None:
    return None if point is None else point.value


def codec_digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _downsample(points: Iterator[MetricPoint], max_points: int,
                span: tuple[int, int]) -> Iterator[MetricPoint]:
    low, high = span
    width = max(1, -(-(high - low + 1) // max_points))
    bucket = None
    last = None
    for point in points:
        current = (point.step - low) // width
        if bucket is not None and current != bucket:
            yield last
        bucket, last = current, point
    if last is not None:
        yield last
