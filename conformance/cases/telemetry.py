"""Store telemetry: the optional `telemetry_counters()` and `storage_stats()` methods.

A backend need not offer either method; `mltrail stats` then reports "unknown"
and these cases skip, naming the missing method. A backend that offers them
must keep their shape and meaning: counters are cumulative, grow with every
successful write, stay put on reads and stale updates, and grow less for a
rejected insert than for an accepted one. Storage figures are non-negative
byte counts or "unknown".
"""

from __future__ import annotations

import dataclasses

import pytest

from mltrail.clock import new_id
from mltrail.errors import AlreadyExistsError, ConflictError

UNKNOWN = "unknown"
COUNTER_KEYS = ("items_written", "bytes_written")


def _counters(backend) -> dict[str, int]:
    method = getattr(backend, "telemetry_counters", None)
    if method is None:
        pytest.skip("backend has no telemetry_counters() method")
    return method()


def _storage(backend) -> dict:
    method = getattr(backend, "storage_stats", None)
    if method is None:
        pytest.skip("backend has no storage_stats() method")
    return method()


def _grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in COUNTER_KEYS if key in before}


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class TelemetryCases:
    area = "telemetry"

    # -- counters -------------------------------------------------------

    def test_counters_shape(self, backend):
        counters = _counters(backend)
        assert isinstance(counters, dict)
        assert any(key in counters for key in COUNTER_KEYS), counters
        for key, value in counters.items():
            assert isinstance(key, str), key
            assert _is_count(value), (key, value)

    def test_counters_grow_on_write(self, store):
        before = _counters(store.backend)
        experiment = store.create_experiment("telemetry")
        store.create_run(experiment.id, params={"lr": 0.1})
        after = _counters(store.backend)
        for key, grown in _grown(before, after).items():
            assert grown > 0, (key, before, after)

    def test_counters_grow_with_metric_points(self, store):
        run = store.create_run(store.create_experiment("telemetry").id)
        before = _counters(store.backend)
        count = 200
        store.log_metrics(run.id, [{"key": "loss", "value": step / 7, "step": step}
                                   for step in range(count)])
        grown = _grown(before, _counters(store.backend))
        if "items_written" in grown:
            assert grown["items_written"] > 0, grown
        if "bytes_written" in grown:
            # Even compressed, 200 distinct full-precision doubles take more
            # than a byte each.
            assert grown["bytes_written"] >= count, grown

    def test_counters_unchanged_by_reads(self, store):
        experiment = store.create_experiment("telemetry")
        run = store.create_run(experiment.id, params={"lr": 0.1})
        store.log_metrics(run.id, [{"key": "loss", "value": 0.5, "step": 1}])
        before = _counters(store.backend)
        store.get_run(run.id)
        store.get_experiment(experiment.id)
        store.search_runs("params.lr > 0", experiment_ids=[experiment.id])
        list(store.metric_history(run.id, "loss"))
        store.latest_metrics(run.id)
        list(store.audit_log())
        assert _counters(store.backend) == before

    def test_rejected_insert_counts_less(self, store):
        # A backend may write helper rows (index entries, unique claims) before
        # the conditional insert that fails, so a rejected insert may count
        # those, but never the entity itself.
        run = store.create_run(store.create_experiment("telemetry").id)
        fresh = dataclasses.replace(run, id=new_id())
        before = _counters(store.backend)
        store.backend.runs.insert(fresh)
        inserted = _counters(store.backend)
        with pytest.raises(AlreadyExistsError):
            store.backend.runs.insert(fresh)
        rejected = _counters(store.backend)
        if "items_written" in before:
            accepted_items = inserted["items_written"] - before["items_written"]
            rejected_items = rejected["items_written"] - inserted["items_written"]
            assert rejected_items < accepted_items, (before, inserted, rejected)

    def test_stale_update_not_counted(self, store):
        experiment = store.create_experiment("telemetry")
        run = store.create_run(experiment.id)
        store.set_run_status(run.id, "running")
        stale = dataclasses.replace(run, name="stale copy", revision=run.revision + 1)
        before = _counters(store.backend)
        with pytest.raises(ConflictError):
            store.backend.runs.update(stale)
        assert _counters(store.backend) == before

    def test_counters_never_decrease(self, store):
        experiment = store.create_experiment("telemetry")
        run = store.create_run(experiment.id)
        store.log_metrics(run.id, [{"key": "loss", "value": 1.0, "step": 1}])
        seen = [_counters(store.backend)]
        store.delete_run(run.id)
        seen.append(_counters(store.backend))
        store.purge_run(run.id)
        seen.append(_counters(store.backend))
        for earlier, later in zip(seen, seen[1:]):
            for key in COUNTER_KEYS:
                if key in earlier:
                    assert later[key] >= earlier[key], (key, seen)

    # -- storage ----------------------------------------------------------

    def test_storage_stats_shape(self, store):
        experiment = store.create_experiment("telemetry")
        store.create_run(experiment.id, params={"lr": 0.1})
        stats = _storage(store.backend)
        assert isinstance(stats, dict)
        assert "collections" in stats, stats
        assert "total_bytes" in stats, stats
        total = stats["total_bytes"]
        assert total == UNKNOWN or _is_count(total), total
        collections = stats["collections"]
        if collections == UNKNOWN:
            return
        assert isinstance(collections, dict), collections
        assert collections, "collections is empty; report 'unknown' instead"
        for name, figures in collections.items():
            assert isinstance(name, str), name
            for part in ("bytes", "index_bytes"):
                value = figures.get(part, UNKNOWN)
                assert value == UNKNOWN or _is_count(value), (name, part, value)

    def test_storage_total_covers_collections(self, store):
        store.create_run(store.create_experiment("telemetry").id, params={"lr": 0.1})
        stats = _storage(store.backend)
        collections = stats["collections"]
        if stats["total_bytes"] == UNKNOWN or collections == UNKNOWN:
            pytest.skip("backend reports no byte totals")
        data = [figures.get("bytes") for figures in collections.values()]
        known = [value for value in data if _is_count(value)]
        assert stats["total_bytes"] >= sum(known), stats
