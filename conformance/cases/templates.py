"""The named query templates, best-k and aggregates, on a shared small history."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from mltrail import templates


def build_sweep(store):
    """Create two experiments, eight runs, a dataset and a model with two versions."""
    data = store.register_dataset("digits", "1", content_hash="sha256:d1")
    vision = store.create_experiment("vision")
    speech = store.create_experiment("speech")
    runs = {}
    for index in range(6):
        optimizer = "adam" if index % 2 else "sgd"
        run = store.create_run(
            vision.id, name=f"v{index}",
            params={"optimizer": optimizer, "lr": 0.001 * (index + 1)},
            tags={"team": "cv" if index < 4 else "ml"},
            dataset_ids=[data.id] if index < 3 else [])
        store.log_metrics(run.id, [{"key": "acc", "value": 0.5 + index / 20, "step": s}
                                   for s in range(3)])
        runs[run.name] = run
    for index in range(2):
        run = store.create_run(speech.id, name=f"s{index}", params={"optimizer": "adam"})
        store.set_run_status(run.id, "running")
        runs[run.name] = run
    store.create_model("classifier")
    store.register_model_version("classifier", run_id=runs["v5"].id)
    store.register_model_version("classifier", run_id=runs["v4"].id)
    return {"runs": runs, "dataset": data, "vision": vision, "speech": speech}


def names(runs):
    return {run.name for run in runs}


class TemplateCases:
    area = "templates"

    @pytest.fixture
    def sweep(self, store):
        return build_sweep(store)

    def test_runs_by_experiment(self, store, sweep):
        found = templates.runs_by_experiment(store, sweep["speech"].id)
        assert names(found) == {"s0", "s1"}

    def test_runs_by_status(self, store, sweep):
        assert names(templates.runs_by_status(store, "running")) == {"s0", "s1"}

    def test_runs_by_tag(self, store, sweep):
        assert names(templates.runs_by_tag(store, "team", "ml")) == {"v4", "v5"}

    def test_runs_by_param_range(self, store, sweep):
        found = templates.runs_by_param_range(store, "lr", low=0.002, high=0.004)
        assert names(found) == {"v1", "v2", "v3"}

    def test_runs_by_time_range(self, store, sweep):
        first = sweep["runs"]["v0"].created_at
        last = sweep["runs"]["s1"].created_at
        found = templates.runs_by_time_range(store, first, last)
        assert names(found) == set(sweep["runs"])
        later = templates.runs_by_time_range(store, last + timedelta(seconds=1), None)
        assert names(later) == set()

    def test_runs_by_dataset(self, store, sweep):
        found = templates.runs_by_dataset(store, sweep["dataset"].id)
        assert names(found) == {"v0", "v1", "v2"}

    def test_runs_by_model(self, store, sweep):
        found = templates.runs_by_model(store, "classifier")
        assert names(found) == {"v4", "v5"}

    def test_best_runs(self, store, sweep):
        best = store.best_runs("acc", k=2)
        assert [run.name for run, _ in best] == ["v5", "v4"]
        assert best[0][1] == pytest.approx(0.75)

    def test_best_runs_minimum(self, store, sweep):
        best = store.best_runs("acc", k=1, mode="min")
        assert [run.name for run, _ in best] == ["v0"]

    def test_best_runs_nan_last(self, store, sweep):
        run = sweep["runs"]["s0"]
        store.log_metrics(run.id, [{"key": "acc", "value": math.nan, "step": 1}])
        best = store.best_runs("acc", k=8)
        assert best[-1][0].name == "s0"

    def test_aggregate_by_param(self, store, sweep):
        groups = {g["group"]: g for g in store.aggregate("acc", group_by="params.optimizer")}
        adam = groups["adam"]
        assert adam["count"] == 3
        assert adam["mean"] == pytest.approx((0.55 + 0.65 + 0.75) / 3)
        assert adam["median"] == pytest.approx(0.65)
        assert adam["stddev"] == pytest.approx(0.1)
        half = 4.303 * 0.1 / math.sqrt(3)
        assert adam["ci95_low"] == pytest.approx(adam["mean"] - half)
        assert adam["ci95_high"] == pytest.approx(adam["mean"] + half)

    def test_aggregate_by_tag(self, store, sweep):
        groups = {g["group"]: g["count"] for g in store.aggregate("acc", group_by="tags.team")}
        assert groups == {"cv": 4, "ml": 2}

    def test_aggregate_ungrouped(self, store, sweep):
        (group,) = store.aggregate("acc")
        assert group["count"] == 6
        assert group["min"] == pytest.approx(0.5)
        assert group["max"] == pytest.approx(0.75)

    def test_aggregate_with_filter(self, store, sweep):
        (group,) = store.aggregate("acc", filter="params.lr > 0.0045")
        assert group["count"] == 2

    def test_model_version_history(self, store, sweep):
        history = templates.model_version_history(store, "classifier")
        assert [v.version for v in history] == [1, 2]
        assert history[0].run_id == sweep["runs"]["v5"].id

    def test_metric_history_template(self, store, sweep):
        run = sweep["runs"]["v2"]
        points = templates.metric_history(store, run.id, "acc", min_step=1)
        assert [p.step for p in points] == [1, 2]

    def test_latest_value_template(self, store, sweep):
        run = sweep["runs"]["v2"]
        assert templates.latest_value(store, run.id, "acc") == pytest.approx(0.6)

    def test_audit_log_template(self, store, sweep):
        events = templates.audit_log(store, sweep["runs"]["s0"].id)
        assert [e.action for e in events] == ["create", "set_status"]

    def test_compare_runs(self, store, sweep):
        table = store.compare_runs([sweep["runs"]["v0"].id, sweep["runs"]["v1"].id])
        assert table["params"]["optimizer"] == ["sgd", "adam"]
        assert table["metrics"]["acc"] == [pytest.approx(0.5), pytest.approx(0.55)]

    def test_lineage_templates(self, store, sweep):
        version = templates.model_version_history(store, "classifier")[0]
        upstream = templates.lineage(store, version.id, "upstream", depth=3)
        assert sweep["runs"]["v5"].id in upstream.nodes
        downstream = templates.lineage(store, sweep["dataset"].id, "downstream", depth=1)
        assert sweep["runs"]["v0"].id in downstream.nodes
