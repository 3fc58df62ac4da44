import sqlite3
import struct
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

import mltrail
from mltrail.backends.local_metrics import CHUNK_POINTS, decode_chunk
from mltrail.domain import MetricPoint
from mltrail.errors import BackendUnavailableError, InvalidInputError


def test_store_file_created(tmp_path):
    path = tmp_path / "nested" / "store.db"
    store = mltrail.connect(f"local://{path}")
    store.create_experiment("e")
    store.close()
    assert path.exists()


def test_directory_path_rejected(tmp_path):
    with pytest.raises(InvalidInputError):
        mltrail.connect(f"local://{tmp_path}")


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(BackendUnavailableError):
        mltrail.connect(f"local://{path}")


def test_url_without_path():
    with pytest.raises(InvalidInputError):
        mltrail.connect("local://")


def test_data_survives_reopen(tmp_path):
    url = f"local://{tmp_path}/s.db"
    store = mltrail.connect(url)
    with mltrail.start_run(store, "exp", params={"x": -0.0}) as run:
        run.log_metric("m", float("nan"))
    store.close()
    again = mltrail.connect(url)
    assert str(again.get_run(run.id).params["x"]) == "-0.0"
    again.close()


def test_nan_payload_kept_in_chunk_and_latest(tmp_path):
    url = f"local://{tmp_path}/s.db"
    store = mltrail.connect(url)
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id)
    payload = struct.unpack(">d", bytes.fromhex("7ff8000000000abc"))[0]
    store.log_metrics(run.id, [{"key": "m", "value": payload}])
    store.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        data, count = conn.execute("SELECT data, count FROM metric_chunks").fetchone()
        latest = conn.execute("SELECT value, bits FROM metric_latest").fetchone()
    chunk = decode_chunk(data, count)
    assert struct.pack(">d", chunk.values[0]).hex() == "7ff8000000000abc"
    assert latest == (None, "7ff8000000000abc")


def test_second_process_sees_writes(tmp_path):
    url = f"local://{tmp_path}/s.db"
    store = mltrail.connect(url)
    experiment = store.create_experiment("shared")
    code = (f"import mltrail; s = mltrail.connect({url!r}); "
            f"r = s.create_run({experiment.id!r}, name='from-child'); print(r.id)")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True)
    run_id = child.stdout.strip()
    assert store.get_run(run_id).name == "from-child"


# -- packed metric chunks ------------------------------------------------

BASE = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _store_with_run(tmp_path):
    store = mltrail.connect(f"local://{tmp_path}/s.db")
    run = store.create_run(store.create_experiment("e").id)
    return store, run


def _chunk_rows(store):
    return store.backend.db.query(
        "SELECT key, first_step, last_step, count FROM metric_chunks ORDER BY key, "
        "first_step")


def test_batch_packed_per_key(tmp_path):
    store, run = _store_with_run(tmp_path)
    points = [{"key": key, "value": float(step), "step": step}
              for step in range(100) for key in ("loss", "acc")]
    store.log_metrics(run.id, points)
    assert _chunk_rows(store) == [("acc", 0, 99, 100), ("loss", 0, 99, 100)]


def test_large_batch_split_into_chunks(tmp_path):
    store, run = _store_with_run(tmp_path)
    count = CHUNK_POINTS + 10
    store.log_metrics(run.id, [{"key": "m", "value": 1.0, "step": s} for s in range(count)])
    rows = _chunk_rows(store)
    assert [row[3] for row in rows] == [CHUNK_POINTS, 10]
    assert [p.step for p in store.metric_history(run.id, "m")] == list(range(count))


def test_overlapping_chunks_merged(tmp_path):
    store, run = _store_with_run(tmp_path)
    store.log_metrics(run.id, [{"key": "m", "value": 0.0, "step": s} for s in range(0, 60, 2)])
    store.log_metrics(run.id, [{"key": "m", "value": 1.0, "step": s} for s in range(1, 60, 2)])
    store.log_metrics(run.id, [{"key": "m", "value": 2.0, "step": s} for s in range(20, 25)])
    steps = [p.step for p in store.metric_history(run.id, "m")]
    assert steps == sorted(list(range(60)) + list(range(20, 25)))
    ranged = [p.step for p in store.metric_history(run.id, "m", min_step=21, max_step=23)]
    assert ranged == [21, 21, 22, 22, 23, 23]


def test_equal_steps_sorted_by_time_in_chunk(tmp_path):
    store, run = _store_with_run(tmp_path)
    points = [MetricPoint(run_id=run.id, key="m", value=float(i), step=1,
                          timestamp=BASE + timedelta(seconds=10 - i)) for i in range(5)]
    store.log_metrics(run.id, points)
    assert [p.value for p in store.metric_history(run.id, "m")] == [4.0, 3.0, 2.0, 1.0, 0.0]
    assert store.latest_metrics(run.id)["m"].value == 0.0


def test_retry_with_new_timestamps_replaces_chunk(tmp_path):
    store, run = _store_with_run(tmp_path)
    points = [{"key": "m", "value": float(s), "step": s} for s in range(10)]
    store.log_metrics(run.id, points, batch_id="B1")
    store.log_metrics(run.id, points, batch_id="B1")
    assert len(_chunk_rows(store)) == 1
    history = list(store.metric_history(run.id, "m"))
    assert len(history) == 10
    assert store.latest_metrics(run.id)["m"].timestamp == history[-1].timestamp


def test_latest_kept_when_older_batch_arrives(tmp_path):
    store, run = _store_with_run(tmp_path)
    store.log_metrics(run.id, [{"key": "m", "value": 9.0, "step": 9}])
    store.log_metrics(run.id, [{"key": "m", "value": 1.0, "step": 1}])
    assert store.latest_metrics(run.id)["m"].value == 9.0


def test_extras_survive_chunks(tmp_path):
    store, run = _store_with_run(tmp_path)
    store.log_metrics(run.id, [
        {"key": "m", "value": 0.5, "step": 1},
        {"key": "m", "value": 0.7, "step": 2, "unit": "%", "ci_low": 0.6, "ci_high": 0.8,
         "ci_level": 0.95, "drift": {"psi": float("inf")}},
    ])
    first, second = store.metric_history(run.id, "m")
    assert first.unit is None
    assert second.unit == "%"
    assert second.drift == {"psi": float("inf")}
    assert store.latest_metrics(run.id)["m"].ci_high == 0.8


def test_damaged_chunk_reported(tmp_path):
    store, run = _store_with_run(tmp_path)
    store.log_metrics(run.id, [{"key": "m", "value": 1.0, "step": 1}])
    with store.backend.db.write() as conn:
        conn.execute("UPDATE metric_chunks SET data = X'01DEADBEEF'")
    with pytest.raises(BackendUnavailableError, match="damaged"):
        list(store.metric_history(run.id, "m"))


def test_point_rows_of_older_store_packed(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE metric_points (run_id TEXT NOT NULL, key TEXT NOT NULL, "
            "step INTEGER NOT NULL, ts INTEGER NOT NULL, seq TEXT NOT NULL, value REAL, "
            "bits TEXT, extra TEXT, PRIMARY KEY (run_id, key, step, ts, seq)) WITHOUT ROWID")
        micros = int(BASE.timestamp() * 1_000_000)
        rows = [("R1", "m", step, micros + step, f"B:{step:010d}", step / 2, None, None)
                for step in range(CHUNK_POINTS + 5)]
        rows.append(("R1", "m", 10**6, micros, "B:x", None, "fff0000000000000",
                     '{"unit":"s"}'))
        rows.append(("R2", "n", 3, micros, "C:0", 1.5, None, None))
        conn.executemany("INSERT INTO metric_points VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    store = mltrail.connect(f"local://{path}")
    metrics = store.backend.metrics
    first = list(metrics.history("R1", "m"))
    assert len(first) == CHUNK_POINTS + 6
    assert [p.step for p in first[:3]] == [0, 1, 2]
    assert first[-1].value == float("-inf")
    assert first[-1].unit == "s"
    assert [p.value for p in metrics.history("R2", "n")] == [1.5]
    tables = {name for (name,) in store.backend.db.query(
        "SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert "metric_points" not in tables


def test_batch_resent_with_more_points(tmp_path):
    store, run = _store_with_run(tmp_path)
    points = [{"key": "m", "value": float(s), "step": s} for s in range(7)]
    store.log_metrics(run.id, points[:5], batch_id="B")
    store.log_metrics(run.id, points, batch_id="B")
    assert [p.step for p in store.metric_history(run.id, "m")] == list(range(7))
    assert store.latest_metrics(run.id)["m"].step == 6


def test_batch_resent_with_fewer_points(tmp_path):
    store, run = _store_with_run(tmp_path)
    store.log_metrics(run.id, [{"key": "m", "value": 1.0, "step": s} for s in range(7)],
                      batch_id="B")
    store.log_metrics(run.id, [{"key": "m", "value": 2.0, "step": s} for s in range(5)],
                      batch_id="B")
    history = list(store.metric_history(run.id, "m"))
    # Points are identified by seq: the resent ones are replaced, the rest kept.
    assert [(p.step, p.value) for p in history] == [
        (0, 2.0), (1, 2.0), (2, 2.0), (3, 2.0), (4, 2.0), (5, 1.0), (6, 1.0)]


def test_resent_batch_recomputes_latest(tmp_path):
    store, run = _store_with_run(tmp_path)
    first = [MetricPoint(run_id=run.id, key="m", value=1.0, step=10,
                         timestamp=BASE + timedelta(seconds=5)),
             MetricPoint(run_id=run.id, key="m", value=2.0, step=10,
                         timestamp=BASE + timedelta(seconds=1))]
    store.log_metrics(run.id, first, batch_id="D")
    assert store.latest_metrics(run.id)["m"].value == 1.0
    again = [MetricPoint(run_id=run.id, key="m", value=1.0, step=10, timestamp=BASE),
             first[1]]
    store.log_metrics(run.id, again, batch_id="D")
    assert [p.value for p in store.metric_history(run.id, "m")] == [1.0, 2.0]
    assert store.latest_metrics(run.id)["m"].value == 2.0


def test_points_sharing_step_and_time_stream_bounded(tmp_path):
    store, run = _store_with_run(tmp_path)
    count = 50 * CHUNK_POINTS
    with mltrail.start_run(store, "e", capture_env=False,
                           capture_code=False) as active:
        active.log_metric_series("m", [0.5] * count, steps=[0] * count, timestamps=BASE)
    import gc
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        seen = sum(1 for _ in store.metric_history(active.id, "m"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == count
    # Opening all 50 chunks at once would hold every point, well over 20 MB.
    assert peak < 10_000_000, peak
