"""Declared capabilities are complete and true, and the blob repository works."""

from __future__ import annotations

import pytest

from mltrail import limits
from mltrail.backend import ScanRequest
from mltrail.errors import NotFoundError
from mltrail.query.ast import ALL_OPERATORS
from mltrail.query.evaluate import OrderKey
from mltrail.registry import open_backend

ORDERABLE_FIELDS = {"id", "created_at", "updated_at", "name"}


class CapabilityCases:
    area = "capabilities"

    def test_every_field_declared(self, backend):
        caps = backend.capabilities
        assert isinstance(caps.name, str) and caps.name
        assert caps.pushdown_operators <= ALL_OPERATORS
        assert caps.native_order_fields <= ORDERABLE_FIELDS
        for flag in ("transactions", "conditional_writes", "persistent", "multi_process"):
            assert isinstance(getattr(caps, flag), bool), flag
        assert caps.max_batch_size >= 1
        assert set(caps.as_dict()) >= {"name", "pushdown_operators", "max_item_bytes"}

    def test_item_size_covers_limits(self, backend):
        # A run at every documented limit at once must fit in one item.
        assert backend.capabilities.max_item_bytes >= 300_000

    def test_run_at_every_limit(self, store):
        experiment = store.create_experiment("big")
        blob = "x" * 1000
        params = {f"p{i:03d}": blob for i in range(limits.MAX_PARAMS_BYTES // 1010)}
        mapping = {f"k{i:02d}": "y" * 1000 for i in range(limits.MAX_ATTRIBUTES_BYTES
                                                          // 1010)}
        tags = {f"t{i:02d}": "z" * 1000 for i in range(limits.MAX_ATTRIBUTES_BYTES // 1010)}
        run = store.create_run(experiment.id, params=params, tags=tags, resources=mapping,
                               environment=mapping, seeds=mapping, code_version=mapping)
        loaded = store.get_run(run.id)
        assert loaded.to_record() == run.to_record()

    @pytest.mark.parametrize("field", sorted(ORDERABLE_FIELDS))
    @pytest.mark.parametrize("descending", [False, True])
    def test_native_order_honoured(self, backend, field, descending):
        if field not in backend.capabilities.native_order_fields:
            pytest.skip(f"backend declares no native order by {field!r}")
        from mltrail.conformance.cases.entities import build

        repository = backend.experiments
        for index in range(12):
            repository.insert(build("experiment", name=f"e{index % 4}-{index:02d}"))
        order = (OrderKey((field,), descending),)
        request = ScanRequest(order=order)
        scanned = list(repository.scan(request))
        keys = [(getattr(e, field), e.id) for e in scanned]
        expected = sorted(keys, key=lambda k: k[1])
        expected = sorted(expected, key=lambda k: k[0], reverse=descending)
        assert keys == expected
        cursor = (getattr(scanned[4], field), scanned[4].id)
        rest = [e.id for e in repository.scan(ScanRequest(order=order, after=cursor))]
        assert rest == [e.id for e in scanned[5:]]

    @pytest.mark.mltrail_requires("persistent")
    def test_persistent_store_reopens(self, store, mltrail_harness):
        experiment = store.create_experiment("kept")
        reopened = open_backend(mltrail_harness.store_url(store.backend))
        try:
            assert reopened.experiments.get(experiment.id).name == "kept"
        finally:
            reopened.close()


class BlobCases:
    area = "blobs"

    def test_put_get(self, backend):
        backend.blobs.put("configs", "abc", {"params": {"lr": 0.1}, "n": [1, None]})
        assert backend.blobs.get("configs", "abc") == {"params": {"lr": 0.1},
                                                       "n": [1, None]}

    def test_overwrite(self, backend):
        backend.blobs.put("configs", "abc", {"v": 1})
        backend.blobs.put("configs", "abc", {"v": 2})
        assert backend.blobs.get("configs", "abc") == {"v": 2}

    def test_missing(self, backend):
        with pytest.raises(NotFoundError):
            backend.blobs.get("configs", "nope")

    def test_scan_sorted_by_namespace(self, backend):
        for key in ("b", "a", "c"):
            backend.blobs.put("one", key, {"k": key})
        backend.blobs.put("two", "z", {"k": "z"})
        assert [k for k, _ in backend.blobs.scan("one")] == ["a", "b", "c"]
        assert [k for k, _ in backend.blobs.scan("two")] == ["z"]
        assert list(backend.blobs.scan("three")) == []

    def test_delete(self, backend):
        backend.blobs.put("one", "a", {"k": 1})
        backend.blobs.delete("one", "a")
        backend.blobs.delete("one", "a")
        with pytest.raises(NotFoundError):
            backend.blobs.get("one", "a")

    def test_awkward_keys(self, backend):
        for key in ("a/b", "sha256:00ff", "with space", "ünï", "x" * 200):
            backend.blobs.put("keys", key, {"key": key})
            assert backend.blobs.get("keys", key) == {"key": key}

    def test_large_record(self, backend):
        record = {"payload": "q" * 200_000}
        backend.blobs.put("big", "one", record)
        assert backend.blobs.get("big", "one") == record


class ListingCases:
    area = "listing"

    def test_runs_with_metrics(self, store):
        experiment = store.create_experiment("e")
        with_points = store.create_run(experiment.id)
        store.create_run(experiment.id)
        store.log_metrics(with_points.id, [{"key": "m", "value": 1.0}])
        assert list(store.backend.metrics.runs_with_metrics()) == [with_points.id]

    def test_scan_nodes_and_edges(self, store):
        raw = store.register_dataset("raw", "1")
        clean = store.register_dataset("clean", "1", derived_from=[raw.id])
        assert {n.id for n in store.backend.lineage.scan_nodes()} == {raw.id, clean.id}
        edges = list(store.backend.lineage.scan_edges())
        assert [(e.source, e.type.value, e.target) for e in edges] == [
            (clean.id, "derived_from", raw.id)]

    def test_update_cannot_change_unique_key(self, store):
        from mltrail.errors import InvalidInputError

        experiment = store.create_experiment("fixed")
        renamed = experiment.touched(name="other")
        with pytest.raises(InvalidInputError):
            store.backend.experiments.update(renamed)
