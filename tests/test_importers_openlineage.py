"""Import of OpenLineage run, job and dataset events."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import mltrail
import pytest
from mltrail.domain import EdgeType, NodeKind, RunStatus
from mltrail.importers import import_path
from mltrail.importers.values import derive_id

PRODUCER = "https://github.com/OpenLineage/OpenLineage/tree/1.20.0/integration/airflow"
PARENT = "01890a5d-ac7a-7a1d-8e2f-000000000001"
LOAD = "01890a5d-ac7a-7a1d-8e2f-000000000002"
FAILING = "01890a5d-ac7a-7a1d-8e2f-000000000003"
ABORTED = "01890a5d-ac7a-7a1d-8e2f-000000000004"
MERGE = "01890a5d-ac7a-7a1d-8e2f-000000000005"
ORPHAN = "01890a5d-ac7a-7a1d-8e2f-000000000006"
OTHER_PARENT = "01890a5d-ac7a-7a1d-8e2f-0000000000ff"

USERS = {
    "namespace": "postgres://db:5432",
    "name": "public.users",
    "facets": {
        "schema": {
            "_producer": PRODUCER,
            "fields": [
                {"name": "id", "type": "bigint"},
                {"name": "email", "type": "text"},
            ],
        },
        "dataSource": {
            "_producer": PRODUCER,
            "name": "db",
            "uri": "postgres://db:5432",
        },
    },
}
WAREHOUSE = {
    "namespace": "s3://bucket",
    "name": "/warehouse/users",
    "facets": {"version": {"datasetVersion": "v2"}},
}


def run_event(event_type, time, run_id, job_name, namespace="airflow", **extra):
    event = {
        "eventType": event_type,
        "eventTime": time,
        "producer": PRODUCER,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json",
        "run": {"runId": run_id, "facets": extra.pop("run_facets", {})},
        "job": {"namespace": namespace, "name": job_name},
    }
    event.update(extra)
    return event


def parent_facet(run_id, name, namespace="airflow"):
    return {
        "parent": {
            "run": {"runId": run_id},
            "job": {"namespace": namespace, "name": name},
        }
    }


def build_events(root: Path, outside: Path) -> Path:
    folder = root / "events"
    folder.mkdir(parents=True)
    array = [
        run_event("START", "2024-05-01T10:00:00.000000Z", PARENT, "etl"),
        run_event(
            "START",
            "2024-05-01T10:00:01.500000+00:00",
            LOAD,
            "etl.load",
            run_facets=parent_facet(PARENT, "etl"),
            inputs=[USERS],
        ),
        run_event(
            "COMPLETE",
            "2024-05-01T10:05:00Z",
            LOAD,
            "etl.load",
            inputs=[USERS],
            outputs=[WAREHOUSE],
        ),
        # A RUNNING event that arrives after the end is kept out of the status.
        run_event("RUNNING", "2024-05-01T10:06:00Z", LOAD, "etl.load"),
        # Lower case and a time without offset, which some producers send.
        run_event("complete", "2024-05-01T10:10:00", PARENT, "etl"),
        run_event(
            "FAIL",
            "2024-05-01T11:00:00Z",
            FAILING,
            "etl.check",
            run_facets={
                "errorMessage": {
                    "message": "row count 0",
                    "programmingLanguage": "python",
                    "stackTrace": "Traceback ...",
                }
            },
        ),
    ]
    (folder / "events.json").write_text(json.dumps(array), encoding="utf-8")
    lines = [
        # Epoch milliseconds and runId at the top level.
        {
            "eventType": "START",
            "eventTime": 1714561200000,
            "producer": PRODUCER,
            "runId": ABORTED,
            "job": {"namespace": "spark", "name": "aggregate"},
        },
        run_event("ABORTED", "2024-05-01T11:30:00Z", ABORTED, "aggregate", "spark"),
        # An in-place update reads and writes the same dataset version.
        run_event(
            "COMPLETE",
            "2024-05-01T12:00:00Z",
            MERGE,
            "merge",
            "spark",
            inputs=[WAREHOUSE],
            outputs=[WAREHOUSE],
        ),
        # No job namespace, datasets as a uri and as a string.
        {
            "eventType": "COMPLETED",
            "eventTime": "2024-05-01T12:30:00Z",
            "producer": PRODUCER,
            "run": {
                "runId": ORPHAN,
                "facets": parent_facet(OTHER_PARENT, "dag", "other"),
            },
            "job": {"name": "export"},
            "inputs": [{"uri": "gs://lake/raw/events"}],
            "outputs": ["file://host/tmp/export.csv"],
        },
        # A static job event and a dataset event (OpenLineage 2).
        {
            "eventTime": "2024-05-01T09:00:00Z",
            "producer": PRODUCER,
            "job": {"namespace": "airflow", "name": "etl.load"},
            "inputs": [USERS],
            "outputs": [WAREHOUSE],
        },
        {
            "eventTime": "2024-05-01T09:00:00Z",
            "producer": PRODUCER,
            "dataset": {"namespace": "kafka://broker", "name": "clicks"},
        },
        # What cannot be read: no time, an unknown type, no job, bad JSON.
        {
            "eventType": "START",
            "producer": PRODUCER,
            "run": {"runId": "x"},
            "job": {"namespace": "a", "name": "b"},
        },
        run_event("PAUSED", "2024-05-01T12:00:00Z", "y", "b"),
        {
            "eventType": "START",
            "eventTime": "2024-05-01T12:00:00Z",
            "run": {"runId": "z"},
        },
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n{not json\n"
    (folder / "more.jsonl").write_text(text, encoding="utf-8")
    # One pretty-printed event in a file of its own.
    single = {
        "eventTime": "2024-05-01T09:00:00Z",
        "producer": PRODUCER,
        "dataset": {"namespace": "bigquery", "name": "project.ds.table"},
    }
    (folder / "single.json").write_text(json.dumps(single, indent=2), encoding="utf-8")
    (outside / "stolen.json").write_text(
        json.dumps(
            [
                run_event(
                    "START",
                    "2024-05-01T10:00:00Z",
                    "01890a5d-0000-7000-8000-0000000000aa",
                    "stolen",
                )
            ]
        ),
        encoding="utf-8",
    )
    (folder / "linked.json").symlink_to(outside / "stolen.json")
    return folder


@pytest.fixture(params=["memory", "local"])
def store(request, tmp_path):
    url = (
        "memory://" if request.param == "memory" else f"local://{tmp_path / 'store.db'}"
    )
    opened = mltrail.connect(url)
    yield opened
    opened.close()


@pytest.fixture
def events(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    return build_events(tmp_path / "source", outside)


def utc(*args):
    return datetime(*args, tzinfo=timezone.utc)


def run(store, run_id):
    return store.get_run(derive_id("ol-run", run_id))


def test_runs_take_status_and_times_from_events(store, events):
    import_path(store, "openlineage", events)

    load = run(store, LOAD)
    assert load.status == RunStatus.COMPLETED
    assert load.start_time == utc(2024, 5, 1, 10, 0, 1, 500000)
    assert load.end_time == utc(2024, 5, 1, 10, 5)
    assert load.name == "etl.load"
    assert load.tags["openlineage.job.namespace"] == "airflow"
    assert load.tags["mltrail.source.id"] == LOAD
    assert run(store, PARENT).end_time == utc(2024, 5, 1, 10, 10)
    assert run(store, FAILING).status == RunStatus.FAILED
    assert run(store, FAILING).error == {
        "type": "python",
        "message": "row count 0",
        "traceback": "Traceback ...",
    }
    aborted = run(store, ABORTED)
    assert aborted.status == RunStatus.KILLED
    assert aborted.start_time == utc(2024, 5, 1, 11, 0)
    assert store.get_experiment("spark").id == aborted.experiment_id


def test_parent_facet_links_runs(store, events):
    import_path(store, "openlineage", events)

    load = run(store, LOAD)
    assert load.parent_run_id == derive_id("ol-run", PARENT)
    orphan = run(store, ORPHAN)
    assert orphan.parent_run_id is None
    parent_node = store.backend.lineage.get_node(derive_id("ol-run", OTHER_PARENT))
    assert parent_node.kind == NodeKind.RUN
    assert parent_node.label == "other/dag"
    edges = store.upstream(orphan.id, depth=1).edges
    assert any(e.type == EdgeType.CHILD_OF for e in edges)


def test_datasets_and_jobs_become_lineage(store, events):
    import_path(store, "openlineage", events)

    users = store.get_dataset("postgres://db:5432/public.users", "unversioned")
    warehouse = store.get_dataset("s3://bucket/warehouse/users", "v2")
    assert users.schema == {
        "fields": [{"name": "id", "type": "bigint"}, {"name": "email", "type": "text"}]
    }
    assert users.provenance["data_source"] == {
        "name": "db",
        "uri": "postgres://db:5432",
    }
    assert users.ingested_at == utc(2024, 5, 1, 9)
    assert store.get_dataset("kafka://broker/clicks", "unversioned")
    assert store.get_dataset("bigquery/project.ds.table", "unversioned")
    assert store.get_dataset("gs://lake/raw/events", "unversioned")
    assert store.get_dataset("file://host/tmp/export.csv", "unversioned")

    load = run(store, LOAD)
    assert load.dataset_ids == [users.id]
    job = derive_id("ol-job", "airflow", "etl.load")
    assert store.backend.lineage.get_node(job).kind == NodeKind.PIPELINE
    upstream = store.upstream(warehouse.id, depth=2)
    assert {job, load.id, users.id} <= set(upstream.nodes)


def test_deviations_are_noted_and_unclear_events_skipped(store, events):
    summary = import_path(store, "openlineage", events)

    notes = {o.message: o.count for o in summary.notes.values()}
    assert notes["eventType is not in upper case"] == 1
    assert notes["eventType is a synonym of a spec value"] == 2
    assert notes["eventTime has no UTC offset; read as UTC"] == 1
    assert notes["eventTime is an epoch number, not ISO 8601"] == 1
    assert notes["runId is at the top level, not under run"] == 1
    assert "dataset is both input and output; recorded as output" in notes
    assert any(message.startswith("RUNNING arrives after") for message in notes)
    skips = {o.message for o in summary.skips.values() if o.kind == "event"}
    assert "eventTime is missing" in skips
    assert "run event names no job" in skips
    assert any(message.startswith("eventType 'PAUSED'") for message in skips)
    assert any(message.startswith("line is not valid JSON") for message in skips)
    assert any(
        o.message == "symbolic link leads outside the import folder"
        for o in summary.skips.values()
    )
    with pytest.raises(mltrail.NotFoundError):
        store.get_experiment("stolen")


def test_import_twice_adds_nothing(store, events):
    first = import_path(store, "openlineage", events)
    second = import_path(store, "openlineage", events)

    assert sum(second.created.values()) == 0
    assert second.unchanged["run"] == first.created["run"] == 6
    assert second.unchanged["dataset"] == first.created["dataset"]
    # The job event and the run event both name the job's edges, so the first
    # import already finds some of them.
    assert (
        second.unchanged["lineage_edge"]
        == first.created["lineage_edge"] + first.unchanged["lineage_edge"]
    )


def test_dry_run_writes_nothing(store, events):
    preview = import_path(store, "openlineage", events, dry_run=True)

    assert list(store.iter_runs()) == []
    real = import_path(store, "openlineage", events)
    assert preview.created == real.created


def test_single_file_imports(store, events):
    import_path(store, "openlineage", events / "events.json")

    assert {r.name for r in store.iter_runs()} == {"etl", "etl.load", "etl.check"}
