"""Tests of run timelines, on memory and local stores."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from mltrail.access import AccessPolicy, Role
from mltrail.api import connect
from mltrail.cli import dump_json
from mltrail.config import Config
from mltrail.conformance.cases.support import BASE_TIME
from mltrail.discovery import render_text, timeline
from mltrail.domain import Run
from mltrail.errors import PermissionDeniedError
from mltrail.ops import archive_metrics
from mltrail.store import Store


@pytest.fixture(params=["memory", "local"])
def store(request, tmp_path):
    url = "memory://" if request.param == "memory" else f"local://{tmp_path}/s.db"
    opened = connect(url, actor="alice", config=Config())
    yield opened
    opened.close()


def entries_of(result, kind):
    return [entry for entry in result.entries if entry.kind == kind]


def test_failed_run_error_in_status_entry(store):
    run = store.create_run(store.create_experiment("e").id, status="running")
    store.set_run_status(run.id, "failed", error={"type": "OOM", "message": "GPU 0"})

    (failed,) = [e for e in entries_of(timeline(store, run.id), "status")
                 if e.source == "audit"]

    assert failed.summary == "status running -> failed (OOM: GPU 0)"
    assert failed.details["error"] == {"type": "OOM", "message": "GPU 0"}


def test_imported_run_keeps_its_own_times(store):
    experiment = store.create_experiment("imported")
    run = store.create_run(experiment.id, status="completed", params={"lr": 0.1},
                           created_at=BASE_TIME, start_time=BASE_TIME,
                           end_time=BASE_TIME + timedelta(hours=1))

    result = timeline(store, run.id)

    created = entries_of(result, "created")[0]
    assert created.at == BASE_TIME
    assert "recorded_at" in created.details
    assert [(e.at, e.summary) for e in entries_of(result, "status")] == [
        (BASE_TIME, "started (run start_time)"),
        (BASE_TIME + timedelta(hours=1), "ended with status completed (run end_time)")]


def test_facts_without_audit_listed_last(store):
    experiment = store.create_experiment("raw")
    # Written through the repository, as an older tool might have: no audit events.
    run = Run(experiment_id=experiment.id, name="raw", params={"lr": 0.5},
              artifact_uris={"model": "s3://m"}, created_at=BASE_TIME)
    store.backend.runs.insert(run)

    result = timeline(store, run.id)

    assert result.entries[0].kind == "created"
    assert result.entries[0].summary.endswith("(no audit event)")
    unknown = [e for e in result.entries if e.at is None]
    assert [e.kind for e in unknown] == ["params", "artifact"]
    assert unknown[0].details["params"] == {"lr": 0.5}
    assert result.entries[-2:] == unknown


def test_archived_points_included(store):
    run = store.create_run(store.create_experiment("cold").id, status="completed",
                           end_time="2020-01-01T00:00:00Z")
    store.log_metrics(run.id, [{"key": "acc", "value": step / 10, "step": step,
                                "timestamp": BASE_TIME + timedelta(seconds=step)}
                               for step in range(10)])
    archive_metrics(store, status="completed")
    assert list(store.backend.metrics.history(run.id, "acc")) == []

    result = timeline(store, run.id)

    (summary,) = result.metrics
    assert summary.count == 10
    assert summary.first_at == BASE_TIME
    assert summary.last == 0.9
    tag_changes = [e.summary for e in entries_of(result, "tags")]
    assert any(summary.startswith("archive_metrics") for summary in tag_changes)


def test_denied_request_shown(store):
    run = store.create_run(store.create_experiment("e").id)
    policy = AccessPolicy(enabled=True, roles={"default": {"eve": Role.READER}})
    with pytest.raises(PermissionDeniedError):
        Store(store.backend, actor="eve", policy=policy).log_params(run.id, {"x": 1})

    (denied,) = entries_of(timeline(store, run.id), "audit")

    assert "denied 'log_params' to 'eve'" in denied.summary
    assert denied.details["action"] == "denied"


def test_reader_of_other_namespace_rejected(store):
    run = store.create_run(store.create_experiment("e", namespace="private").id)
    policy = AccessPolicy(enabled=True, roles={"default": {"eve": Role.READER}})

    with pytest.raises(PermissionDeniedError):
        timeline(Store(store.backend, actor="eve", policy=policy), run.id)


def test_text_report(store):
    experiment = store.create_experiment("report")
    run = store.create_run(experiment.id, params={"lr": 0.1})
    store.log_metric(run.id, "loss", 0.25)
    store.set_run_status(run.id, "running")

    text = render_text(timeline(store, run.id))

    assert text.startswith(f"Timeline of run {run.id}\n")
    assert "  experiment  report (" in text
    assert "status pending -> running  [alice, audit #" in text
    assert "1 params at creation lr=0.1" in text
    assert "loss: 1 points, steps 0-0" in text


def test_json_record_is_strict_json(store):
    run = store.create_run(store.create_experiment("e").id)
    store.log_metric(run.id, "x", float("nan"))

    record = json.loads(dump_json(timeline(store, run.id).record()))

    assert record["run"]["id"] == run.id
    assert record["metrics"][0]["last"] == "NaN"
    assert record["metrics"][0]["min"] is None
    assert record["entries"][0]["kind"] == "created"
