"""Run timelines and shared configurations behave the same on every backend.

The configuration cases call `record_configuration` themselves. When the Store
records configurations on its own after creating a run or logging params, the
extra calls change nothing, because recording is idempotent.
"""

from __future__ import annotations

import math

import pytest

from mltrail import codec
from mltrail.conformance.cases.support import FLOAT_VALUES, PARAM_VALUES, same
from mltrail.discovery.configs import (
    CONFIG_NAMESPACE, CONFIG_OF_NAMESPACE, compare_params, configuration_hash,
    configuration_of, get_configuration, record_configuration, runs_namespace,
    runs_with_same_configuration,
)
from mltrail.discovery.timeline import timeline
from mltrail.errors import NotFoundError


def _experiment(store, name="discovery"):
    return store.get_or_create_experiment(name)


def _recorded_run(store, params, **options):
    run = store.create_run(_experiment(store).id, params=params, **options)
    record_configuration(store, run)
    return run


def _ids(runs):
    return sorted(run.id for run in runs)


def _kinds(result):
    return [entry.kind for entry in result.entries]


class DiscoveryCases:
    area = "discovery"

    # -- timelines ------------------------------------------------------

    def test_timeline_in_time_order(self, store):
        experiment = _experiment(store)
        dataset = store.register_dataset("pixels", "1")
        parent = store.create_run(experiment.id, params={"lr": 0.1},
                                  dataset_ids=[dataset.id])
        store.set_run_status(parent.id, "running")
        store.log_params(parent.id, {"batch_size": 64})
        store.log_metrics(parent.id, [{"key": "loss", "value": v, "step": s}
                                      for s, v in enumerate([0.9, 0.5, 0.7])])
        store.log_artifact(parent.id, "weights", "s3://bucket/weights.pt")
        child = store.create_run(experiment.id, parent_run_id=parent.id)
        store.create_model("classifier")
        store.register_model_version("classifier", run_id=parent.id)
        store.set_run_status(parent.id, "completed")

        result = timeline(store, parent.id)

        times = [entry.at for entry in result.entries if entry.at is not None]
        assert times == sorted(times)
        kinds = _kinds(result)
        assert kinds[0] == "created"
        for kind in ("params", "status", "dataset", "metric", "artifact", "child_run",
                     "model_version"):
            assert kind in kinds, kind
        statuses = [e.summary for e in result.entries if e.kind == "status"]
        assert statuses == ["status pending -> running", "status running -> completed"]
        logged = [e.details["params"] for e in result.entries if e.kind == "params"]
        assert logged == [{"lr": 0.1}, {"batch_size": 64}]
        children = [e.details["run_id"] for e in result.entries
                    if e.kind == "child_run"]
        assert children == [child.id]
        datasets = [e.details["dataset_id"] for e in result.entries
                    if e.kind == "dataset"]
        assert datasets == [dataset.id]

    def test_timeline_audit_entries_in_chain_order(self, store):
        run = store.create_run(_experiment(store).id, params={"a": 1})
        store.set_run_status(run.id, "running")
        store.set_tags("run", run.id, {"team": "vision"})
        store.delete_run(run.id)
        store.restore_run(run.id)

        result = timeline(store, run.id)

        seqs = [e.audit_seq for e in result.entries if e.audit_seq is not None]
        assert seqs == sorted(seqs)
        events = {event.seq for event in store.audit_log(run.id)}
        assert set(seqs) == events
        kinds = _kinds(result)
        assert kinds.index("deleted") < kinds.index("restored")
        tags = [e for e in result.entries if e.kind == "tags"]
        assert tags[0].details["tags"] == {"team": "vision"}
        assert all(e.actor == store.actor for e in result.entries if e.audit_seq)

    def test_timeline_metric_summary(self, store):
        run = store.create_run(_experiment(store).id)
        values = [FLOAT_VALUES["third"], math.nan, -2.5, FLOAT_VALUES["negative_zero"]]
        store.log_metrics(run.id, [{"key": "score", "value": v, "step": s}
                                   for s, v in enumerate(values)])

        result = timeline(store, run.id)

        (summary,) = result.metrics
        assert summary.count == 4
        assert summary.nan_count == 1
        assert summary.first_step == 0
        assert summary.last_step == 3
        assert same(summary.min, -2.5)
        assert same(summary.max, FLOAT_VALUES["third"])
        assert same(summary.last, -0.0)
        metric_entries = [e for e in result.entries if e.kind == "metric"]
        assert metric_entries[0].until == summary.last_at

    def test_timeline_of_missing_run(self, store):
        with pytest.raises(NotFoundError):
            timeline(store, "01ARZ3NDEKTSV4RRFFQ69G5FAV")

    # -- shared configurations ------------------------------------------

    def test_same_configuration_found(self, store):
        params = {"optimizer": {"name": "adam", "lr": 0.001}, "layers": [64, 32]}
        first = _recorded_run(store, params)
        second = _recorded_run(store, dict(params))
        _recorded_run(store, {**params, "layers": [64, 32, 16]})

        found = _ids(runs_with_same_configuration(store, first.id))

        assert found == _ids([first, second])
        assert configuration_of(store, first.id).hash == \
            configuration_of(store, second.id).hash

    def test_every_value_type_survives_hashing(self, store):
        run = _recorded_run(store, dict(PARAM_VALUES))

        stored = configuration_of(store, run.id)

        assert stored.hash == configuration_hash(PARAM_VALUES)
        assert same(get_configuration(store, stored.hash).params, PARAM_VALUES)
        assert _ids(runs_with_same_configuration(store, run.id)) == [run.id]

    @pytest.mark.parametrize("left,right", [
        (1, 1.0), (0.0, -0.0), ("1", 1), (True, 1), (0.1, 0.1 + 2**-56),
    ])
    def test_near_equal_values_differ(self, store, left, right):
        a = _recorded_run(store, {"x": left})
        b = _recorded_run(store, {"x": right})

        assert _ids(runs_with_same_configuration(store, a.id)) == [a.id]
        comparison = compare_params(store, a.id, b.id)
        assert list(comparison.differing) == ["x"]
        assert not comparison.identical

    def test_nan_equals_same_nan(self, store):
        a = _recorded_run(store, {"x": FLOAT_VALUES["nan_with_payload"]})
        b = _recorded_run(store, {"x": FLOAT_VALUES["nan_with_payload"]})
        c = _recorded_run(store, {"x": FLOAT_VALUES["nan"]})

        assert _ids(runs_with_same_configuration(store, a.id)) == _ids([a, b])
        assert list(compare_params(store, a.id, c.id).differing) == ["x"]

    def test_record_is_idempotent(self, store):
        run = _recorded_run(store, {"lr": 0.1})
        blobs = store.backend.blobs
        before = list(blobs.scan(runs_namespace(configuration_hash({"lr": 0.1}))))

        assert record_configuration(store, run) == configuration_hash({"lr": 0.1})
        assert record_configuration(store, store.get_run(run.id)) == \
            configuration_hash({"lr": 0.1})

        after = list(blobs.scan(runs_namespace(configuration_hash({"lr": 0.1}))))
        assert [key for key, _ in after] == [key for key, _ in before] == [run.id]

    def test_configuration_moves_when_params_grow(self, store):
        old = {"lr": 0.1}
        run = _recorded_run(store, old)
        store.log_params(run.id, {"batch_size": 32})
        record_configuration(store, store.get_run(run.id))
        new = {"lr": 0.1, "batch_size": 32}
        blobs = store.backend.blobs

        assert [k for k, _ in blobs.scan(runs_namespace(configuration_hash(old)))] == []
        assert [k for k, _ in blobs.scan(runs_namespace(configuration_hash(new)))] == \
            [run.id]
        assert blobs.get(CONFIG_OF_NAMESPACE, run.id)["hash"] == configuration_hash(new)
        with pytest.raises(NotFoundError):
            blobs.get(CONFIG_NAMESPACE, configuration_hash(old))

    def test_old_configuration_kept_while_shared(self, store):
        a = _recorded_run(store, {"lr": 0.1})
        b = _recorded_run(store, {"lr": 0.1})
        store.log_params(a.id, {"seed": 7})
        record_configuration(store, store.get_run(a.id))

        assert _ids(runs_with_same_configuration(store, b.id)) == [b.id]
        stored = get_configuration(store, configuration_hash({"lr": 0.1}))
        assert same(stored.params, {"lr": 0.1})

    def test_stale_index_entry_skipped(self, store):
        a = _recorded_run(store, {"lr": 0.1})
        b = _recorded_run(store, {"lr": 0.2})
        # An entry left behind by an interrupted move must not be returned.
        store.backend.blobs.put(runs_namespace(configuration_hash({"lr": 0.1})), b.id,
                                {"run_id": b.id})

        assert _ids(runs_with_same_configuration(store, a.id)) == [a.id]

    def test_deleted_and_purged_runs_left_out(self, store):
        live = _recorded_run(store, {"lr": 0.3})
        deleted = _recorded_run(store, {"lr": 0.3})
        purged = _recorded_run(store, {"lr": 0.3})
        store.delete_run(deleted.id)
        store.purge_run(purged.id)

        assert _ids(runs_with_same_configuration(store, live.id)) == [live.id]
        with_deleted = runs_with_same_configuration(store, live.id,
                                                    include_deleted=True)
        assert _ids(with_deleted) == _ids([live, deleted])

    def test_run_without_params(self, store):
        run = store.create_run(_experiment(store).id)

        assert record_configuration(store, run) is None
        assert configuration_of(store, run.id) is None
        assert list(runs_with_same_configuration(store, run.id)) == []

    def test_compare_params_key_by_key(self, store):
        a = _recorded_run(store, {"opt": {"lr": 0.1, "name": "adam"}, "seed": 1,
                                  "a.b": 1})
        b = _recorded_run(store, {"opt": {"lr": 0.2, "name": "adam"}, "epochs": 3,
                                  "a": {"b": 1}})

        comparison = compare_params(store, a.id, b.id)

        assert comparison.only_in_a == {"seed": 1, codec.join_path(("a.b",)): 1}
        assert comparison.only_in_b == {"epochs": 3, "a.b": 1}
        assert comparison.differing == {"opt.lr": (0.1, 0.2)}
        assert comparison.equal == {"opt.name": "adam"}
