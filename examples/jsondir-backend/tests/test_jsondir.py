"""Behaviour of the jsondir backend that the conformance suite does not cover."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mltrail
from mltrail.audit import append_event
from mltrail.codec import float_to_bits
from mltrail.domain import (
    EdgeType, Experiment, LineageEdge, LineageNode, MetricPoint, NodeKind,
)
from mltrail.errors import BackendUnavailableError, InvalidInputError, NotFoundError
from mltrail.registry import load_backend_class

from mltrail_jsondir import JsonDirBackend
from mltrail_jsondir.layout import Layout, file_stem
from mltrail_jsondir.metrics import MAX_CHUNK_FILES


@pytest.fixture
def backend(tmp_path: Path) -> JsonDirBackend:
    backend = JsonDirBackend(tmp_path / "store")
    backend.initialize()
    return backend


def test_entry_point_registered():
    assert load_backend_class("jsondir") is JsonDirBackend


@pytest.mark.parametrize("url,expected", [
    ("jsondir:///srv/mltrail", "/srv/mltrail"),
    ("jsondir:///srv/my%20store", "/srv/my store"),
])
def test_from_url_absolute(url, expected):
    assert JsonDirBackend.from_url(url).root == Path(expected)


def test_from_url_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    backend = JsonDirBackend.from_url("jsondir://stores/a")
    assert backend.root == tmp_path / "stores" / "a"


@pytest.mark.parametrize("url", [
    "local:///tmp/x", "jsondir://", "jsondir:///tmp/x?sync=0", "jsondir:///tmp/x#frag",
])
def test_from_url_rejects(url):
    with pytest.raises(InvalidInputError) as caught:
        JsonDirBackend.from_url(url)
    assert caught.value.value == url


def test_url_round_trip(tmp_path):
    backend = JsonDirBackend(tmp_path / "a store with spaces")
    assert JsonDirBackend.from_url(backend.url).root == backend.root


def test_reopen_keeps_data(tmp_path):
    url = f"jsondir://{tmp_path}/store"
    with mltrail.connect(url, actor="test") as store:
        experiment = store.create_experiment("kept")
        run = store.create_run(experiment.id, params={"lr": 0.1})
        store.log_metrics(run.id, [{"key": "m", "value": -0.0, "step": 1}])
    with mltrail.connect(url, actor="test") as store:
        assert store.get_run(run.id).params == {"lr": 0.1}
        value = store.latest_metrics(run.id)["m"].value
        assert float_to_bits(value) == float_to_bits(-0.0)
        assert store.verify_audit().ok


def test_initialize_rejects_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not a store")
    with pytest.raises(InvalidInputError) as caught:
        JsonDirBackend(tmp_path).initialize()
    assert "notes.txt" in str(caught.value)


def test_initialize_rejects_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(InvalidInputError):
        JsonDirBackend(path).initialize()


def test_initialize_rejects_newer_layout(backend):
    backend.layout.marker.write_text(json.dumps({"format": "mltrail-jsondir",
                                                 "layout_version": 99}))
    with pytest.raises(InvalidInputError) as caught:
        JsonDirBackend(backend.root).initialize()
    assert "upgrade" in str(caught.value)


def test_file_stem_safe_and_unsafe():
    assert file_stem("01HX0ABC") == "01HX0ABC"
    assert file_stem("../etc").startswith("~")
    assert file_stem(".") != file_stem("..")
    assert len(file_stem("x" * 300)) < 100


def test_get_with_path_characters(backend):
    with pytest.raises(NotFoundError):
        backend.experiments.get("../../jsondir")


def test_stale_claim_does_not_block_insert(backend):
    first = Experiment(name="taken")
    claim = backend.layout.claim("experiment", ["default", "taken"])
    claim.parent.mkdir(parents=True)
    claim.write_text(json.dumps({"key": ["default", "taken"], "id": "GONE1"}))
    backend.experiments.insert(first)
    assert backend.experiments.find_unique(("default", "taken")).id == first.id


def test_damaged_document_names_file(backend):
    experiment = Experiment(name="broken")
    backend.experiments.insert(experiment)
    path = backend.layout.entity("experiment", experiment.id)
    path.write_text('{"id": ')
    with pytest.raises(BackendUnavailableError) as caught:
        backend.experiments.get(experiment.id)
    assert str(path) in str(caught.value)


def _points(run_id: str, steps: range, batch: str) -> list[MetricPoint]:
    return [MetricPoint(run_id=run_id, key="m", value=float(step), step=step,
                        seq=f"{batch}:{index:06d}")
            for index, step in enumerate(steps)]


def test_compaction_bounds_chunk_files(backend):
    for step in range(100):
        points = _points("RUN1", range(step, step + 1), f"B{step:03d}")
        backend.metrics.append("RUN1", points)
    folder = backend.layout.series("RUN1", "m")
    chunk_files = list(folder.glob("*.jsonl"))
    assert len(chunk_files) <= MAX_CHUNK_FILES
    steps = [point.step for point in backend.metrics.history("RUN1", "m")]
    assert steps == list(range(100))
    assert backend.metrics.latest(["RUN1"])["RUN1"]["m"].step == 99


def test_retry_after_compaction_adds_nothing(backend):
    first = _points("RUN1", range(5), "FIRST")
    backend.metrics.append("RUN1", first)
    for step in range(5, 5 + MAX_CHUNK_FILES):
        points = _points("RUN1", range(step, step + 1), f"B{step:03d}")
        backend.metrics.append("RUN1", points)
    backend.metrics.append("RUN1", first)
    steps = [point.step for point in backend.metrics.history("RUN1", "m")]
    assert steps == list(range(5 + MAX_CHUNK_FILES))


def test_damaged_chunk_line_names_file(backend):
    backend.metrics.append("RUN1", _points("RUN1", range(3), "B1"))
    (chunk,) = backend.layout.series("RUN1", "m").glob("*.jsonl")
    chunk.write_bytes(chunk.read_bytes() + b"\xff\xfe not json\n")
    with pytest.raises(BackendUnavailableError) as caught:
        list(backend.metrics.history("RUN1", "m"))
    assert "line 4" in str(caught.value)
    assert str(chunk) in str(caught.value)


def test_half_written_edge_completed(backend):
    for node_id in ("DATA1", "DATA2"):
        backend.lineage.put_node(LineageNode(id=node_id, kind=NodeKind.DATASET))
    edge = LineageEdge(source="DATA2", target="DATA1", type=EdgeType.DERIVED_FROM)
    # A crash after the first of the two copies was written.
    at_upstream = backend.layout.edge(edge.upstream, "downstream", edge)
    at_upstream.parent.mkdir(parents=True)
    at_upstream.write_text(json.dumps(edge.to_record()))
    backend.lineage.add_edge(edge)
    assert backend.lineage.edges("DATA2", "upstream") == [edge]
    assert backend.lineage.edges("DATA1", "downstream") == [edge]


def test_delete_node_removes_far_copies(backend):
    for node_id in ("DATA1", "DATA2"):
        backend.lineage.put_node(LineageNode(id=node_id, kind=NodeKind.DATASET))
    backend.lineage.add_edge(LineageEdge(source="DATA2", target="DATA1",
                                         type=EdgeType.DERIVED_FROM))
    backend.lineage.delete_node("DATA2")
    assert backend.lineage.edges("DATA1", "downstream") == []
    assert list(backend.lineage.scan_edges()) == []


def test_audit_across_buckets(backend):
    for index in range(1_005):
        append_event(backend.audit, actor="test", action="touch", entity_type="run",
                     entity_id=f"RUN{index % 2}", details={"n": index})
    assert backend.audit.last().seq == 1_005
    seqs = [event.seq for event in backend.audit.scan(after_seq=998)]
    assert seqs == list(range(999, 1_006))
    assert len(list(backend.audit.for_entity("RUN1"))) == 502
    layout = Layout(backend.root)
    assert layout.audit_bucket(1_005) != layout.audit_bucket(999)
