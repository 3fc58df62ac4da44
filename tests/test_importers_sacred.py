"""Import of Sacred FileStorageObserver run folders."""

from __future__ import annotations

import json
import math
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mltrail
import pytest
from mltrail import codec
from mltrail.domain import RunStatus
from mltrail.importers import import_path

HOST = {
    "ENV": {"CUDA_VISIBLE_DEVICES": "0"},
    "cpu": "AMD EPYC 7B12",
    "gpus": {
        "driver_version": "535.54",
        "gpus": [{"model": "A100", "total_memory": 40960}],
    },
    "hostname": "trainer-1",
    "os": ["Linux", "Linux-5.15.0-x86_64-with-glibc2.35"],
    "python_version": "3.11.7",
}
EXPERIMENT = {
    "base_dir": "/home/alice/mnist",
    "dependencies": ["numpy==1.26.4", "sacred==0.8.7"],
    "mainfile": "train.py",
    "name": "mnist",
    "repositories": [
        {"commit": "0f1e2d3c", "dirty": True, "url": "git@example.org:alice/mnist.git"}
    ],
    "sources": [["train.py", "_sources/train_5d41402abc4b2a76.py"]],
}

# config.json as jsonpickle writes it: bare NaN and Infinity tokens and a
# py/object wrapper that must stay plain data.
CONFIG_TEXT = """{
  "batch_size": 64,
  "lr": 0.1000000000000000055511151231257827,
  "momentum": NaN,
  "clip": Infinity,
  "floor": -Infinity,
  "optimizer": {"name": "sgd", "nesterov": true},
  "scale": {"py/object": "numpy.float32", "dtype": "float32", "value": 0.5},
  "seed": 284923
}"""

METRICS_TEXT = """{
  "loss": {
    "steps": [0, 1, 2, 3],
    "timestamps": ["2024-03-01T10:00:01.000001", "2024-03-01T10:00:02.000002",
                   "2024-03-01T10:00:03.000003", "2024-03-01T10:00:04+02:00"],
    "values": [2.302585092994046, NaN, Infinity, -Infinity]
  },
  "acc": {
    "steps": [0, 1],
    "timestamps": ["2024-03-01T10:00:01", "2024-03-01T10:00:02"],
    "values": [{"py/object": "numpy.float32", "dtype": "float32", "value": 0.25},
               {"py/reduce": [{"py/function": "numpy.core.multiarray.scalar"}]}]
  }
}"""


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def bits(value: float) -> bytes:
    return struct.pack(">d", value)


def write_run(folder: Path, status: str, **fields) -> None:
    folder.mkdir(parents=True)
    entry = {
        "artifacts": [],
        "command": "main",
        "experiment": EXPERIMENT,
        "host": HOST,
        "meta": {
            "command": "main",
            "options": {"--beat-interval": None, "UPDATE": ["lr=0.1"]},
        },
        "resources": [],
        "heartbeat": None,
        "status": status,
    }
    entry.update(fields)
    (folder / "run.json").write_text(json.dumps(entry, indent=2), encoding="utf-8")
    (folder / "config.json").write_text(CONFIG_TEXT, encoding="utf-8")


def build_basedir(root: Path, outside: Path) -> Path:
    basedir = root / "runs"
    write_run(
        basedir / "1",
        "COMPLETED",
        start_time="2024-03-01T10:00:00.000001",
        stop_time="2024-03-01T11:30:00.500000",
        heartbeat="2024-03-01T11:29:59.000000",
        result={"py/object": "numpy.float32", "dtype": "float32", "value": 0.97},
        artifacts=["model.pt"],
    )
    (basedir / "1" / "metrics.json").write_text(METRICS_TEXT, encoding="utf-8")
    (basedir / "1" / "info.json").write_text('{"best_epoch": 7}', encoding="utf-8")
    (basedir / "1" / "cout.txt").write_text("epoch 1\n", encoding="utf-8")

    write_run(
        basedir / "2",
        "FAILED",
        start_time="2024-03-02T08:00:00",
        stop_time="2024-03-02T08:05:00",
        fail_trace=[
            "Traceback (most recent call last):\n",
            '  File "train.py", line 3, in main\n',
            "ValueError: loss is nan\n",
        ],
    )

    # A run that crashed while RUNNING, and one that is running now.
    write_run(
        basedir / "3",
        "RUNNING",
        start_time="2020-01-01T00:00:00",
        heartbeat="2020-01-01T00:10:00.250000",
    )
    fresh = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=5)
    write_run(
        basedir / "4",
        "RUNNING",
        start_time=fresh.isoformat(),
        heartbeat=fresh.isoformat(),
    )
    write_run(
        basedir / "5",
        "INTERRUPTED",
        start_time="2024-03-03T09:00:00",
        stop_time="2024-03-03T09:01:00",
    )
    queued = {
        "py/object": "datetime.datetime",
        "__reduce__": [{"py/type": "datetime.datetime"}, ["B+gDAwkAAAAAAAA="]],
    }
    write_run(basedir / "6", "QUEUED", meta={"command": "main", "queue_time": queued})
    write_run(
        basedir / "7",
        "TIMEOUT",
        start_time="2024-03-04T09:00:00",
        stop_time="2024-03-04T21:00:00",
    )

    (basedir / "8").mkdir()  # a crashed observer left no run.json
    (basedir / "_sources").mkdir()
    escaped = outside / "99"
    write_run(escaped, "COMPLETED", start_time="2024-03-05T09:00:00")
    (basedir / "99").symlink_to(escaped, target_is_directory=True)
    return basedir


@pytest.fixture(params=["memory", "local"])
def store(request, tmp_path):
    url = (
        "memory://" if request.param == "memory" else f"local://{tmp_path / 'store.db'}"
    )
    opened = mltrail.connect(url)
    yield opened
    opened.close()


@pytest.fixture
def basedir(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    return build_basedir(tmp_path / "source", outside)


def runs_by_folder(store):
    return {
        run.tags["mltrail.source.id"]: run
        for run in store.iter_runs(include_deleted=True)
    }


def test_statuses_map_including_stale_running(store, basedir):
    summary = import_path(store, "sacred", basedir)
    runs = runs_by_folder(store)

    assert runs["1"].status == RunStatus.COMPLETED
    assert runs["2"].status == RunStatus.FAILED
    assert runs["3"].status == RunStatus.FAILED
    assert runs["4"].status == RunStatus.RUNNING
    assert runs["5"].status == RunStatus.KILLED
    assert runs["6"].status == RunStatus.PENDING
    assert runs["7"].status == RunStatus.KILLED
    assert runs["3"].end_time == utc(2020, 1, 1, 0, 10, 0, 250000)
    assert runs["3"].error["type"] == "StaleHeartbeat"
    assert runs["3"].tags["sacred.status"] == "RUNNING"
    assert runs["7"].tags["sacred.status"] == "TIMEOUT"
    assert "8" not in runs
    notes = {o.message for o in summary.notes.values()}
    assert any("heartbeat is stale" in note for note in notes)


def test_times_without_offset_are_utc(store, basedir):
    import_path(store, "sacred", basedir)
    run = runs_by_folder(store)["1"]

    assert run.start_time == utc(2024, 3, 1, 10, 0, 0, 1)
    assert run.end_time == utc(2024, 3, 1, 11, 30, 0, 500000)
    assert run.created_at == run.start_time
    assert run.tags["sacred.heartbeat"] == "2024-03-01T11:29:59.000000"


def test_config_keeps_every_value(store, basedir):
    import_path(store, "sacred", basedir)
    run = runs_by_folder(store)["1"]

    assert bits(run.params["lr"]) == bits(0.1)
    assert math.isnan(run.params["momentum"])
    assert run.params["clip"] == math.inf
    assert run.params["floor"] == -math.inf
    assert run.params["optimizer"] == {"name": "sgd", "nesterov": True}
    assert run.params["scale"] == {
        "py/object": "numpy.float32",
        "dtype": "float32",
        "value": 0.5,
    }
    assert run.seeds == {"seed": 284923}


def test_host_git_and_dependencies(store, basedir):
    import_path(store, "sacred", basedir)
    run = runs_by_folder(store)["1"]

    assert run.environment["python"] == "3.11.7"
    assert run.environment["platform"] == "Linux-5.15.0-x86_64-with-glibc2.35"
    assert run.environment["hardware"]["cpu"] == "AMD EPYC 7B12"
    assert run.environment["host"]["hostname"] == "trainer-1"
    assert run.environment["packages"] == {"numpy": "1.26.4", "sacred": "0.8.7"}
    assert run.code_version == {
        "git_commit": "0f1e2d3c",
        "dirty": True,
        "repository": "git@example.org:alice/mnist.git",
        "mainfile": "train.py",
    }
    assert run.artifact_uris["artifact:model.pt"].endswith("/runs/1/model.pt")
    assert run.artifact_uris["cout.txt"].endswith("/runs/1/cout.txt")
    assert run.artifact_uris["source:train.py"].endswith(
        "/runs/_sources/train_5d41402abc4b2a76.py"
    )


def test_metrics_and_result_are_bit_exact(store, basedir):
    summary = import_path(store, "sacred", basedir)
    run = runs_by_folder(store)["1"]
    loss = list(store.metric_history(run.id, "loss"))

    assert [p.step for p in loss] == [0, 1, 2, 3]
    assert bits(loss[0].value) == bits(2.302585092994046)
    assert math.isnan(loss[1].value)
    assert loss[2].value == math.inf
    assert loss[3].value == -math.inf
    assert loss[0].timestamp == utc(2024, 3, 1, 10, 0, 1, 1)
    assert loss[3].timestamp == utc(2024, 3, 1, 8, 0, 4)
    acc = list(store.metric_history(run.id, "acc"))
    assert [(p.step, p.value) for p in acc] == [(0, 0.25)]
    result = list(store.metric_history(run.id, "result"))
    assert [(p.value, p.timestamp) for p in result] == [
        (0.97, utc(2024, 3, 1, 11, 30, 0, 500000))
    ]
    assert codec.loads(run.tags["sacred.result"])["value"] == 0.97
    assert json.loads(run.tags["sacred.info"]) == {"best_epoch": 7}
    skipped = {o.message for o in summary.skips.values() if o.kind == "metric_point"}
    assert any("is not a number" in message for message in skipped)


def test_failure_trace_becomes_error(store, basedir):
    import_path(store, "sacred", basedir)
    run = runs_by_folder(store)["2"]

    assert run.error["type"] == "ValueError"
    assert run.error["message"] == "loss is nan"
    assert run.error["traceback"].startswith("Traceback")
    assert run.end_time == utc(2024, 3, 2, 8, 5)


def test_queued_run_with_pickled_time(store, basedir):
    summary = import_path(store, "sacred", basedir)
    run = runs_by_folder(store)["6"]

    assert run.start_time is None
    assert run.end_time is None
    notes = {o.message for o in summary.notes.values()}
    assert "queue_time is stored as a Python object; not read" in notes


def test_import_twice_adds_nothing(store, basedir):
    first = import_path(store, "sacred", basedir)
    second = import_path(store, "sacred", basedir)

    assert sum(second.created.values()) == 0
    assert second.unchanged["run"] == first.created["run"] == 7
    assert second.unchanged["metric_point"] == first.created["metric_point"]
    assert len(runs_by_folder(store)) == 7


def test_dry_run_writes_nothing(store, basedir):
    preview = import_path(store, "sacred", basedir, dry_run=True)

    assert list(store.iter_runs()) == []
    assert preview.created["run"] == 7
    assert preview.created["metric_point"] == 6


def test_link_out_of_the_folder_is_rejected(store, basedir):
    summary = import_path(store, "sacred", basedir)

    assert "99" not in runs_by_folder(store)
    assert any(
        o.message == "symbolic link leads outside the import folder"
        for o in summary.skips.values()
    )


def test_single_run_folder_imports(store, basedir):
    import_path(store, "sacred", basedir / "2")

    assert list(runs_by_folder(store)) == ["2"]
