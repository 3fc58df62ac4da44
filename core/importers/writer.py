"""Idempotent writes of imported records into a Store, or counting only in a dry run.

Importers read a source format into entity fields with deterministic ids, and
this writer decides for each one whether it is new, changed or already there.
Running an import twice therefore adds nothing the second time.

Entities are created through the Store API, which keeps the source's creation,
start and end times, checks access and writes the audit chain. Three fields
have no Store API call that keeps the source's value: a run's error, the
source's deletion time of an experiment or run, and the end time when a stored
run moves on to a later status. `_replace` writes those through the backend's
compare-and-set update after the same access check, and audits each change.
NOTE: `_replace` can give way to the Store API once `create_run` accepts
`error` and `deleted_at`, `delete_experiment`/`delete_run` accept the deletion
time, and `set_run_status` accepts the time of the change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any

from mltrail import codec, limits
from mltrail.access import Role
from mltrail.audit import append_event
from mltrail.backend import EntityRepository, chunked
from mltrail.clock import isoformat
from mltrail.domain import (
    STATUS_TRANSITIONS,
    EdgeType,
    Entity,
    Experiment,
    LineageEdge,
    MetricPoint,
    NodeKind,
    Run,
    RunStatus,
    check_mapping,
)
from mltrail.errors import (
    BackendUnavailableError,
    ConflictError,
    InvalidInputError,
    MltrailError,
    NotFoundError,
    PermissionDeniedError,
)
from mltrail.importers.summary import ImportSummary, ProgressReporter
from mltrail.importers.values import (
    SOURCE_FORMAT_TAG,
    SOURCE_ID_TAG,
    digest,
    fit_tags,
    to_plain,
)
from mltrail.store import Store, merge_params

logger = logging.getLogger(__name__)

MAX_UPDATE_ATTEMPTS = 20

# Errors that end the whole import: the store itself cannot be used.
FATAL_ERRORS = (BackendUnavailableError, PermissionDeniedError)

# Run fields holding free-form mappings and the size limit each must meet.
RUN_MAPPINGS = {
    "params": limits.MAX_PARAMS_BYTES,
    "environment": limits.MAX_ATTRIBUTES_BYTES,
    "resources": limits.MAX_ATTRIBUTES_BYTES,
    "seeds": limits.MAX_ATTRIBUTES_BYTES,
    "code_version": limits.MAX_ATTRIBUTES_BYTES,
    "error": limits.MAX_ATTRIBUTES_BYTES,
}


class ImportWriter:
    """Writes imported records into `store`, or with `dry_run` only counts them."""

    def __init__(
        self,
        store: Store,
        source_format: str,
        summary: ImportSummary,
        *,
        dry_run: bool,
        namespace: str,
        progress: ProgressReporter,
    ) -> None:
        self.store = store
        self.backend = store.backend
        self.format = source_format
        self.summary = summary
        self.dry_run = dry_run
        self.namespace = namespace
        self.progress = progress
        # Ids (and edge keys) a dry run would have created, so later records may
        # refer to them and repeats count as unchanged.
        self._planned: set[str] = set()

    # ------------------------------------------------------------------
    # helpers
    # ------------------------------------------------------------------

    def source_tags(self, source_id: str) -> dict[str, str]:
        """Return the tags that keep the source's id and format on an entity."""
        return {SOURCE_ID_TAG: source_id, SOURCE_FORMAT_TAG: self.format}

    @contextlib.contextmanager
    def guard(self, kind: str, reference: str) -> Iterator[None]:
        """Turn a failure on one item into a skip, so the rest of the import goes on.

        Errors that make the store unusable propagate and end the import.
        """
        try:
            yield
        except FATAL_ERRORS:
            raise
        except (MltrailError, OSError, UnicodeDecodeError, ValueError) as error:
            self.summary.skip(kind, reference, _one_line(error))
        except (AttributeError, KeyError, TypeError) as error:
            # A field of an unexpected type in a hand-edited or truncated file;
            # the traceback is logged in case it is a bug in the importer.
            logger.debug("skipped %s %s", kind, reference, exc_info=True)
            self.summary.skip(
                kind,
                reference,
                f"unexpected structure: {type(error).__name__}: {_one_line(error)}",
            )

    def fit_tags(
        self, tags: Mapping[str, Any], kind: str, reference: str
    ) -> dict[str, str]:
        def skip(key: str, reason: str) -> None:
            self.summary.skip("tag", f"{reference} {key}", reason)

        return fit_tags(dict(tags), skip)

    def plain(self, value: Any, kind: str, reference: str) -> Any:
        """Return `value` as plain data, noting each conversion in the summary."""

        def note(change: str) -> None:
            self.summary.note(
                kind, f"{reference} {change}", "value converted to plain data"
            )

        return to_plain(value, note)

    def exists(self, repository: EntityRepository, entity_id: str) -> Entity | None:
        try:
            return repository.get(entity_id)
        except NotFoundError:
            return None

    def known(self, repository: EntityRepository, entity_id: str) -> bool:
        """Tell whether an entity exists, or would exist at this point of a dry run."""
        return (
            entity_id in self._planned or self.exists(repository, entity_id) is not None
        )

    def _replace(
        self,
        repository: EntityRepository,
        entity_id: str,
        change: Callable[[Entity], dict[str, Any] | None],
        action: str,
    ) -> bool:
        """Apply `change` with compare-and-set, retrying when another writer won.

        Returns whether anything was written; `change` returns None for no change.
        The principal needs the role an import needs in the entity's namespace.
        """
        for _ in range(MAX_UPDATE_ATTEMPTS):
            current = repository.get(entity_id)
            self.authorize(
                Role.ADMIN, action, self.namespace, repository.kind, entity_id
            )
            fields = change(current)
            if not fields:
                return False
            try:
                repository.update(current.touched(**fields))
            except ConflictError:
                continue
            self._audit(
                action,
                repository.kind,
                entity_id,
                {key: _auditable(value) for key, value in fields.items()},
            )
            return True
        raise ConflictError(
            f"{repository.kind} {entity_id!r} kept changing while being "
            f"imported; gave up after {MAX_UPDATE_ATTEMPTS} attempts",
            entity_id,
        )

    def authorize(
        self,
        required: Role,
        operation: str,
        namespace: str | None,
        entity_type: str = "store",
        entity_id: str = "-",
    ) -> None:
        """Check the principal's role as the Store does; audit and raise on denial."""
        try:
            self.store.policy.check(self.store.actor, required, operation, namespace)
        except PermissionDeniedError as error:
            self._audit("denied", entity_type, entity_id, dict(error.value))
            raise

    def _audit(
        self, action: str, entity_type: str, entity_id: str, details: dict[str, Any]
    ) -> None:
        append_event(
            self.backend.audit,
            actor=self.store.actor,
            action=action,
            entity_type=entity_type,
            entity_id=entity_id,
            details=details,
        )

    def _merge_tags(self, kind: str, entity: Entity, tags: Mapping[str, str]) -> bool:
        """Set tags that are new or changed; return whether any were.

        The source id and format tags of an entity are never replaced: an
        experiment or model that two sources share keeps the first one's.
        """
        identity = (SOURCE_ID_TAG, SOURCE_FORMAT_TAG)
        # Compare with what the store would keep, pseudonyms applied.
        tags = self.store.pseudonymizer.tags(dict(tags)) or {}
        changed = {
            k: v
            for k, v in tags.items()
            if entity.tags.get(k) != v and not (k in identity and k in entity.tags)
        }
        if not changed:
            return False
        if not self.dry_run:
            self.store.set_tags(kind, entity.id, changed)
        return True

    def _propagate_deletion(
        self,
        repository: EntityRepository,
        entity: Entity,
        deleted_at: datetime | None,
        reference: str,
    ) -> bool:
        """Mark a stored entity deleted when the source deleted it; never undelete."""
        if deleted_at is None:
            if entity.deleted_at is not None:
                self.summary.note(
                    entity.kind,
                    reference,
                    "deleted in the store but not in the source; left deleted",
                )
            return False
        if entity.deleted_at is not None:
            return False
        if not self.dry_run:
            self._replace(
                repository,
                entity.id,
                lambda e: None if e.deleted_at else {"deleted_at": deleted_at},
                "delete",
            )
        return True

    # ------------------------------------------------------------------
    # experiments
    # ------------------------------------------------------------------

    def experiment(
        self,
        *,
        id: str,
        name: str,
        reference: str,
        description: str | None = None,
        tags: Mapping[str, Any] | None = None,
        created_at: datetime | None = None,
        deleted_at: datetime | None = None,
    ) -> str | None:
        """Create or update an experiment; return the id its runs go into, or None.

        An experiment that already has the name in the namespace is reused,
        whatever its id, because names are unique per namespace.
        """
        tags = self.fit_tags(tags or {}, "experiment", reference)
        repository = self.backend.experiments
        existing = self.exists(repository, id) or repository.find_unique(
            (self.namespace, name)
        )
        if existing is not None:
            if existing.id != id:
                self.summary.note(
                    "experiment",
                    reference,
                    "an experiment with this name exists; runs go into it",
                )
            changed = self._merge_tags("experiment", existing, tags)
            changed |= self._propagate_deletion(
                repository, existing, deleted_at, reference
            )
            self.summary.count("updated" if changed else "unchanged", "experiment")
            return existing.id
        if id in self._planned:
            return id
        # Validate before counting, so a dry run skips what a real import would.
        Experiment(
            id=id,
            name=name,
            namespace=self.namespace,
            description=description,
            tags=tags,
        )
        self.summary.count("created", "experiment")
        if self.dry_run:
            self._planned.add(id)
            return id
        stored = self.store.create_experiment(
            name,
            namespace=self.namespace,
            description=description,
            tags=tags,
            id=id,
            created_at=created_at,
        )
        if deleted_at is not None:
            self._replace(
                repository,
                stored.id,
                lambda e: {"deleted_at": deleted_at} if e.deleted_at is None else None,
                "delete",
            )
        return stored.id

    # ------------------------------------------------------------------
    # runs
    # ------------------------------------------------------------------

    def run(
        self,
        *,
        id: str,
        experiment_id: str,
        name: str,
        status: RunStatus,
        reference: str,
        created_at: datetime,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        deleted_at: datetime | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        trainer: str | None = None,
        environment: Mapping[str, Any] | None = None,
        resources: Mapping[str, Any] | None = None,
        seeds: Mapping[str, Any] | None = None,
        code_version: Mapping[str, Any] | None = None,
        dataset_ids: Sequence[str] = (),
        artifact_uris: Mapping[str, str] | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> tuple[str, bool] | None:
        """Create or update a run; return (run id, whether it was created), or None.

        A run that exists is brought forward: a later status of the source with
        its end time, new params and tags, artifacts and datasets are added.
        Params stay write-once, so a param whose value changed is reported.
        """
        fields = self._run_mappings(
            reference,
            params=params,
            environment=environment,
            resources=resources,
            seeds=seeds,
            code_version=code_version,
            error=error,
        )
        datasets = [
            d for d in dict.fromkeys(dataset_ids) if self._dataset_known(d, reference)
        ]
        run = Run(
            id=id,
            experiment_id=experiment_id,
            namespace=self.namespace,
            name=name,
            status=status,
            tags=self.fit_tags(tags or {}, "run", reference),
            trainer=trainer,
            dataset_ids=datasets,
            start_time=start_time,
            end_time=end_time,
            created_at=created_at,
            deleted_at=deleted_at,
            artifact_uris=self._artifacts(artifact_uris, reference),
            **fields,
        )
        existing = self.exists(self.backend.runs, id)
        if existing is not None:
            self._update_run(existing, run, reference)
            return existing.id, False
        if id in self._planned:
            return id, False
        return self._create_run(run, parent_run_id, reference), True

    def _run_mappings(self, reference: str, **values: Any) -> dict[str, Any]:
        """Return the free-form run fields that pass validation; skip the rest."""
        kept: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                continue
            try:
                plain = self.plain(dict(value), name, reference)
                codec.encode_value(plain, name)
                check_mapping(plain, name, RUN_MAPPINGS[name])
            except InvalidInputError as problem:
                self.summary.skip(name, reference, _one_line(problem))
                continue
            kept[name] = plain if plain or name != "error" else None
        return kept

    def _artifacts(
        self, uris: Mapping[str, str] | None, reference: str
    ) -> dict[str, str]:
        kept = {}
        for name, uri in (uris or {}).items():
            if (
                not name
                or len(name) > limits.MAX_KEY_LENGTH
                or len(uri) > limits.MAX_STRING_LENGTH
            ):
                self.summary.skip(
                    "artifact",
                    f"{reference} {name[:80]}",
                    "artifact name or URI too long",
                )
                continue
            kept[name] = uri
        return kept

    def _dataset_known(self, dataset_id: str, reference: str) -> bool:
        if self.known(self.backend.datasets, dataset_id):
            return True
        self.summary.skip(
            "dataset_link", f"{reference} -> {dataset_id}", "dataset was not imported"
        )
        return False

    def _create_run(self, run: Run, parent_run_id: str | None, reference: str) -> str:
        if not self.known(self.backend.experiments, run.experiment_id):
            raise NotFoundError(
                f"experiment {run.experiment_id!r} of run {run.id!r} was not imported",
                run.experiment_id,
            )
        cross_parent = None
        if parent_run_id is not None:
            parent = self.exists(self.backend.runs, parent_run_id)
            if (
                parent is not None
                and parent.experiment_id == run.experiment_id
                or parent_run_id in self._planned
            ):
                run = dataclasses.replace(run, parent_run_id=parent_run_id)
            elif parent is not None:
                cross_parent = parent_run_id
                self.summary.note(
                    "run",
                    reference,
                    "parent run is in another experiment; "
                    "linked by a child_of lineage edge only",
                )
            else:
                self.summary.skip(
                    "parent_link",
                    f"{reference} -> {parent_run_id}",
                    "parent run was not imported",
                )
        self.summary.count("created", "run")
        if self.dry_run:
            self._planned.add(run.id)
            self._count_run_lineage(run, reference)
        else:
            self._store_run(run)
            parent_edges = 1 if run.parent_run_id is not None else 0
            self.summary.count(
                "created", "lineage_edge", parent_edges + len(run.dataset_ids)
            )
        if cross_parent is not None:
            self.edge(run.id, EdgeType.CHILD_OF, cross_parent, reference)
        return run.id

    def _count_run_lineage(self, run: Run, reference: str) -> None:
        """Count, in a dry run, the lineage that `Store.create_run` would record."""
        self.node(run.id, NodeKind.RUN, run.name, reference, count=False)
        if run.parent_run_id is not None:
            self.edge(run.id, EdgeType.CHILD_OF, run.parent_run_id, reference)
        for dataset_id in run.dataset_ids:
            self.edge(run.id, EdgeType.CONSUMED, dataset_id, reference)

    def _store_run(self, run: Run) -> None:
        """Create the run through the Store API, then add what it cannot take at once.

        `create_run` accepts at most MAX_PARAMS_PER_CALL params, so the rest
        follow in `log_params` calls. Artifacts follow one by one, and the error
        and the source's deletion time are set last.
        """
        chunks = _param_chunks(run.params, limits.MAX_PARAMS_PER_CALL)
        self.store.create_run(
            run.experiment_id,
            name=run.name,
            params=next(chunks, {}),
            tags=run.tags,
            parent_run_id=run.parent_run_id,
            trainer=run.trainer,
            resources=run.resources,
            environment=run.environment,
            seeds=run.seeds,
            code_version=run.code_version,
            dataset_ids=run.dataset_ids,
            status=run.status,
            id=run.id,
            created_at=run.created_at,
            start_time=run.start_time,
            end_time=run.end_time,
        )
        for chunk in chunks:
            self.store.log_params(run.id, chunk)
        for name, uri in run.artifact_uris.items():
            self.store.log_artifact(run.id, name, uri)
        fields = {
            name: value
            for name, value in (("error", run.error), ("deleted_at", run.deleted_at))
            if value is not None
        }
        if fields:
            self._replace(self.backend.runs, run.id, lambda current: fields, "import")

    def _update_run(self, existing: Run, source: Run, reference: str) -> None:
        if existing.experiment_id != source.experiment_id:
            self.summary.note(
                "run",
                reference,
                "already imported into another experiment; updated there",
            )
        changed = self._advance_status(existing, source, reference)
        changed |= self._add_params(existing, source.params, reference)
        changed |= self._merge_tags("run", existing, source.tags)
        changed |= self._add_artifacts(existing, source.artifact_uris, reference)
        for dataset_id in source.dataset_ids:
            if dataset_id in existing.dataset_ids:
                self.edge(existing.id, EdgeType.CONSUMED, dataset_id, reference)
                continue
            changed = True
            self.summary.count("created", "lineage_edge")
            if not self.dry_run:
                self.store.link_dataset(existing.id, dataset_id)
        if existing.parent_run_id is not None:
            self.edge(existing.id, EdgeType.CHILD_OF, existing.parent_run_id, reference)
        changed |= self._propagate_deletion(
            self.backend.runs, existing, source.deleted_at, reference
        )
        self.summary.count("updated" if changed else "unchanged", "run")

    def _advance_status(self, existing: Run, source: Run, reference: str) -> bool:
        if source.status == existing.status:
            return False
        if source.status not in STATUS_TRANSITIONS[existing.status]:
            self.summary.note(
                "run",
                reference,
                f"status is {existing.status.value} in the store and "
                f"{source.status.value} in the source; kept "
                f"{existing.status.value}",
            )
            return False

        def change(run: Run) -> dict[str, Any] | None:
            if run.status != existing.status:
                return None
            fields: dict[str, Any] = {
                "status": source.status,
                "start_time": run.start_time or source.start_time,
                "end_time": source.end_time,
            }
            if source.error is not None:
                fields["error"] = source.error
            return fields

        if not self.dry_run:
            self._replace(self.backend.runs, existing.id, change, "set_status")
        return True

    def _add_params(
        self, existing: Run, params: dict[str, Any], reference: str
    ) -> bool:
        if codec.values_equal(existing.params, params) or not params:
            return False
        new = {
            k: v
            for k, v in params.items()
            if k not in existing.params or not codec.values_equal(existing.params[k], v)
        }
        if not new:
            return False
        try:
            if self.dry_run:
                merge_params(existing.id, existing.params, new)
            else:
                self.store.log_params(existing.id, new)
        except ConflictError as conflict:
            self.summary.skip("param", reference, _one_line(conflict))
            return False
        return True

    def _add_artifacts(
        self, existing: Run, uris: Mapping[str, str], reference: str
    ) -> bool:
        changed = False
        for name, uri in uris.items():
            current = existing.artifact_uris.get(name)
            if current == uri:
                continue
            if current is not None:
                self.summary.skip(
                    "artifact",
                    f"{reference} {name}",
                    "artifact URI differs from the one stored",
                )
                continue
            changed = True
            if not self.dry_run:
                self.store.log_artifact(existing.id, name, uri)
        return changed

    # ------------------------------------------------------------------
    # metrics
    # ------------------------------------------------------------------

    def metric_points(
        self,
        run_id: str,
        stream: str,
        read_points: Callable[[], Iterable[MetricPoint]],
        *,
        run_created: bool,
    ) -> None:
        """Write the points of one source stream (a file) in batches with derived ids.

        `read_points` returns a fresh iterator of validated points on each call.
        `stream` names the source, so that batch ids, and with them the points'
        identities, are the same on every import. For a run stored before, the
        points are rewritten only when the stored count for the stream's metric
        keys differs from the source's. A rewrite overwrites points in place.
        """
        stored = 0
        if not run_created and run_id not in self._planned:
            keys: set[str] = set()
            total = 0
            for point in read_points():
                keys.add(point.key)
                total += 1
            stored = sum(
                sum(1 for _ in self.store.metric_history(run_id, key)) for key in keys
            )
            if stored == total:
                self.summary.count("unchanged", "metric_point", total)
                return
        prefix = f"import.{digest(self.format, run_id, stream)}"
        written = 0
        for index, batch in enumerate(chunked(read_points(), limits.MAX_METRIC_BATCH)):
            if not self.dry_run:
                self.store.log_metrics(run_id, batch, batch_id=f"{prefix}.{index:06d}")
            written += len(batch)
        self.summary.count("created", "metric_point", max(0, written - stored))
        self.summary.count("updated", "metric_point", min(written, stored))

    # ------------------------------------------------------------------
    # datasets, models and versions
    # ------------------------------------------------------------------

    def dataset(
        self,
        *,
        id: str,
        name: str,
        version: str,
        reference: str,
        source_uri: str | None = None,
        content_hash: str | None = None,
        ingested_at: datetime | None = None,
        schema: Mapping[str, Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
        description: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Register a dataset version once; return its id (possibly an existing one)."""
        repository = self.backend.datasets
        if self.known(repository, id):
            self.summary.count("unchanged", "dataset")
            return id
        found = repository.find_unique((self.namespace, name, str(version)))
        if found is not None:
            self.summary.note(
                "dataset",
                reference,
                "this name and version is registered under another id; reused",
            )
            self.summary.count("unchanged", "dataset")
            return found.id
        self.summary.count("created", "dataset")
        if self.dry_run:
            self._planned.add(id)
            return id
        dataset = self.store.register_dataset(
            name,
            str(version),
            namespace=self.namespace,
            source_uri=source_uri,
            content_hash=content_hash,
            ingested_at=ingested_at,
            schema=self.plain(dict(schema or {}), "dataset", reference),
            provenance=self.plain(dict(provenance or {}), "dataset", reference),
            description=description,
            tags=self.fit_tags(tags or {}, "dataset", reference),
            id=id,
        )
        return dataset.id

    def model(
        self,
        *,
        id: str,
        name: str,
        reference: str,
        description: str | None = None,
        tags: Mapping[str, Any] | None = None,
        created_at: datetime | None = None,
    ) -> str | None:
        """Create or update a registered model; return its id (found by id or name)."""
        tags = self.fit_tags(tags or {}, "model", reference)
        repository = self.backend.models
        existing = self.exists(repository, id) or repository.find_unique(
            (self.namespace, name)
        )
        if existing is not None:
            changed = self._merge_tags("model", existing, tags)
            self.summary.count("updated" if changed else "unchanged", "model")
            return existing.id
        self.summary.count("created", "model")
        if self.dry_run:
            self._planned.add(id)
            return id
        return self.store.create_model(
            name,
            namespace=self.namespace,
            description=description,
            tags=tags,
            id=id,
            created_at=created_at,
        ).id

    def model_version(
        self,
        *,
        id: str,
        model_id: str,
        source_version: int,
        reference: str,
        run_id: str | None = None,
        git_commit: str | None = None,
        artifact_uri: str | None = None,
        description: str | None = None,
        tags: Mapping[str, Any] | None = None,
        created_at: datetime | None = None,
        deleted: bool = False,
    ) -> int | None:
        """Register a model version once; return its number in the store.

        The store numbers versions 1, 2, 3 ... itself; when that number is not
        the source's (the source has gaps), the difference is noted and the
        source number stays in the `mltrail.source.id` tag. A deleted version is
        registered and then deleted, so the deletion time is the import's.
        """
        tags = self.fit_tags(tags or {}, "model_version", reference)
        if run_id is not None and not self.known(self.backend.runs, run_id):
            self.summary.note(
                "model_version",
                reference,
                "producing run was not imported; version has no run",
            )
            run_id = None
        existing = self.exists(self.backend.model_versions, id)
        if existing is not None:
            changed = self._merge_tags("model_version", existing, tags)
            if deleted and existing.deleted_at is None:
                changed = True
                if not self.dry_run:
                    self.store.delete_model_version(existing.model_id, existing.version)
            self.summary.count("updated" if changed else "unchanged", "model_version")
            return existing.version
        self.summary.count("created", "model_version")
        if self.dry_run or model_id in self._planned:
            self._planned.add(id)
            return source_version
        version = self.store.register_model_version(
            model_id,
            run_id=run_id,
            git_commit=git_commit,
            artifact_uri=artifact_uri,
            description=description,
            tags=tags,
            namespace=self.namespace,
            id=id,
            created_at=created_at,
        )
        if version.version != source_version:
            self.summary.note(
                "model_version",
                reference,
                f"numbered {version.version} in the store; the source "
                "numbering has gaps",
            )
        if deleted:
            self.store.delete_model_version(model_id, version.version)
        return version.version

    def alias(self, model_id: str, alias: str, version: int, reference: str) -> None:
        """Point `alias` of a model at a version number unless it already does."""
        if model_id not in self._planned:
            model = self.backend.models.get(model_id)
            if model.aliases.get(alias) == version:
                self.summary.count("unchanged", "alias")
                return
        self.summary.count("created", "alias")
        if not self.dry_run:
            self.store.set_alias(model_id, alias, version, namespace=self.namespace)

    # ------------------------------------------------------------------
    # lineage
    # ------------------------------------------------------------------

    def node(
        self,
        node_id: str,
        kind: NodeKind,
        label: str | None,
        reference: str,
        count: bool = True,
    ) -> bool:
        """Add a lineage node that no entity creates (a pipeline or a logged model)."""
        try:
            existing = self.backend.lineage.get_node(node_id)
        except NotFoundError:
            existing = None
        if existing is not None or node_id in self._planned:
            if count:
                self.summary.count("unchanged", "lineage_node")
            return True
        if count:
            self.summary.count("created", "lineage_node")
        if self.dry_run:
            self._planned.add(node_id)
            return True
        self.store.add_lineage_node(node_id, kind, label)
        return True

    def edge(self, source: str, type: EdgeType, target: str, reference: str) -> bool:
        """Add a lineage edge; a missing end or a cycle is reported and skipped."""
        edge = LineageEdge(source=source, target=target, type=type)
        for end in (source, target):
            if end in self._planned:
                continue
            try:
                self.backend.lineage.get_node(end)
            except NotFoundError:
                self.summary.skip(
                    "lineage_edge",
                    f"{reference} {edge.key}",
                    "an end of the edge was not imported",
                )
                return False
        known = edge.key in self._planned
        if not known and edge.downstream not in self._planned:
            stored = {
                e.key for e in self.backend.lineage.edges(edge.downstream, "upstream")
            }
            known = edge.key in stored
        if known:
            self.summary.count("unchanged", "lineage_edge")
            return True
        if self.dry_run:
            self._planned.add(edge.key)
            self.summary.count("created", "lineage_edge")
            return True
        try:
            self.store.add_lineage_edge(source, type, target)
        except ConflictError as conflict:
            self.summary.skip(
                "lineage_edge", f"{reference} {edge.key}", _cycle(conflict)
            )
            return False
        self.summary.count("created", "lineage_edge")
        return True


def _param_chunks(params: dict[str, Any], size: int) -> Iterator[dict[str, Any]]:
    """Split nested params into nested dicts of at most `size` leaves each."""
    chunk: dict[str, Any] = {}
    leaves = 0
    for path, value in codec.flatten(params):
        if leaves == size:
            yield chunk
            chunk, leaves = {}, 0
        node = chunk
        for segment in path[:-1]:
            node = node.setdefault(segment, {})
        node[path[-1]] = value
        leaves += 1
    if chunk or not params:
        yield chunk


def _cycle(conflict: ConflictError) -> str:
    message = _one_line(conflict)
    if "cycle" in message:
        return "edge would close a cycle in the lineage graph"
    if "own source" in message:
        return "edge would point at its own source"
    return message


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _auditable(value: Any) -> Any:
    if isinstance(value, datetime):
        return isoformat(value)
    if isinstance(value, Enum):
        return value.value
    return codec.decode_value(codec.encode_value(value))
