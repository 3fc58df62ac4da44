import math

import pytest

from mltrail.backends.local import LocalConformanceHarness
from mltrail.backends.memory import MemoryConformanceHarness
from mltrail.domain import (
    SCHEMA_VERSION, Dataset, Experiment, Model, ModelVersion, Run,
)
from mltrail.errors import BackendUnavailableError, InvalidInputError
from mltrail.ops import upgrade
from mltrail.store import Store

OLD_TIME = "2019-06-01T10:00:00.000000Z"


def schema0_run(run_id="OLDRUN1", experiment_id="EXP1", **fields):
    return {"id": run_id, "schema_version": 0, "revision": 2, "tags": {"t": "1"},
            "created_at": OLD_TIME, "updated_at": OLD_TIME,
            "experiment_id": experiment_id, "name": "legacy", "status": "completed",
            "params_flat": {"optimizer.lr": 0.001, "optimizer.betas": [0.9, 0.99],
                            "epochs": 10, "eps": {"$f": "fff0000000000000"}},
            **fields}


def test_run_params_nested():
    run = Run.from_record(schema0_run())
    assert run.params["optimizer"] == {"lr": 0.001, "betas": [0.9, 0.99]}
    assert run.params["epochs"] == 10
    assert run.params["eps"] == -math.inf
    assert run.namespace == "default"
    assert run.schema_version == 0


def test_upgraded_record_written_current():
    record = Run.from_record(schema0_run()).to_record()
    assert record["schema_version"] == SCHEMA_VERSION
    assert "params_flat" not in record
    assert record["params"]["optimizer"]["lr"] == 0.001


def test_flat_params_merge_with_nested():
    record = schema0_run(params={"model": {"depth": 3}})
    assert Run.from_record(record).params["model"] == {"depth": 3}


@pytest.mark.parametrize("flat", [
    {"a": 1, "a.b": 2},
    {"a.b": 2, "a": {"$f": "7ff8000000000000"}},
])
def test_colliding_flat_params_rejected(flat):
    record = schema0_run(params_flat=flat)
    with pytest.raises(InvalidInputError) as caught:
        Run.from_record(record)
    assert "'OLDRUN1'" in str(caught.value)


@pytest.mark.parametrize("cls,extra", [
    (Experiment, {"name": "e"}),
    (Dataset, {"name": "d", "version": "1"}),
    (Model, {"name": "m"}),
])
def test_namespaced_kinds_default(cls, extra):
    entity = cls.from_record({"id": "OLD1", "schema_version": 0, "revision": 0,
                              "tags": {}, "created_at": OLD_TIME, **extra})
    assert entity.namespace == "default"


def test_version_record_unchanged():
    version = ModelVersion.from_record({"id": "V1", "schema_version": 0, "revision": 0,
                                        "tags": {}, "created_at": OLD_TIME,
                                        "model_id": "M1", "version": 1})
    assert version.version == 1


@pytest.mark.parametrize("bad", [-1, "1", 1.0, True])
def test_invalid_schema_version(bad):
    with pytest.raises(InvalidInputError) as caught:
        Run.from_record(schema0_run(schema_version=bad))
    assert repr(bad) in str(caught.value)


def test_newer_schema_rejected():
    with pytest.raises(InvalidInputError) as caught:
        Run.from_record(schema0_run(schema_version=SCHEMA_VERSION + 1))
    assert "upgrade mltrail" in str(caught.value)


@pytest.fixture(params=["memory", "local"])
def harness(request, tmp_path):
    if request.param == "memory":
        return MemoryConformanceHarness()
    return LocalConformanceHarness(f"local://{tmp_path}/s.db")


@pytest.fixture
def store(harness):
    backend = harness.create()
    yield Store(backend, actor="ops-test")
    harness.destroy(backend)


def write_old_runs(store, harness, count):
    experiment = store.create_experiment("legacy")
    ids = [f"OLDRUN{i}" for i in range(count)]
    for run_id in ids:
        harness.raw_write(store.backend, "run", schema0_run(run_id, experiment.id))
    return ids


def test_upgrade_rewrites_in_place(store, harness):
    (run_id,) = write_old_runs(store, harness, 1)
    report = upgrade(store)
    assert report.upgraded == {"experiment": 0, "run": 1, "dataset": 0, "model": 0,
                               "model_version": 0}
    raw = harness.raw_read(store.backend, "run", run_id)
    assert raw["schema_version"] == SCHEMA_VERSION
    assert raw["revision"] == 3
    assert raw["updated_at"] == OLD_TIME
    assert raw["params"]["optimizer"]["betas"] == [0.9, 0.99]
    assert raw["params"]["eps"] == {"$f": "fff0000000000000"}


def test_upgrade_makes_namespace_searchable(store, harness):
    ids = write_old_runs(store, harness, 2)
    upgrade(store)
    found = [r.id for r in store.iter_runs(namespace="default", order_by="id")]
    assert found == ids


def test_upgrade_skips_current_records(store, harness):
    write_old_runs(store, harness, 1)
    upgrade(store)
    events = store.backend.audit.last().seq
    report = upgrade(store)
    assert report.total_upgraded == 0
    assert store.backend.audit.last().seq == events


def test_upgrade_audited(store, harness):
    write_old_runs(store, harness, 2)
    upgrade(store)
    event = store.backend.audit.last()
    assert event.action == "upgrade"
    assert event.details["upgraded"]["run"] == 2
    assert store.verify_audit().ok


def test_upgrade_resumes_after_failure(store, harness, monkeypatch):
    ids = write_old_runs(store, harness, 4)
    repository = store.backend.runs
    real_update = repository.update
    attempts = []

    def failing_third(entity):
        attempts.append(entity.id)
        if len(attempts) == 3:
            raise BackendUnavailableError("connection lost", entity.id)
        real_update(entity)

    monkeypatch.setattr(repository, "update", failing_third)
    with pytest.raises(BackendUnavailableError):
        upgrade(store)
    monkeypatch.setattr(repository, "update", real_update)
    assert upgrade(store).upgraded["run"] == 2
    records = [harness.raw_read(store.backend, "run", run_id) for run_id in ids]
    versions = {record["schema_version"] for record in records}
    assert versions == {SCHEMA_VERSION}


def test_concurrent_writer_wins(store, harness, monkeypatch):
    """A record rewritten by a normal update in between is not rewritten again."""
    (run_id,) = write_old_runs(store, harness, 1)
    repository = store.backend.runs
    real_update = repository.update
    raced = []

    def racing(entity):
        if not raced:
            raced.append(1)
            store.set_tags("run", run_id, {"late": "yes"})
        real_update(entity)

    monkeypatch.setattr(repository, "update", racing)
    report = upgrade(store)
    assert report.upgraded["run"] == 0
    assert store.get_run(run_id).tags["late"] == "yes"
    assert harness.raw_read(store.backend, "run", run_id)["schema_version"] == \
        SCHEMA_VERSION
