"""Run lifecycle, write-once params, idempotent retries, soft delete and purge."""

from __future__ import annotations

import itertools
import math

import pytest

from mltrail.domain import STATUS_TRANSITIONS, RunStatus
from mltrail.errors import AlreadyExistsError, ConflictError, InvalidInputError, NotFoundError


def _run(store, **options):
    experiment = store.get_or_create_experiment("lifecycle")
    return store.create_run(experiment.id, **options)


def _walk_to(store, run_id, status):
    """Move a new run to `status` along legal transitions."""
    path = {
        RunStatus.PENDING: [],
        RunStatus.RUNNING: ["running"],
        RunStatus.COMPLETED: ["running", "completed"],
        RunStatus.FAILED: ["running", "failed"],
        RunStatus.KILLED: ["running", "killed"],
    }[status]
    for step in path:
        store.set_run_status(run_id, step)


class StatusCases:
    area = "status"

    @pytest.mark.parametrize("source,target", list(itertools.product(RunStatus, RunStatus)))
    def test_transition(self, store, source, target):
        run = _run(store)
        _walk_to(store, run.id, source)
        allowed = target == source or target in STATUS_TRANSITIONS[source]
        if allowed:
            assert store.set_run_status(run.id, target).status == target
        else:
            with pytest.raises(ConflictError):
                store.set_run_status(run.id, target)
            assert store.get_run(run.id).status == source

    def test_times_follow_status(self, store):
        run = _run(store)
        assert run.start_time is None
        running = store.set_run_status(run.id, "running")
        assert running.start_time is not None
        assert running.end_time is None
        done = store.set_run_status(run.id, "completed")
        assert done.end_time >= done.start_time

    def test_failure_recorded(self, store):
        run = _run(store)
        store.set_run_status(run.id, "running")
        store.set_run_status(run.id, "failed", error={"type": "ValueError", "message": "x"})
        assert store.get_run(run.id).error == {"type": "ValueError", "message": "x"}

    def test_unknown_status(self, store):
        run = _run(store)
        with pytest.raises(InvalidInputError):
            store.set_run_status(run.id, "paused")


class ParamCases:
    area = "params"

    def test_same_value_again_is_noop(self, store):
        run = _run(store, params={"lr": 0.1})
        again = store.log_params(run.id, {"lr": 0.1})
        assert again.revision == run.revision

    def test_changed_value_conflicts(self, store):
        run = _run(store, params={"lr": 0.1})
        with pytest.raises(ConflictError) as caught:
            store.log_params(run.id, {"lr": 0.2})
        assert "lr" in str(caught.value)
        assert store.get_run(run.id).params == {"lr": 0.1}

    def test_conflicting_batch_writes_nothing(self, store):
        run = _run(store, params={"lr": 0.1})
        with pytest.raises(ConflictError):
            store.log_params(run.id, {"batch": 32, "epochs": 10, "lr": 0.3})
        assert store.get_run(run.id).params == {"lr": 0.1}

    def test_new_keys_merge(self, store):
        run = _run(store, params={"optimizer": {"lr": 0.1}})
        store.log_params(run.id, {"optimizer": {"momentum": 0.9}, "seed": 1})
        assert store.get_run(run.id).params == {
            "optimizer": {"lr": 0.1, "momentum": 0.9}, "seed": 1}

    @pytest.mark.parametrize("first,second", [
        (1, 1.0), (0.0, -0.0), (True, 1), ("1", 1), (None, 0), ([1, 2], [2, 1]),
        ({"a": 1}, 5),
    ])
    def test_type_or_bit_change_conflicts(self, store, first, second):
        run = _run(store, params={"p": first})
        with pytest.raises(ConflictError):
            store.log_params(run.id, {"p": second})

    @pytest.mark.parametrize("value", [math.nan, -0.0, math.inf, [1, {"x": None}]])
    def test_identical_special_value_is_noop(self, store, value):
        run = _run(store, params={"p": value})
        assert store.log_params(run.id, {"p": value}).revision == run.revision

    def test_nesting_under_leaf_conflicts(self, store):
        run = _run(store, params={"optimizer": "adam"})
        with pytest.raises(ConflictError):
            store.log_params(run.id, {"optimizer": {"lr": 0.1}})

    def test_params_not_a_dict(self, store):
        run = _run(store)
        with pytest.raises(InvalidInputError):
            store.log_params(run.id, [("lr", 0.1)])


class RetryCases:
    area = "retries"

    def test_create_experiment_retry(self, store):
        first = store.create_experiment("exp", id="EXPID1", tags={"a": "b"})
        again = store.create_experiment("exp", id="EXPID1", tags={"a": "b"})
        assert again.id == first.id
        assert len(list(store.list_experiments())) == 1

    def test_create_experiment_other_content(self, store):
        store.create_experiment("exp", id="EXPID1")
        with pytest.raises(AlreadyExistsError):
            store.create_experiment("exp", id="EXPID1", description="different")

    def test_create_experiment_name_taken(self, store):
        store.create_experiment("exp")
        with pytest.raises(AlreadyExistsError) as caught:
            store.create_experiment("exp")
        assert "exp" in str(caught.value)

    def test_create_run_retry(self, store):
        experiment = store.create_experiment("exp")
        first = store.create_run(experiment.id, name="r", params={"a": 1}, id="RUNID1")
        again = store.create_run(experiment.id, name="r", params={"a": 1}, id="RUNID1")
        assert again.id == first.id
        assert len(list(store.iter_runs())) == 1

    def test_dataset_retry(self, store):
        first = store.register_dataset("d", "1", content_hash="sha256:aa")
        again = store.register_dataset("d", "1", content_hash="sha256:aa")
        assert again.id == first.id

    def test_dataset_changed_content(self, store):
        store.register_dataset("d", "1", content_hash="sha256:aa")
        with pytest.raises(AlreadyExistsError):
            store.register_dataset("d", "1", content_hash="sha256:bb")

    def test_status_retry(self, store):
        run = _run(store)
        store.set_run_status(run.id, "running")
        assert store.set_run_status(run.id, "running").status == RunStatus.RUNNING

    def test_tags_retry(self, store):
        run = _run(store)
        once = store.set_tags("run", run.id, {"k": "v"})
        twice = store.set_tags("run", run.id, {"k": "v"})
        assert twice.revision == once.revision

    def test_model_version_retry(self, store):
        store.create_model("m")
        first = store.register_model_version("m", id="VERSIONID1")
        again = store.register_model_version("m", id="VERSIONID1")
        assert again.id == first.id
        assert [v.version for v in store.list_model_versions("m")] == [1]

    def test_lineage_edge_retry(self, store):
        parent = store.register_dataset("raw", "1")
        child = store.register_dataset("clean", "1", derived_from=[parent.id])
        store.add_lineage_edge(child.id, "derived_from", parent.id)
        graph = store.upstream(child.id, depth=1)
        assert len(graph.edges) == 1

    def test_alias_retry(self, store):
        store.create_model("m")
        store.register_model_version("m")
        first = store.set_alias("m", "production", 1)
        again = store.set_alias("m", "production", 1)
        assert again.revision == first.revision

    def test_artifact_retry(self, store):
        run = _run(store)
        store.log_artifact(run.id, "model", "s3://bucket/model.pkl")
        store.log_artifact(run.id, "model", "s3://bucket/model.pkl")
        with pytest.raises(ConflictError):
            store.log_artifact(run.id, "model", "s3://bucket/other.pkl")
        assert store.get_run(run.id).artifact_uris == {"model": "s3://bucket/model.pkl"}


class DeletionCases:
    area = "deletion"

    def test_soft_delete_and_restore_run(self, store):
        run = _run(store)
        store.delete_run(run.id)
        assert store.get_run(run.id).deleted_at is not None
        assert list(store.iter_runs()) == []
        store.restore_run(run.id)
        assert [r.id for r in store.iter_runs()] == [run.id]

    def test_purge_run(self, store):
        run = _run(store)
        store.log_metrics(run.id, [{"key": "m", "value": 1.0}])
        store.purge_run(run.id)
        with pytest.raises(NotFoundError):
            store.get_run(run.id)
        with pytest.raises(NotFoundError):
            store.backend.lineage.get_node(run.id)

    def test_purge_experiment_removes_runs(self, store):
        experiment = store.create_experiment("gone")
        runs = [store.create_run(experiment.id) for _ in range(3)]
        store.purge_experiment(experiment.id)
        for run in runs:
            with pytest.raises(NotFoundError):
                store.get_run(run.id)
        assert store.create_experiment("gone").name == "gone"

    def test_soft_delete_experiment(self, store):
        experiment = store.create_experiment("hidden")
        store.delete_experiment(experiment.id)
        assert list(store.list_experiments()) == []
        assert len(list(store.list_experiments(include_deleted=True))) == 1
        store.restore_experiment(experiment.id)
        assert [e.name for e in store.list_experiments()] == ["hidden"]

    def test_delete_version_keeps_number(self, store):
        store.create_model("m")
        for _ in range(2):
            store.register_model_version("m")
        store.delete_model_version("m", 2)
        assert [v.version for v in store.list_model_versions("m")] == [1]
        assert store.register_model_version("m").version == 3
        store.restore_model_version("m", 2)
        assert [v.version for v in store.list_model_versions("m")] == [1, 2, 3]

    def test_delete_aliased_version_conflicts(self, store):
        store.create_model("m")
        store.register_model_version("m")
        store.set_alias("m", "production", 1)
        with pytest.raises(ConflictError):
            store.delete_model_version("m", 1)

    def test_soft_delete_model(self, store):
        store.create_model("m")
        store.delete_model("m")
        assert list(store.list_models()) == []
        store.restore_model("m")
        assert [m.name for m in store.list_models()] == ["m"]

    def test_delete_is_idempotent(self, store):
        run = _run(store)
        first = store.delete_run(run.id)
        second = store.delete_run(run.id)
        assert second.deleted_at == first.deleted_at
