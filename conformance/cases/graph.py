"""Models and versions, lineage rules and traversal, and the audit chain."""

from __future__ import annotations

import pytest

from mltrail.errors import ConflictError, InvalidInputError, NotFoundError


class ModelCases:
    area = "models"

    def test_versions_numbered_from_one(self, store):
        store.create_model("m")
        numbers = [store.register_model_version("m").version for _ in range(5)]
        assert numbers == [1, 2, 3, 4, 5]

    def test_versions_per_model(self, store):
        store.create_model("a")
        store.create_model("b")
        store.register_model_version("a")
        store.register_model_version("a")
        assert store.register_model_version("b").version == 1

    def test_version_records_provenance(self, store):
        experiment = store.create_experiment("e")
        run = store.create_run(experiment.id)
        store.create_model("m")
        version = store.register_model_version(
            "m", run_id=run.id, git_commit="abc123", script_hash="sha256:11",
            script_uri="file:///train.py", reproducibility_hash="sha256:22")
        loaded = store.get_model_version("m", 1)
        assert loaded.id == version.id
        assert loaded.run_id == run.id
        assert loaded.git_commit == "abc123"
        assert loaded.script_hash == "sha256:11"
        assert loaded.script_uri == "file:///train.py"
        assert loaded.reproducibility_hash == "sha256:22"

    def test_version_for_missing_run(self, store):
        store.create_model("m")
        with pytest.raises(NotFoundError):
            store.register_model_version("m", run_id="MISSING1")
        assert store.list_model_versions("m") == []

    def test_alias_lookup(self, store):
        store.create_model("m")
        for _ in range(3):
            store.register_model_version("m")
        store.set_alias("m", "production", 2)
        assert store.get_model_version("m", "production").version == 2

    def test_rollback(self, store):
        store.create_model("m")
        for _ in range(3):
            store.register_model_version("m")
        store.set_alias("m", "production", 1)
        store.set_alias("m", "production", 3)
        store.rollback_alias("m", "production")
        assert store.get_model_version("m", "production").version == 1

    def test_rollback_without_history(self, store):
        store.create_model("m")
        store.register_model_version("m")
        store.set_alias("m", "production", 1)
        with pytest.raises(ConflictError):
            store.rollback_alias("m", "production")

    def test_alias_to_missing_version(self, store):
        store.create_model("m")
        with pytest.raises(NotFoundError):
            store.set_alias("m", "production", 4)

    def test_unknown_alias(self, store):
        store.create_model("m")
        with pytest.raises(NotFoundError):
            store.get_model_version("m", "staging")

    def test_history_ordered(self, store):
        store.create_model("m")
        for _ in range(12):
            store.register_model_version("m")
        assert [v.version for v in store.list_model_versions("m")] == list(range(1, 13))

    def test_model_name_unique(self, store):
        store.create_model("m")
        from mltrail.errors import AlreadyExistsError

        with pytest.raises(AlreadyExistsError):
            store.create_model("m")


class LineageCases:
    area = "lineage"

    def _chain(self, store):
        raw = store.register_dataset("raw", "1", content_hash="sha256:01")
        clean = store.register_dataset("clean", "1", derived_from=[raw.id],
                                       provenance={"pipeline": "features-v2"})
        experiment = store.create_experiment("e")
        parent = store.create_run(experiment.id, name="sweep")
        child = store.create_run(experiment.id, name="trial", parent_run_id=parent.id,
                                 dataset_ids=[clean.id])
        store.create_model("m")
        version = store.register_model_version("m", run_id=child.id)
        return raw, clean, parent, child, version

    def test_upstream_reaches_raw_data(self, store):
        raw, clean, parent, child, version = self._chain(store)
        graph = store.upstream(version.id, depth=10)
        assert graph.nodes[child.id] == 1
        assert graph.nodes[clean.id] == 2
        assert graph.nodes[raw.id] == 3
        assert graph.nodes[parent.id] == 2

    def test_upstream_depth_limit(self, store):
        raw, clean, parent, child, version = self._chain(store)
        graph = store.upstream(version.id, depth=2)
        assert raw.id not in graph.nodes
        assert clean.id in graph.nodes

    def test_downstream_from_dataset(self, store):
        raw, clean, parent, child, version = self._chain(store)
        graph = store.downstream(raw.id, depth=5)
        assert {clean.id, child.id, version.id} <= set(graph.nodes)
        assert parent.id not in graph.nodes

    def test_pipeline_node(self, store):
        raw, clean, parent, child, version = self._chain(store)
        graph = store.upstream(clean.id, depth=1)
        kinds = {node.kind.value for node in graph.details.values()}
        assert "pipeline" in kinds

    def test_direct_cycle_rejected(self, store):
        first = store.register_dataset("a", "1")
        second = store.register_dataset("b", "1", derived_from=[first.id])
        with pytest.raises(ConflictError):
            store.add_lineage_edge(first.id, "derived_from", second.id)

    def test_indirect_cycle_rejected(self, store):
        a = store.register_dataset("a", "1")
        b = store.register_dataset("b", "1", derived_from=[a.id])
        c = store.register_dataset("c", "1", derived_from=[b.id])
        with pytest.raises(ConflictError):
            store.add_lineage_edge(a.id, "derived_from", c.id)
        assert c.id not in store.upstream(a.id, depth=5).nodes

    def test_self_edge_rejected(self, store):
        a = store.register_dataset("a", "1")
        with pytest.raises(ConflictError):
            store.add_lineage_edge(a.id, "derived_from", a.id)

    def test_edge_to_missing_node(self, store):
        a = store.register_dataset("a", "1")
        with pytest.raises(NotFoundError):
            store.add_lineage_edge(a.id, "derived_from", "MISSING1")

    def test_bad_edge_type(self, store):
        a = store.register_dataset("a", "1")
        b = store.register_dataset("b", "1")
        with pytest.raises(InvalidInputError):
            store.add_lineage_edge(a.id, "copied_from", b.id)

    def test_mixed_type_cycle_rejected(self, store):
        data = store.register_dataset("a", "1")
        experiment = store.create_experiment("e")
        run = store.create_run(experiment.id, dataset_ids=[data.id])
        store.add_lineage_node("pipe-1", "pipeline", "pipe")
        store.add_lineage_edge(run.id, "produced", "pipe-1")
        with pytest.raises(ConflictError):
            store.add_lineage_edge("pipe-1", "produced", data.id)

    def test_parent_run_recorded(self, store):
        raw, clean, parent, child, version = self._chain(store)
        edges = store.backend.lineage.edges(child.id, "upstream")
        assert any(e.type.value == "child_of" and e.target == parent.id for e in edges)

    def test_parent_must_exist(self, store):
        experiment = store.create_experiment("e")
        with pytest.raises(NotFoundError):
            store.create_run(experiment.id, parent_run_id="MISSING1")

    def test_dataset_must_exist(self, store):
        experiment = store.create_experiment("e")
        with pytest.raises(NotFoundError):
            store.create_run(experiment.id, dataset_ids=["MISSING1"])

    def test_bad_depth(self, store):
        a = store.register_dataset("a", "1")
        with pytest.raises(InvalidInputError):
            store.upstream(a.id, depth=0)


class AuditCases:
    area = "audit"

    def _activity(self, store):
        experiment = store.create_experiment("audited")
        run = store.create_run(experiment.id, params={"lr": 0.1})
        store.set_run_status(run.id, "running")
        store.log_params(run.id, {"batch": 8})
        store.set_tags("run", run.id, {"k": "v"})
        store.set_run_status(run.id, "completed")
        return experiment, run

    def test_every_change_audited(self, store):
        experiment, run = self._activity(store)
        actions = [e.action for e in store.audit_log(run.id)]
        assert actions == ["create", "set_status", "log_params", "set_tags", "set_status"]
        assert [e.action for e in store.audit_log(experiment.id)] == ["create"]

    def test_audit_names_actor(self, store):
        experiment, _ = self._activity(store)
        (event,) = list(store.audit_log(experiment.id))
        assert event.actor == "conformance"
        assert event.entity_type == "experiment"

    def test_noop_not_audited(self, store):
        experiment, run = self._activity(store)
        before = len(list(store.audit_log()))
        store.set_run_status(run.id, "completed")
        store.log_params(run.id, {"lr": 0.1})
        assert len(list(store.audit_log())) == before

    def test_chain_verifies(self, store):
        self._activity(store)
        result = store.verify_audit()
        assert result.ok
        assert result.checked == 6

    def test_seq_taken_rejected(self, store):
        from mltrail.errors import AlreadyExistsError

        self._activity(store)
        last = store.backend.audit.last()
        with pytest.raises(AlreadyExistsError):
            store.backend.audit.append(last)

    def test_altered_event_detected(self, store, mltrail_harness):
        self._activity(store)
        record = mltrail_harness.raw_read(store.backend, "audit", 3)
        record["actor"] = "mallory"
        mltrail_harness.raw_write(store.backend, "audit", record)
        result = store.verify_audit()
        assert not result.ok
        assert result.broken_at == 3

    def test_altered_details_detected(self, store, mltrail_harness):
        self._activity(store)
        record = mltrail_harness.raw_read(store.backend, "audit", 4)
        record["details"] = {"params": {"batch": 9999}}
        mltrail_harness.raw_write(store.backend, "audit", record)
        assert store.verify_audit().broken_at == 4

    def test_reordered_events_detected(self, store, mltrail_harness):
        self._activity(store)
        second = mltrail_harness.raw_read(store.backend, "audit", 2)
        third = mltrail_harness.raw_read(store.backend, "audit", 3)
        second["seq"], third["seq"] = 3, 2
        mltrail_harness.raw_write(store.backend, "audit", second)
        mltrail_harness.raw_write(store.backend, "audit", third)
        assert store.verify_audit().broken_at == 2
