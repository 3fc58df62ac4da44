import pytest

from mltrail.api import connect
from mltrail.backends.local import LocalConformanceHarness
from mltrail.backends.memory import MemoryConformanceHarness
from mltrail.conformance.cases.operations import populate
from mltrail.domain import EdgeType, LineageEdge, LineageNode, MetricPoint, NodeKind
from mltrail.ops import archive_metrics, fsck
from mltrail.ops.cold import ARCHIVE_TAG, BLOB_NAMESPACE, BlobSegmentStore, head_key
from mltrail.store import Store


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


def checks(report):
    return sorted(p.check for p in report.problems)


def test_clean_store(store):
    populate(store)
    report = fsck(store)
    assert report.ok
    assert report.problems == []
    assert report.checked["run"] == 3
    assert report.checked["audit_event"] > 10


def test_run_references(store, harness):
    parent, _ = populate(store)
    record = store.get_run(parent.id).to_record()
    record.update(id="BROKEN1", experiment_id="NOEXP1", parent_run_id="NORUN1",
                  dataset_ids=["NODATA1"])
    harness.raw_write(store.backend, "run", record)
    report = fsck(store)
    broken = [p for p in report.problems if p.entity_id == "BROKEN1"]
    assert sorted(p.check for p in broken) == [
        "lineage.missing_node", "run.missing_dataset", "run.missing_experiment",
        "run.missing_parent"]
    assert "'NOEXP1'" in next(p.message for p in broken
                              if p.check == "run.missing_experiment")


def test_missing_nodes_and_edges_repaired(store):
    parent, child = populate(store)
    store.backend.lineage.delete_node(parent.id)
    report = fsck(store, repair=True)
    assert "lineage.missing_node" in checks(report)
    assert "lineage.missing_edge" in checks(report)
    assert report.ok
    edges = {e.key for e in store.backend.lineage.edges(child.id, "upstream")}
    assert f"{child.id}|child_of|{parent.id}" in edges
    assert fsck(store).problems == []


def test_dangling_edge_and_orphan_node(store):
    parent, _ = populate(store)
    store.backend.lineage.add_edge(LineageEdge(source=parent.id, target="NOWHERE1",
                                               type=EdgeType.CONSUMED))
    store.backend.lineage.put_node(LineageNode(id="GONE1", kind=NodeKind.DATASET))
    assert checks(fsck(store)) == ["lineage.dangling_edge", "lineage.orphan_node"]
    repaired = fsck(store, repair=True)
    assert all(p.repaired for p in repaired.problems)
    assert fsck(store).problems == []
    assert store.verify_audit().ok


def test_repair_audited(store):
    populate(store)
    store.backend.lineage.put_node(LineageNode(id="GONE1", kind=NodeKind.RUN))
    fsck(store, repair=True)
    event = store.backend.audit.last()
    assert event.action == "repair"
    assert event.details["repaired"] == [{"check": "lineage.orphan_node",
                                          "entity_id": "GONE1"}]


def test_orphan_metrics_repaired(store):
    store.backend.metrics.append("GHOST1", [MetricPoint(run_id="GHOST1", key="m",
                                                        value=1.0, seq="b:0")])
    assert checks(fsck(store)) == ["metrics.orphan"]
    fsck(store, repair=True)
    assert list(store.backend.metrics.runs_with_metrics()) == []


def test_version_references(store, harness):
    populate(store)
    record = store.get_model_version("classifier", 1).to_record()
    record.update(id="LOSTVERSION1", model_id="NOMODEL1", run_id="NORUN1")
    harness.raw_write(store.backend, "model_version", record)
    report = fsck(store, repair=True)
    assert {"model_version.missing_model", "model_version.missing_run"} <= \
        set(checks(report))
    assert [p.check for p in report.remaining] == [
        "model_version.missing_model", "model_version.missing_run"]


def test_dangling_alias(store, harness):
    populate(store)
    model = store.get_model("classifier").to_record()
    model["aliases"] = {"production": 7}
    harness.raw_write(store.backend, "model", model)
    report = fsck(store)
    assert checks(report) == ["model.dangling_alias"]
    assert "version 7" in report.problems[0].message


def test_archive_of_run_removed_behind_store(store):
    parent, _ = populate(store)
    archive_metrics(store, status="completed")
    store.backend.metrics.delete_run(parent.id)
    store.backend.runs.delete(parent.id)
    report = fsck(store, repair=True)
    assert "archive.orphan" in checks(report)
    assert list(store.backend.blobs.scan(BLOB_NAMESPACE)) == []


def test_purged_run_leaves_no_archive(store):
    parent, _ = populate(store)
    archive_metrics(store, status="completed")
    store.purge_run(parent.id)
    assert list(store.backend.blobs.scan(BLOB_NAMESPACE)) == []
    assert "archive.orphan" not in checks(fsck(store))


def test_uncommitted_archive_records(store):
    parent, _ = populate(store)
    archive_metrics(store, status="completed")
    segments = BlobSegmentStore(store.backend.blobs)
    segments.put(f"{parent.id}|g0002|s000000|000", {"data": ""})
    assert checks(fsck(store)) == ["archive.uncommitted"]
    fsck(store, repair=True)
    assert fsck(store).problems == []
    assert store.latest_metrics(parent.id)["acc"].step == 39


def test_missing_archive_reported(store):
    parent, _ = populate(store)
    archive_metrics(store, status="completed")
    BlobSegmentStore(store.backend.blobs).delete(head_key(parent.id))
    report = fsck(store, repair=True)
    missing = [p for p in report.remaining if p.check == "run.missing_archive"]
    assert len(missing) == 1
    assert ARCHIVE_TAG in missing[0].message


def test_broken_audit_not_repairable(store, harness):
    populate(store)
    record = harness.raw_read(store.backend, "audit", 2)
    record["entity_id"] = "SOMEONEELSE"
    harness.raw_write(store.backend, "audit", record)
    report = fsck(store, repair=True)
    assert [p.check for p in report.remaining] == ["audit.broken_chain"]
    assert report.remaining[0].entity_id == "2"


def test_old_schema_warned(store, harness):
    experiment = store.create_experiment("e")
    harness.raw_write(store.backend, "run", {
        "id": "OLD1", "schema_version": 0, "revision": 0, "tags": {},
        "created_at": "2021-01-01T00:00:00Z", "updated_at": "2021-01-01T00:00:00Z",
        "experiment_id": experiment.id, "name": "old", "status": "completed"})
    report = fsck(store, repair=True)
    assert report.ok
    assert "mltrail upgrade" in report.warnings[0]


def test_reader_may_check_not_repair(store):
    from mltrail.access import AccessPolicy
    from mltrail.config import parse_config
    from mltrail.errors import PermissionDeniedError

    config = parse_config({"access": {"roles": {"*": {"rita": "reader"}}}})
    reader = Store(store.backend, actor="rita",
                   policy=AccessPolicy.from_config(config.access))
    assert fsck(reader).ok
    with pytest.raises(PermissionDeniedError):
        fsck(reader, repair=True)


def test_memory_url_store(tmp_path):
    store = connect(f"local://{tmp_path}/x.db", actor="t")
    populate(store)
    assert fsck(store).ok
    store.close()
