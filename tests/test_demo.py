"""End-to-end test of the demo in quick mode against in-memory stores."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

pytest.importorskip("sklearn")

from sklearn.datasets import load_digits  # noqa: E402

import mltrail  # noqa: E402
from mltrail import demo  # noqa: E402
from mltrail.api import hash_data  # noqa: E402
from mltrail.errors import InvalidInputError  # noqa: E402

HISTORY_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc")


@pytest.fixture(scope="module")
def finished():
    """Run the quick demo once; return its result, its output and the store."""
    url = f"memory://demo-{uuid.uuid4().hex}"
    lines: list[str] = []
    result = demo.main(url, quick=True, seed=3, out=lines.append)
    return result, lines, mltrail.connect(url)


def child_ids(result) -> list[str]:
    return [run_id for sweep in result.sweeps for run_id in sweep.child_run_ids]


def test_demo_records_at_least_eight_runs(finished):
    result, _, store = finished
    runs = list(store.iter_runs())
    assert len(runs) >= 8
    assert all(run.status.value == "completed" for run in runs)
    assert len(result.sweeps) == 2


def test_demo_children_belong_to_sweep_parents(finished):
    result, _, store = finished
    for sweep in result.sweeps:
        assert len(sweep.child_run_ids) >= 2
        for run_id in sweep.child_run_ids:
            assert store.get_run(run_id).parent_run_id == sweep.parent_run_id


def test_demo_histories_have_ten_points(finished):
    result, _, store = finished
    for run_id in child_ids(result):
        for key in HISTORY_KEYS:
            points = list(store.metric_history(run_id, key))
            assert len(points) >= 10, (run_id, key)
            assert [p.step for p in points] == list(range(1, len(points) + 1))


def test_demo_val_acc_has_bootstrap_interval(finished):
    result, _, store = finished
    for run_id in child_ids(result):
        for point in store.metric_history(run_id, "val_acc"):
            assert point.ci_level == 0.95
            assert point.ci_low <= point.value <= point.ci_high
            assert point.split == "validation"
            assert point.unit == "ratio"
            assert point.metric_kind == "accuracy"


def test_demo_params_nested_and_seeds_recorded(finished):
    result, _, store = finished
    for run_id in child_ids(result):
        run = store.get_run(run_id)
        assert {"model", "optimizer", "data"} <= set(run.params)
        assert run.params["data"]["split_seed"] == 3
        assert set(run.seeds) == {"split", "model", "shuffle", "bootstrap"}
        assert run.dataset_ids


def test_demo_raw_dataset_hash_matches_arrays(finished):
    result, _, store = finished
    digits = next(s for s in result.sweeps if s.family == "sgd").raw_dataset
    x, y = load_digits(return_X_y=True)
    stored = store.get_dataset(digits.id)
    assert stored.content_hash == hash_data((x.astype("float64"), y.astype("int64")))
    assert stored.provenance["source"] == "sklearn.datasets.load_digits"
    assert stored.ingested_at is not None


def test_demo_processed_dataset_provenance(finished):
    result, _, store = finished
    for sweep in result.sweeps:
        processed = store.get_dataset(sweep.processed_dataset.id)
        steps = processed.provenance["preprocessing"]
        split = next(step for step in steps if step["step"] == "train_validation_split")
        assert split["seed"] == 3
        assert 0 < split["validation_ratio"] < 1
        assert any(step["step"] == "standard_scaling" for step in steps)
        assert processed.provenance["pipeline"] == demo.PIPELINE
        assert processed.content_hash.startswith("sha256:")


def test_demo_registers_two_production_versions(finished):
    result, _, store = finished
    models = list(store.list_models())
    assert len(models) >= 2
    for sweep in result.sweeps:
        model = store.get_model(sweep.model_name)
        assert model.aliases["production"] == sweep.model_version.version
        version = store.get_model_version(sweep.model_name, "production")
        assert version.run_id == sweep.best_run_id
        assert version.script_uri.endswith("demo.py")
        assert version.script_hash.startswith("sha256:")
        assert version.reproducibility_hash.startswith("sha256:")


def test_demo_best_run_has_highest_val_acc(finished):
    result, _, store = finished
    for sweep in result.sweeps:
        finals = {run_id: store.latest_metrics(run_id)["val_acc"].value
                  for run_id in sweep.child_run_ids}
        assert finals[sweep.best_run_id] == max(finals.values())
        assert sweep.best_val_acc == finals[sweep.best_run_id]


def test_demo_lineage_reaches_raw_dataset(finished):
    result, _, store = finished
    for sweep in result.sweeps:
        graph = store.upstream(sweep.model_version.id, depth=5)
        assert graph.nodes[sweep.best_run_id] == 1
        assert graph.nodes[sweep.processed_dataset.id] == 2
        assert graph.nodes[sweep.raw_dataset.id] == 3
        kinds = {node.kind.value for node in graph.details.values()}
        assert {"model_version", "run", "dataset", "pipeline"} <= kinds


def test_demo_prints_comparison_aggregate_and_trace(finished):
    _, lines, _ = finished
    text = "\n".join(lines)
    assert "Best runs of sgd sweep by val_acc, side by side:" in text
    assert "params.optimizer.learning_rate" in text
    assert ("val_acc of the mlp sweep grouped by "
            "params.optimizer.learning_rate_init:") in text
    assert "Trace to the raw dataset:" in text
    traces = [line for line in lines if " <- derived from dataset " in line]
    assert len(traces) == 2
    assert traces[0].strip().startswith("model_version digits-sgd v")


def test_demo_rerun_reuses_datasets():
    url = f"memory://demo-{uuid.uuid4().hex}"
    first = demo.main(url, quick=True, seed=5, out=lambda line: None)
    second = demo.main(url, quick=True, seed=5, out=lambda line: None)
    store = mltrail.connect(url)
    assert len(list(store.list_datasets())) == 4
    for before, after in zip(first.sweeps, second.sweeps):
        assert after.raw_dataset.id == before.raw_dataset.id
        assert after.processed_dataset.id == before.processed_dataset.id
        assert after.best_val_acc == before.best_val_acc
        assert after.model_version.version == before.model_version.version + 1
        assert store.get_model(after.model_name).aliases["production"] == \
            after.model_version.version


def test_demo_rejects_negative_seed():
    with pytest.raises(InvalidInputError, match="seed -1 is invalid"):
        demo.main("memory://", quick=True, seed=-1, out=lambda line: None)


def test_demo_runs_as_module():
    completed = subprocess.run(
        [sys.executable, "-m", "mltrail.demo", "--store", "memory://module", "--quick"],
        capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "registered digits-sgd v1" in completed.stdout
    assert completed.stdout.rstrip().splitlines()[-1].startswith("finished in ")
    assert "next, try" not in completed.stdout
