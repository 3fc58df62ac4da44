import tracemalloc
from datetime import timedelta

import pytest

from mltrail import codec
from mltrail.api import connect
from mltrail.config import Config
from mltrail.conformance.cases.operations import populate
from mltrail.conformance.cases.support import BASE_TIME
from mltrail.errors import InvalidInputError, NotFoundError
from mltrail.ops import archive, archive_metrics, segments
from mltrail.ops.cold import (
    ARCHIVE_TAG, BLOB_NAMESPACE, BlobSegmentStore, head_key, read_head,
)
from mltrail.ops.segments import SegmentFormatError


@pytest.fixture(params=["memory", "local"])
def store(request, tmp_path):
    url = "memory://" if request.param == "memory" else f"local://{tmp_path}/s.db"
    opened = connect(url, actor="ops-test", config=Config())
    yield opened
    opened.close()


def finished_run(store, name="r", status="completed", end="2020-01-01T00:00:00Z",
                 points=50):
    experiment = store.get_or_create_experiment("archive")
    run = store.create_run(experiment.id, name=name, status=status, end_time=end,
                           params={"group": name[0]})
    store.log_metrics(run.id, [
        {"key": "acc", "value": step / points, "step": step,
         "timestamp": BASE_TIME + timedelta(seconds=step)} for step in range(points)])
    store.log_metrics(run.id, [{"key": "loss", "value": -0.0, "step": 1,
                                "timestamp": BASE_TIME}] * 3)
    return run


def history(store, run_id, key, **bounds):
    return [(p.step, p.timestamp, p.seq, codec.float_to_bits(p.value), p.extras())
            for p in store.metric_history(run_id, key, **bounds)]


def snapshot(store, run_ids):
    """Every read path that merges archived points, in comparable form."""
    return {
        "history": {r: history(store, r, "acc") for r in run_ids},
        "ties": {r: history(store, r, "loss") for r in run_ids},
        "range": {r: history(store, r, "acc", min_step=10, max_step=20,
                             start=BASE_TIME + timedelta(seconds=12)) for r in run_ids},
        "downsampled": {r: history(store, r, "acc", max_points=7) for r in run_ids},
        "latest": {r: {k: (p.step, p.seq) for k, p in store.latest_metrics(r).items()}
                   for r in run_ids},
        "keys": {r: store.metric_keys(r) for r in run_ids},
        "search": [r.id for r in store.search_runs("metrics.acc >= 0.9",
                                                   order_by="metrics.acc desc").items],
        "best": [(r.id, v) for r, v in store.best_runs("acc", 3, mode="min")],
        "aggregate": store.aggregate("acc", group_by="params.group"),
        "compare": store.compare_runs(run_ids)["metrics"],
    }


def test_reads_unchanged_after_archive(store):
    runs = [finished_run(store, f"{name}{i}", points=30 + 10 * i)
            for i, name in enumerate("abc")]
    ids = [r.id for r in runs]
    before = snapshot(store, ids)
    report = archive_metrics(store, older_than=timedelta(days=30))
    assert report.runs_archived == 3
    assert snapshot(store, ids) == before
    assert all(store.backend.metrics.keys(r) == [] for r in ids)


def test_report_counts_bytes(store):
    finished_run(store, points=2_000)
    report = archive_metrics(store, status="completed")
    assert report.points == 2_003
    assert report.bytes_before > 10 * report.bytes_after
    assert report.bytes_saved == report.bytes_before - report.bytes_after
    assert report.as_dict()["ratio"] == pytest.approx(report.bytes_before /
                                                      report.bytes_after)


def test_selection_by_age(store):
    old = finished_run(store, "old")
    recent = finished_run(store, "new", end=None)
    report = archive_metrics(store, older_than=timedelta(days=30))
    assert report.runs_archived == 1
    assert ARCHIVE_TAG in store.get_run(old.id).tags
    assert ARCHIVE_TAG not in store.get_run(recent.id).tags


def test_selection_by_status(store):
    finished_run(store, "done")
    failed = finished_run(store, "bad", status="failed")
    archive_metrics(store, status="failed")
    archived = [r.name for r in store.iter_runs() if ARCHIVE_TAG in r.tags]
    assert archived == [failed.name]


def test_selection_by_model_version(store):
    producer = finished_run(store, "producer", end=None)
    finished_run(store, "bystander")
    store.create_model("clf")
    store.register_model_version("clf", run_id=producer.id)
    store.set_alias("clf", "production", 1)
    report = archive_metrics(store, model_version="clf:production")
    assert report.runs_selected == 1
    assert report.runs_archived == 1
    assert ARCHIVE_TAG in store.get_run(producer.id).tags


def test_running_runs_skipped(store):
    run = finished_run(store, "live", status="running", end=None)
    report = archive_metrics(store, status="running")
    assert report.runs_archived == 0
    assert "running" in report.skipped[0][1]
    assert store.backend.metrics.keys(run.id) == ["acc", "loss"]


def test_criteria_required(store):
    with pytest.raises(InvalidInputError) as caught:
        archive_metrics(store)
    assert "older_than" in str(caught.value)


def test_unknown_model_version(store):
    with pytest.raises(NotFoundError):
        archive_metrics(store, model_version="nope:1")


def test_second_pass_adds_nothing(store):
    run = finished_run(store)
    archive_metrics(store, status="completed")
    blobs = list(store.backend.blobs.scan(BLOB_NAMESPACE))
    again = archive_metrics(store, status="completed")
    assert again.runs_archived == 0
    assert again.skipped == [(run.id, "already archived; no live metric points left")]
    assert list(store.backend.blobs.scan(BLOB_NAMESPACE)) == blobs


def test_directory_destination(store, tmp_path):
    run = finished_run(store)
    before = snapshot(store, [run.id])
    report = archive_metrics(store, status="completed", destination=tmp_path / "cold")
    assert report.destination == f"dir:{tmp_path / 'cold'}"
    assert (tmp_path / "cold" / run.id / "head.json").exists()
    assert list(store.backend.blobs.scan(BLOB_NAMESPACE)) == []
    assert snapshot(store, [run.id]) == before


def test_other_destination_skipped(store, tmp_path):
    run = finished_run(store)
    archive_metrics(store, status="completed", destination=f"dir:{tmp_path}")
    store.log_metric(run.id, "acc", 1.0, step=99)
    report = archive_metrics(store, status="completed")
    assert "already archived at" in report.skipped[0][1]


def test_crash_before_commit_resumes(store, monkeypatch):
    run = finished_run(store)
    before = snapshot(store, [run.id])

    def crash(*args):
        raise OSError("simulated crash")

    monkeypatch.setattr(archive, "_commit", crash)
    with pytest.raises(OSError):
        archive_metrics(store, status="completed")
    assert snapshot(store, [run.id]) == before
    assert ARCHIVE_TAG not in store.get_run(run.id).tags
    monkeypatch.undo()
    archive_metrics(store, status="completed")
    segments = BlobSegmentStore(store.backend.blobs)
    assert [g["generation"] for g in read_head(segments, run.id)["generations"]] == [1]
    assert snapshot(store, [run.id]) == before


def test_points_arriving_keep_live_points(store, monkeypatch):
    run = finished_run(store)
    real = archive._latest_keys
    calls = []

    def moving(latest):
        calls.append(1)
        keys = real(latest)
        return keys if len(calls) == 1 else {**keys, "new": (0, 0, "x")}

    monkeypatch.setattr(archive, "_latest_keys", moving)
    report = archive_metrics(store, status="completed")
    assert report.runs_archived == 0
    assert "arrived" in report.skipped[0][1]
    assert store.backend.metrics.keys(run.id) == ["acc", "loss"]
    assert len(history(store, run.id, "acc")) == 50


def test_damaged_segment_detected(store):
    run = finished_run(store)
    archive_metrics(store, status="completed")
    segments = BlobSegmentStore(store.backend.blobs)
    key = f"{run.id}|g0001|s000000|000"
    record = segments.get(key)
    record["data"] = record["data"][:-8] + "AAAAAAA="
    segments.put(key, record)
    with pytest.raises(SegmentFormatError) as caught:
        list(store.metric_history(run.id, "acc"))
    assert "SHA-256" in str(caught.value)


def test_newer_archive_format_rejected(store):
    run = finished_run(store)
    archive_metrics(store, status="completed")
    segments = BlobSegmentStore(store.backend.blobs)
    head = segments.get(head_key(run.id))
    segments.put(head_key(run.id), {**head, "format": 2})
    with pytest.raises(InvalidInputError) as caught:
        store.latest_metrics(run.id)
    assert "format 2" in str(caught.value)


def test_long_history_read_bounded(store, monkeypatch):
    monkeypatch.setattr(segments, "SEGMENT_POINTS", 1_000)
    experiment = store.create_experiment("long")
    run = store.create_run(experiment.id, status="completed")
    store.log_metrics(run.id, [{"key": "m", "value": i * 0.5, "step": i}
                               for i in range(10_000)])
    archive_metrics(store, status="completed")
    tracemalloc.start()
    try:
        count = sum(1 for _ in store.metric_history(run.id, "m"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 10_000
    # Keeping the 10,000 decoded points takes about 4 MB. Streaming keeps one
    # segment of 1,000 points and the decompressor's 1 MiB dictionary.
    assert peak < 2_000_000


def test_archive_needs_admin(store):
    from mltrail.access import AccessPolicy
    from mltrail.config import parse_config
    from mltrail.errors import PermissionDeniedError
    from mltrail.store import Store

    finished_run(store)
    config = parse_config({"access": {"roles": {"default": {"wes": "writer"}}}})
    writer = Store(store.backend, actor="wes",
                   policy=AccessPolicy.from_config(config.access))
    with pytest.raises(PermissionDeniedError):
        archive_metrics(writer, status="completed")


def test_populated_store_archives(store):
    parent, _ = populate(store)
    archive_metrics(store, status="completed")
    assert store.latest_metrics(parent.id)["special"].step == 16


def test_purge_removes_archived_records(store):
    kept, purged = finished_run(store, "kept"), finished_run(store, "purged")
    archive_metrics(store, status="completed")
    keys = [key for key, _ in store.backend.blobs.scan(BLOB_NAMESPACE)]
    assert any(key.startswith(purged.id) for key in keys)
    store.purge_run(purged.id)
    left = [key for key, _ in store.backend.blobs.scan(BLOB_NAMESPACE)]
    assert left
    assert all(key.startswith(kept.id) for key in left)
    assert history(store, kept.id, "acc")


def test_purge_removes_archive_directory_records(store, tmp_path):
    run = finished_run(store)
    archive_metrics(store, status="completed", destination=tmp_path / "cold")
    assert list((tmp_path / "cold").rglob("*.json"))
    store.purge_run(run.id)
    assert list((tmp_path / "cold").rglob("*.json")) == []
