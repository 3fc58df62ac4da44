"""Entity repositories: insert, get, unique keys, compare-and-set, delete, scan, raw hooks."""

from __future__ import annotations

import pytest

from mltrail.backend import ScanRequest
from mltrail.clock import new_id
from mltrail.domain import Dataset, Experiment, Model, ModelVersion, Run
from mltrail.errors import AlreadyExistsError, ConflictError, NotFoundError

KINDS = ["experiment", "run", "dataset", "model", "model_version"]


def build(kind: str, **overrides):
    """Return a valid entity of `kind` with distinct unique fields."""
    suffix = new_id()[-6:]
    if kind == "experiment":
        return Experiment(**{"name": f"exp-{suffix}", **overrides})
    if kind == "run":
        return Run(**{"experiment_id": "EXP1", "name": f"run-{suffix}",
                      "params": {"lr": 0.1}, **overrides})
    if kind == "dataset":
        return Dataset(**{"name": f"data-{suffix}", "version": "1", **overrides})
    if kind == "model":
        return Model(**{"name": f"model-{suffix}", **overrides})
    return ModelVersion(**{"model_id": "MODEL1", "version": 1, **overrides})


def unique_clash(kind: str, first):
    """Return a second entity with a new id but the same unique key as `first`."""
    if kind == "experiment":
        return Experiment(name=first.name, namespace=first.namespace)
    if kind == "dataset":
        return Dataset(name=first.name, version=first.version)
    if kind == "model":
        return Model(name=first.name)
    return ModelVersion(model_id=first.model_id, version=first.version)


class EntityCases:
    area = "entities"

    @pytest.mark.parametrize("kind", KINDS)
    def test_insert_then_get(self, backend, kind):
        entity = build(kind, tags={"team": "vision"})
        repository = backend.entity_repository(kind)
        repository.insert(entity)
        loaded = repository.get(entity.id)
        assert loaded.to_record() == entity.to_record()

    @pytest.mark.parametrize("kind", KINDS)
    def test_duplicate_id_rejected(self, backend, kind):
        entity = build(kind)
        repository = backend.entity_repository(kind)
        repository.insert(entity)
        with pytest.raises(AlreadyExistsError):
            repository.insert(entity)

    @pytest.mark.parametrize("kind", ["experiment", "dataset", "model", "model_version"])
    def test_unique_key_rejected(self, backend, kind):
        repository = backend.entity_repository(kind)
        first = build(kind)
        repository.insert(first)
        with pytest.raises(AlreadyExistsError):
            repository.insert(unique_clash(kind, first))
        assert repository.get(first.id).to_record() == first.to_record()

    @pytest.mark.parametrize("kind", ["experiment", "dataset", "model", "model_version"])
    def test_find_unique(self, backend, kind):
        repository = backend.entity_repository(kind)
        entity = build(kind)
        repository.insert(entity)
        key = tuple(getattr(entity, name) for name in repository.unique_key)
        found = repository.find_unique(key)
        assert found is not None
        assert found.id == entity.id

    @pytest.mark.parametrize("kind", ["experiment", "dataset", "model", "model_version"])
    def test_find_unique_missing(self, backend, kind):
        repository = backend.entity_repository(kind)
        entity = build(kind)
        key = tuple(getattr(entity, name) for name in repository.unique_key)
        assert repository.find_unique(key) is None

    @pytest.mark.parametrize("kind", KINDS)
    def test_get_missing_is_lookup_error(self, backend, kind):
        with pytest.raises(NotFoundError) as caught:
            backend.entity_repository(kind).get("MISSING1")
        assert isinstance(caught.value, LookupError)
        assert caught.value.value == "MISSING1"

    @pytest.mark.parametrize("kind", KINDS)
    def test_update_with_next_revision(self, backend, kind):
        repository = backend.entity_repository(kind)
        entity = build(kind)
        repository.insert(entity)
        changed = entity.touched(tags={"stage": "two"})
        repository.update(changed)
        loaded = repository.get(entity.id)
        assert loaded.revision == 1
        assert loaded.tags == {"stage": "two"}

    @pytest.mark.parametrize("kind", KINDS)
    def test_update_stale_revision_conflicts(self, backend, kind):
        repository = backend.entity_repository(kind)
        entity = build(kind)
        repository.insert(entity)
        repository.update(entity.touched(tags={"writer": "a"}))
        with pytest.raises(ConflictError):
            repository.update(entity.touched(tags={"writer": "b"}))
        assert repository.get(entity.id).tags == {"writer": "a"}

    @pytest.mark.parametrize("kind", KINDS)
    def test_update_missing_not_found(self, backend, kind):
        with pytest.raises(NotFoundError):
            backend.entity_repository(kind).update(build(kind).touched())

    @pytest.mark.parametrize("kind", KINDS)
    def test_delete_then_get(self, backend, kind):
        repository = backend.entity_repository(kind)
        entity = build(kind)
        repository.insert(entity)
        repository.delete(entity.id)
        with pytest.raises(NotFoundError):
            repository.get(entity.id)
        repository.delete(entity.id)

    @pytest.mark.parametrize("kind", ["experiment", "dataset", "model", "model_version"])
    def test_delete_frees_unique_key(self, backend, kind):
        repository = backend.entity_repository(kind)
        first = build(kind)
        repository.insert(first)
        repository.delete(first.id)
        second = unique_clash(kind, first)
        repository.insert(second)
        assert repository.get(second.id).id == second.id

    @pytest.mark.parametrize("kind", KINDS)
    def test_scan_returns_all(self, backend, kind):
        repository = backend.entity_repository(kind)
        entities = [build(kind, **({"version": n} if kind == "model_version" else {}))
                    for n in range(1, 8)]
        for entity in entities:
            repository.insert(entity)
        scanned = {e.id for e in repository.scan(ScanRequest())}
        assert scanned == {e.id for e in entities}

    @pytest.mark.parametrize("kind", ["experiment", "run", "dataset", "model"])
    def test_scan_by_namespace(self, backend, kind):
        repository = backend.entity_repository(kind)
        inside = build(kind, namespace="team-a")
        outside = build(kind, namespace="team-b")
        repository.insert(inside)
        repository.insert(outside)
        scanned = {e.id for e in repository.scan(ScanRequest(namespace="team-a"))}
        assert inside.id in scanned
        assert outside.id not in scanned

    @pytest.mark.parametrize("kind", KINDS)
    def test_get_many(self, backend, kind):
        repository = backend.entity_repository(kind)
        entities = [build(kind, **({"version": n} if kind == "model_version" else {}))
                    for n in range(1, 4)]
        for entity in entities:
            repository.insert(entity)
        found = repository.get_many([entities[0].id, "MISSING1", entities[2].id])
        assert set(found) == {entities[0].id, entities[2].id}

    def test_scan_large_kind_streams(self, backend):
        repository = backend.runs
        ids = set()
        for index in range(1_205):
            run = build("run", name=f"r{index}")
            ids.add(run.id)
            repository.insert(run)
        assert {r.id for r in repository.scan(ScanRequest())} == ids


class RawHookCases:
    area = "raw-hooks"

    @pytest.mark.parametrize("kind", KINDS)
    def test_repository_write_raw_read(self, backend, mltrail_harness, kind):
        entity = build(kind, tags={"k": "v"})
        backend.entity_repository(kind).insert(entity)
        raw = mltrail_harness.raw_read(backend, kind, entity.id)
        assert raw is not None
        assert type(entity).from_record(raw).to_record() == entity.to_record()

    @pytest.mark.parametrize("kind", KINDS)
    def test_raw_write_repository_read(self, backend, mltrail_harness, kind):
        entity = build(kind, tags={"written": "raw"})
        mltrail_harness.raw_write(backend, kind, entity.to_record())
        loaded = backend.entity_repository(kind).get(entity.id)
        assert loaded.to_record() == entity.to_record()

    @pytest.mark.parametrize("kind", ["experiment", "dataset", "model", "model_version"])
    def test_raw_write_visible_to_find_unique(self, backend, mltrail_harness, kind):
        entity = build(kind)
        mltrail_harness.raw_write(backend, kind, entity.to_record())
        repository = backend.entity_repository(kind)
        key = tuple(getattr(entity, name) for name in repository.unique_key)
        assert repository.find_unique(key).id == entity.id

    def test_raw_read_missing_is_none(self, backend, mltrail_harness):
        assert mltrail_harness.raw_read(backend, "run", "MISSING1") is None
