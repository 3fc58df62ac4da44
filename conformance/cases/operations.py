"""Operations: backup round trips, archived metrics, consistency checks, upgrades.

Round trips export from the backend under test, import into a fresh memory
store (opened by URL, like a user would), and import that store's export into
a fresh store of the backend under test, comparing everything at each step.
"""

from __future__ import annotations

import math
import random
from datetime import timedelta

import pytest

from mltrail import codec
from mltrail.config import Config
from mltrail.domain import (
    EdgeType, LineageEdge, LineageNode, MetricPoint, NodeKind, SCHEMA_VERSION,
)
from mltrail.errors import BackendUnavailableError, UnsupportedCapabilityError
from mltrail.ops import (
    archive_metrics, diff_stores, export_store, fsck, import_archive, migrate, upgrade,
)
from mltrail.ops.cold import (
    ARCHIVE_TAG, BLOB_NAMESPACE, MAX_RECORD_BYTES, BlobSegmentStore, read_descriptors,
    read_head,
)
from mltrail.ops.records import json_size
from mltrail.store import Store

from mltrail.conformance.cases.support import BASE_TIME, FLOAT_VALUES, PARAM_VALUES


def _memory_store():
    from mltrail.api import connect

    return connect("memory://", actor="conformance", config=Config())


def populate(store):
    """Record one of everything the store keeps, with awkward values."""
    experiment = store.create_experiment("ops", description="backups",
                                         tags={"team": "vision"})
    elsewhere = store.create_experiment("ops", namespace="other")

    raw = store.register_dataset(
        "raw", "1", source_uri="s3://bucket/raw", content_hash="sha256:abc",
        schema={"x": "float"}, provenance={"pipeline": "ingest.py",
                                           "preprocessing": ["dedupe"]})
    clean = store.register_dataset("clean", "2", derived_from=[raw.id])

    params = {name: value for name, value in PARAM_VALUES.items()
              if name != "long_string"}
    parent = store.create_run(experiment.id, name="parent", params=params,
                              dataset_ids=[clean.id], tags={"k": "v"},
                              environment={"python": "3.11"}, seeds={"numpy": 7})
    store.set_run_status(parent.id, "running")
    store.log_metrics(parent.id, _points(parent.id))
    store.log_artifact(parent.id, "model", "s3://bucket/model.pkl")
    store.set_run_status(parent.id, "completed")

    child = store.create_run(experiment.id, name="child", parent_run_id=parent.id,
                             params={"lr": 0.1}, status="failed")
    store.log_metric(child.id, "loss", -0.0, step=3, unit="nats", ci_low=-1.0,
                     ci_high=1.0, ci_level=0.95, drift={"psi": math.nan})
    store.delete_run(child.id)
    store.create_run(elsewhere.id, name="other", status="killed")

    store.create_model("classifier", tags={"stage": "dev"})
    store.register_model_version("classifier", run_id=parent.id, git_commit="abc123")
    store.register_model_version("classifier", run_id=parent.id)
    store.set_alias("classifier", "production", 1)
    store.set_alias("classifier", "production", 2)

    store.add_lineage_node("pipeline:custom", "pipeline", label="custom")
    store.add_lineage_edge("pipeline:custom", "produced", raw.id)
    return parent, child


def _points(run_id, count=40):
    points = []
    for index, value in enumerate(FLOAT_VALUES.values()):
        points.append(MetricPoint(run_id=run_id, key="special", value=value, step=index,
                                  timestamp=BASE_TIME + timedelta(seconds=index)))
    for step in range(count):
        points.append(MetricPoint(run_id=run_id, key="acc", value=step / count,
                                  step=step, split="val",
                                  timestamp=BASE_TIME + timedelta(minutes=step)))
    points.append(MetricPoint(run_id=run_id, key="acc", value=0.5, step=3,
                              timestamp=BASE_TIME + timedelta(minutes=3)))
    return points


def _reads(store, run_id):
    """Everything a user can read about a run's metrics, in comparable form."""
    keys = store.metric_keys(run_id)
    histories = {key: [(p.step, p.timestamp, p.seq, codec.float_to_bits(p.value),
                        p.extras()) for p in store.metric_history(run_id, key)]
                 for key in keys}
    latest = {key: (p.step, p.seq, codec.float_to_bits(p.value))
              for key, p in store.latest_metrics(run_id).items()}
    return keys, histories, latest


class OperationCases:
    area = "operations"

    # -- backup and migration ------------------------------------------

    def test_export_import_round_trip(self, store, mltrail_harness, tmp_path):
        populate(store)
        export_store(store, tmp_path / "first.mltrail")
        middle = _memory_store()
        report = import_archive(middle, tmp_path / "first.mltrail")
        assert report.ok
        assert diff_stores(store, middle) == []
        export_store(middle, tmp_path / "second.mltrail")
        fresh = mltrail_harness.create()
        try:
            target = Store(fresh, actor="conformance")
            assert import_archive(target, tmp_path / "second.mltrail").ok
            assert diff_stores(store, target) == []
            assert target.verify_audit().ok
        finally:
            mltrail_harness.destroy(fresh)

    def test_import_appends_one_event(self, store, tmp_path):
        populate(store)
        events = store.backend.audit.last().seq
        export_store(store, tmp_path / "a.mltrail")
        target = _memory_store()
        import_archive(target, tmp_path / "a.mltrail")
        last = target.backend.audit.last()
        assert last.seq == events + 1
        assert last.action == "import"

    def test_reimport_adds_nothing(self, store, tmp_path):
        populate(store)
        export_store(store, tmp_path / "a.mltrail")
        target = _memory_store()
        import_archive(target, tmp_path / "a.mltrail")
        again = import_archive(target, tmp_path / "a.mltrail")
        assert again.ok
        added = {name: c.added for name, c in again.counts.items() if name != "metrics"}
        assert set(added.values()) == {0}
        assert diff_stores(store, target) == []
        assert target.verify_audit().ok

    def test_import_into_backend(self, store, tmp_path):
        source = _memory_store()
        populate(source)
        export_store(source, tmp_path / "a.mltrail")
        assert import_archive(store, tmp_path / "a.mltrail").ok
        assert diff_stores(source, store) == []
        assert store.verify_audit().ok

    def test_migrate_both_ways(self, store, mltrail_harness):
        populate(store)
        middle = _memory_store()
        assert migrate(store, middle).ok
        fresh = mltrail_harness.create()
        try:
            target = Store(fresh, actor="conformance")
            assert migrate(middle, target).ok
            assert diff_stores(store, target) == []
            assert target.verify_audit().ok
        finally:
            mltrail_harness.destroy(fresh)

    def test_partial_export_keeps_references(self, store, tmp_path):
        parent, child = populate(store)
        export_store(store, tmp_path / "part.mltrail", filter=f"id = '{child.id}'")
        target = _memory_store()
        import_archive(target, tmp_path / "part.mltrail")
        assert target.get_run(child.id).parent_run_id == parent.id
        assert len(target.list_model_versions("classifier")) == 2
        assert fsck(target).ok

    def test_tampered_audit_after_import(self, store, mltrail_harness, tmp_path):
        source = _memory_store()
        populate(source)
        export_store(source, tmp_path / "a.mltrail")
        import_archive(store, tmp_path / "a.mltrail")
        record = mltrail_harness.raw_read(store.backend, "audit", 2)
        record["actor"] = "mallory"
        mltrail_harness.raw_write(store.backend, "audit", record)
        assert store.verify_audit().broken_at == 2

    # -- archival ------------------------------------------------------

    def test_archive_reads_unchanged(self, store):
        parent, _ = populate(store)
        before = _reads(store, parent.id)
        best = [r.id for r, _ in store.best_runs("acc", 2)]
        found = [r.id for r in store.search_runs("metrics.acc >= 0.5").items]
        summary = store.aggregate("acc")
        report = archive_metrics(store, status="completed")
        assert report.runs_archived == 1
        assert report.bytes_after < report.bytes_before
        assert _reads(store, parent.id) == before
        assert [r.id for r, _ in store.best_runs("acc", 2)] == best
        assert [r.id for r in store.search_runs("metrics.acc >= 0.5").items] == found
        assert store.aggregate("acc") == summary

    def test_archive_removes_live_points(self, store):
        parent, _ = populate(store)
        archive_metrics(store, status="completed")
        assert store.backend.metrics.keys(parent.id) == []
        assert store.get_run(parent.id).tags[ARCHIVE_TAG] == "store"

    def test_archive_history_ranges(self, store):
        parent, _ = populate(store)
        expected = [p.step for p in store.metric_history(parent.id, "acc", min_step=3,
                                                         max_step=9)]
        archive_metrics(store, status="completed")
        steps = [p.step for p in store.metric_history(parent.id, "acc", min_step=3,
                                                      max_step=9)]
        assert steps == expected

    def test_archive_then_new_points(self, store):
        parent, _ = populate(store)
        archive_metrics(store, status="completed")
        store.log_metric(parent.id, "acc", 0.99, step=1000)
        assert store.latest_metrics(parent.id)["acc"].value == 0.99
        assert [p.step for p in store.metric_history(parent.id, "acc")][-1] == 1000
        again = archive_metrics(store, status="completed")
        assert again.points == 1
        assert store.latest_metrics(parent.id)["acc"].value == 0.99

    def test_archive_to_directory(self, store, tmp_path):
        parent, _ = populate(store)
        before = _reads(store, parent.id)
        archive_metrics(store, status="completed", destination=f"dir:{tmp_path}")
        assert _reads(store, parent.id) == before
        assert list(tmp_path.rglob("*.json"))

    def test_archive_records_fit_item_limit(self, store):
        experiment = store.create_experiment("big")
        run = store.create_run(experiment.id, status="completed")
        noise = random.Random(5)
        # Random drift indicators on every point compress badly, so one segment
        # needs more than one record.
        store.log_metrics(run.id, [
            {"key": "loss", "value": noise.random(), "step": step,
             "drift": {f"d{i}": noise.random() for i in range(8)}}
            for step in range(3_500)])
        before = _reads(store, run.id)
        archive_metrics(store, status="completed")
        records = store.backend.blobs.scan(BLOB_NAMESPACE)
        sizes = [json_size(record) for _, record in records]
        assert max(sizes) <= MAX_RECORD_BYTES
        archive = BlobSegmentStore(store.backend.blobs)
        descriptors = read_descriptors(archive, read_head(archive, run.id))
        assert max(d["parts"] for d in descriptors) > 1
        assert _reads(store, run.id) == before

    def test_archive_crash_before_delete(self, store, monkeypatch):
        parent, _ = populate(store)
        before = _reads(store, parent.id)
        metrics = store.backend.metrics
        original = metrics.delete_run

        def crash(run_id):
            raise BackendUnavailableError("simulated crash", run_id)

        monkeypatch.setattr(metrics, "delete_run", crash)
        with pytest.raises(BackendUnavailableError):
            archive_metrics(store, status="completed")
        assert _reads(store, parent.id) == before
        monkeypatch.setattr(metrics, "delete_run", original)
        report = archive_metrics(store, status="completed")
        assert report.segments == 0
        assert _reads(store, parent.id) == before
        assert store.backend.metrics.keys(parent.id) == []

    def test_archive_export_round_trip(self, store, tmp_path):
        parent, _ = populate(store)
        archive_metrics(store, status="completed")
        export_store(store, tmp_path / "a.mltrail")
        target = _memory_store()
        import_archive(target, tmp_path / "a.mltrail")
        assert diff_stores(store, target) == []
        assert _reads(target, parent.id) == _reads(store, parent.id)

    # -- consistency checks --------------------------------------------

    def test_fsck_clean_store(self, store):
        populate(store)
        report = fsck(store)
        assert report.problems == []
        assert report.ok

    def test_fsck_damaged_store(self, store, mltrail_harness):
        parent, _ = populate(store)
        _damage(store, mltrail_harness, parent)
        report = fsck(store)
        checks = {p.check for p in report.problems}
        assert {"run.missing_experiment", "model_version.missing_model",
                "model_version.missing_run", "lineage.dangling_edge",
                "lineage.orphan_node"} <= checks
        assert not report.ok

    def test_fsck_repair(self, store, mltrail_harness):
        parent, _ = populate(store)
        _damage(store, mltrail_harness, parent)
        repaired = fsck(store, repair=True)
        assert any(p.repaired for p in repaired.problems)
        after = fsck(store)
        left = {p.check for p in after.problems}
        assert left == {"run.missing_experiment", "model_version.missing_model",
                        "model_version.missing_run"}
        assert all(not p.repairable for p in after.problems)

    def test_fsck_orphan_metrics(self, store):
        point = MetricPoint(run_id="GHOSTRUN1", key="m", value=1.0, seq="b:000000")
        store.backend.metrics.append("GHOSTRUN1", [point])
        try:
            list(store.backend.metrics.runs_with_metrics())
        except UnsupportedCapabilityError:
            pytest.skip("backend does not list runs with metrics")
        assert "metrics.orphan" in {p.check for p in fsck(store).problems}
        fsck(store, repair=True)
        assert store.backend.metrics.keys("GHOSTRUN1") == []

    def test_fsck_broken_audit(self, store, mltrail_harness):
        populate(store)
        record = mltrail_harness.raw_read(store.backend, "audit", 3)
        record["action"] = "nothing"
        mltrail_harness.raw_write(store.backend, "audit", record)
        problems = fsck(store, repair=True).remaining
        assert [p.check for p in problems] == ["audit.broken_chain"]

    # -- schema upgrades -----------------------------------------------

    def test_old_record_upgraded_on_read(self, store, mltrail_harness):
        experiment = store.create_experiment("old")
        record = _schema0_run(experiment.id, "1")
        mltrail_harness.raw_write(store.backend, "run", record)
        run = store.get_run(_run_id("1"))
        assert run.schema_version == 0
        assert run.namespace == "default"
        assert run.params == {"optimizer": {"lr": 0.01, "name": "adam"}, "seed": 7}

    def test_upgrade_rewrites_record(self, store, mltrail_harness):
        experiment = store.create_experiment("old")
        record = _schema0_run(experiment.id, "1")
        mltrail_harness.raw_write(store.backend, "run", record)
        report = upgrade(store)
        assert report.upgraded["run"] == 1
        raw = mltrail_harness.raw_read(store.backend, "run", _run_id("1"))
        assert raw["schema_version"] == SCHEMA_VERSION
        assert raw["namespace"] == "default"
        assert "params_flat" not in raw
        assert raw["revision"] == 4
        assert raw["updated_at"] == "2020-01-01T00:00:00.000000Z"
        assert [r.id for r in store.iter_runs(namespace="default")] == [_run_id("1")]
        assert upgrade(store).total_upgraded == 0

    def test_upgrade_resumes(self, store, mltrail_harness, monkeypatch):
        experiment = store.create_experiment("old")
        for suffix in ("1", "2", "3"):
            mltrail_harness.raw_write(store.backend, "run",
                                      _schema0_run(experiment.id, suffix))
        runs = store.backend.runs
        original = runs.update
        calls = []

        def flaky(entity):
            calls.append(entity.id)
            if len(calls) == 2:
                raise BackendUnavailableError("simulated outage", entity.id)
            original(entity)

        monkeypatch.setattr(runs, "update", flaky)
        with pytest.raises(BackendUnavailableError):
            upgrade(store)
        monkeypatch.setattr(runs, "update", original)
        report = upgrade(store)
        assert report.upgraded["run"] == 2
        versions = [mltrail_harness.raw_read(store.backend, "run", _run_id(s))
                    ["schema_version"] for s in ("1", "2", "3")]
        assert versions == [SCHEMA_VERSION] * 3


def _damage(store, harness, parent):
    """Break references with the raw hooks and direct repository calls."""
    orphan_run = store.get_run(parent.id).to_record()
    orphan_run.update(id="ORPHANRUN1", experiment_id="MISSINGEXP1", parent_run_id=None,
                      dataset_ids=[])
    harness.raw_write(store.backend, "run", orphan_run)
    version = store.get_model_version("classifier", 1).to_record()
    version.update(id="ORPHANVERSION1", model_id="MISSINGMODEL1", version=1,
                   run_id="MISSINGRUN1")
    harness.raw_write(store.backend, "model_version", version)
    store.backend.lineage.add_edge(LineageEdge(source=parent.id, target="MISSINGNODE1",
                                               type=EdgeType.CONSUMED))
    store.backend.lineage.put_node(LineageNode(id="GONERUN1", kind=NodeKind.RUN))


def _run_id(suffix):
    return "01H0000000000000000000000" + suffix


def _schema0_run(experiment_id, suffix):
    """Return a run record in the schema 0 layout: no namespace, flat dotted params."""
    return {
        "id": _run_id(suffix), "schema_version": 0, "revision": 3,
        "created_at": "2020-01-01T00:00:00.000000Z",
        "updated_at": "2020-01-01T00:00:00.000000Z",
        "tags": {}, "experiment_id": experiment_id, "name": f"legacy-{suffix}",
        "status": "completed",
        "params_flat": {"optimizer.lr": 0.01, "optimizer.name": "adam", "seed": 7},
        "dataset_ids": [],
    }
