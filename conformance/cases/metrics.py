"""Metric histories: ordering, latest-value rules, ranges, retries and streaming."""

from __future__ import annotations

import gc
import struct
import tracemalloc
from datetime import timedelta

import pytest

from mltrail.clock import from_micros, to_micros
from mltrail.domain import MetricPoint, MetricSeries

from mltrail.conformance.cases.support import BASE_TIME


def _run(store):
    experiment = store.get_or_create_experiment("metrics")
    return store.create_run(experiment.id)


def _point(run, step, value, minutes=0.0, key="m"):
    return MetricPoint(run_id=run.id, key=key, value=value, step=step,
                       timestamp=BASE_TIME + timedelta(minutes=minutes))


class MetricCases:
    area = "metrics"

    def test_history_sorted_by_step(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, s, float(s)) for s in (5, 1, 9, 3, 0)])
        assert [p.step for p in store.metric_history(run.id, "m")] == [0, 1, 3, 5, 9]

    def test_history_across_batches_out_of_order(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, s, float(s)) for s in (10, 11, 12)])
        store.log_metrics(run.id, [_point(run, s, float(s)) for s in (0, 1, 2)])
        assert [p.step for p in store.metric_history(run.id, "m")] == [0, 1, 2, 10, 11, 12]

    def test_equal_steps_ordered_by_time(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, 1, 2.0, minutes=5),
                                   _point(run, 1, 1.0, minutes=1)])
        assert [p.value for p in store.metric_history(run.id, "m")] == [1.0, 2.0]

    def test_equal_step_and_time_keep_write_order(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, 1, 1.0), _point(run, 1, 2.0),
                                   _point(run, 1, 3.0)])
        store.log_metrics(run.id, [_point(run, 1, 4.0)])
        assert [p.value for p in store.metric_history(run.id, "m")] == [1.0, 2.0, 3.0, 4.0]

    def test_identical_points_both_kept(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, 1, 1.0), _point(run, 1, 1.0)])
        assert len(list(store.metric_history(run.id, "m"))) == 2

    def test_latest_is_highest_step(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, 9, 0.9, minutes=1)])
        store.log_metrics(run.id, [_point(run, 2, 0.2, minutes=50)])
        assert store.latest_metrics(run.id)["m"].value == 0.9

    def test_latest_equal_step_later_time(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, 3, 0.5, minutes=9)])
        store.log_metrics(run.id, [_point(run, 3, 0.1, minutes=2)])
        assert store.latest_metrics(run.id)["m"].value == 0.5

    def test_latest_equal_step_and_time_later_write(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, 3, 0.1)])
        store.log_metrics(run.id, [_point(run, 3, 0.7)])
        assert store.latest_metrics(run.id)["m"].value == 0.7

    def test_latest_within_one_batch(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, 4, 0.4), _point(run, 7, 0.7),
                                   _point(run, 5, 0.5)])
        assert store.latest_metrics(run.id)["m"].step == 7

    def test_latest_per_key(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, 1, 0.1, key="a"), _point(run, 2, 0.2, key="b"),
                                   _point(run, 3, 0.3, key="a")])
        latest = store.latest_metrics(run.id)
        assert {k: p.value for k, p in latest.items()} == {"a": 0.3, "b": 0.2}

    def test_latest_for_many_runs(self, store):
        runs = [_run(store) for _ in range(5)]
        for index, run in enumerate(runs[:4]):
            store.log_metrics(run.id, [_point(run, 1, float(index))])
        latest = store.backend.metrics.latest([r.id for r in runs])
        assert set(latest) == {r.id for r in runs[:4]}
        assert latest[runs[2].id]["m"].value == 2.0

    def test_latest_filtered_by_keys(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, 1, 0.1, key="a"), _point(run, 1, 0.2, key="b")])
        latest = store.backend.metrics.latest([run.id], ["b"])
        assert set(latest[run.id]) == {"b"}

    def test_no_points_no_latest(self, store):
        run = _run(store)
        assert store.latest_metrics(run.id) == {}
        assert store.metric_keys(run.id) == []
        assert list(store.metric_history(run.id, "m")) == []

    def test_keys_sorted(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, 0, 1.0, key=k) for k in ("b", "a", "c")])
        assert store.metric_keys(run.id) == ["a", "b", "c"]

    def test_step_range_inclusive(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, s, float(s)) for s in range(20)])
        selected = store.metric_history(run.id, "m", min_step=5, max_step=8)
        assert [p.step for p in selected] == [5, 6, 7, 8]

    def test_open_ended_step_range(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, s, float(s)) for s in range(10)])
        assert [p.step for p in store.metric_history(run.id, "m", min_step=7)] == [7, 8, 9]
        assert [p.step for p in store.metric_history(run.id, "m", max_step=1)] == [0, 1]

    def test_downsampled_history(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, s, float(s)) for s in range(100)])
        sampled = list(store.metric_history(run.id, "m", max_points=10))
        assert len(sampled) == 10
        assert sampled[-1].step == 99
        assert [p.step for p in sampled] == sorted(p.step for p in sampled)

    def test_retried_batch_adds_nothing(self, store):
        run = _run(store)
        points = [_point(run, s, float(s)) for s in range(30)]
        store.log_metrics(run.id, points, batch_id="BATCH1")
        store.log_metrics(run.id, points, batch_id="BATCH1")
        assert len(list(store.metric_history(run.id, "m"))) == 30

    def test_distinct_batches_both_kept(self, store):
        run = _run(store)
        points = [_point(run, s, float(s)) for s in range(3)]
        store.log_metrics(run.id, points, batch_id="BATCH1")
        store.log_metrics(run.id, points, batch_id="BATCH2")
        assert len(list(store.metric_history(run.id, "m"))) == 6

    def test_histories_of_runs_separate(self, store):
        first, second = _run(store), _run(store)
        store.log_metrics(first.id, [_point(first, 1, 1.0)])
        store.log_metrics(second.id, [_point(second, 1, 2.0), _point(second, 2, 3.0)])
        assert [p.value for p in store.metric_history(first.id, "m")] == [1.0]
        assert [p.value for p in store.metric_history(second.id, "m")] == [2.0, 3.0]

    def test_points_for_missing_run_rejected(self, store):
        from mltrail.errors import NotFoundError

        with pytest.raises(NotFoundError):
            store.log_metrics("MISSING1", [{"key": "m", "value": 1.0}])

    def test_long_history_streams(self, store):
        run = _run(store)
        count = 100_000
        for start in range(0, count, 20_000):
            store.log_metrics(run.id, [{"key": "m", "value": float(i), "step": i}
                                       for i in range(start, start + 20_000)])
        gc.collect()
        tracemalloc.start()
        try:
            seen = 0
            previous = -1
            for point in store.metric_history(run.id, "m"):
                assert point.step > previous
                previous = point.step
                seen += 1
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert seen == count
        # Holding every point at once would take well over 30 MB of Python objects.
        assert peak < 20_000_000, f"streaming {count} points peaked at {peak} bytes"

    def test_latest_unchanged_by_history_length(self, store):
        run = _run(store)
        store.log_metrics(run.id, [{"key": "m", "value": float(i), "step": i}
                                   for i in range(5_000)])
        latest = store.latest_metrics(run.id)["m"]
        assert latest.step == 4_999
        assert latest.value == 4_999.0

    def test_series_same_as_points(self, store):
        by_series, by_points = _run(store), _run(store)
        count = 5_000
        values = [step / 3 for step in range(count)]
        values[7] = float("nan")
        steps = list(range(count))
        steps[10], steps[11] = 11, 10
        stamps = [to_micros(BASE_TIME) + (step % 7) for step in range(count)]
        series = MetricSeries(run_id=by_series.id, key="m", values=values, steps=steps,
                              stamps=stamps, seqs=[f"S:{i:010d}" for i in range(count)])
        store.backend.metrics.append_series(by_series.id, [series])
        store.backend.metrics.append_series(by_series.id, [series])
        store.backend.metrics.append(by_points.id, [
            MetricPoint(run_id=by_points.id, key="m", value=value, step=step,
                        timestamp=from_micros(stamp), seq=seq)
            for value, step, stamp, seq in zip(values, steps, stamps, series.seqs)])

        def rows(run):
            return [(p.step, p.timestamp, p.seq, struct.pack(">d", p.value))
                    for p in store.metric_history(run.id, "m")]

        assert rows(by_series) == rows(by_points)
        assert len(rows(by_series)) == count
        latest = store.latest_metrics(by_series.id)["m"]
        assert (latest.step, latest.value) == (count - 1, (count - 1) / 3)

    def test_purged_run_has_no_metrics(self, store):
        run = _run(store)
        store.log_metrics(run.id, [_point(run, 1, 1.0)])
        store.purge_run(run.id)
        assert store.backend.metrics.latest([run.id]) == {}
        assert list(store.backend.metrics.history(run.id, "m")) == []
