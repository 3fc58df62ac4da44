import math

import pytest

import mltrail
from mltrail.api import (
    capture_environment, capture_git, hash_data, hash_file, register_dataset,
    reproducibility_hash,
)
from mltrail.domain import RunStatus


@pytest.fixture
def store():
    return mltrail.connect("memory://")


def test_run_completes(store):
    with mltrail.start_run(store, "exp", params={"lr": 0.1}) as run:
        assert store.get_run(run.id).status == RunStatus.RUNNING
        run.log_metric("acc", 0.5, step=1)
    final = store.get_run(run.id)
    assert final.status == RunStatus.COMPLETED
    assert final.end_time >= final.start_time
    assert [p.value for p in store.metric_history(run.id, "acc")] == [0.5]


def test_run_failure_recorded(store):
    with pytest.raises(ZeroDivisionError):
        with mltrail.start_run(store, "exp") as run:
            run.log_metric("acc", 0.5)
            1 / 0
    final = store.get_run(run.id)
    assert final.status == RunStatus.FAILED
    assert final.error["type"] == "ZeroDivisionError"
    assert "1 / 0" in final.error["traceback"]
    assert len(list(store.metric_history(run.id, "acc"))) == 1


def test_keyboard_interrupt_kills(store):
    with pytest.raises(KeyboardInterrupt):
        with mltrail.start_run(store, "exp") as run:
            raise KeyboardInterrupt
    assert store.get_run(run.id).status == RunStatus.KILLED


def test_metrics_buffered_until_flush(store):
    with mltrail.start_run(store, "exp", flush_size=10) as run:
        for step in range(9):
            run.log_metric("loss", 1.0 / (step + 1), step=step)
        assert list(store.metric_history(run.id, "loss")) == []
        run.log_metric("loss", 0.01, step=9)
        assert len(list(store.metric_history(run.id, "loss"))) == 10


def test_bad_metric_rejected_at_log_time(store):
    with mltrail.start_run(store, "exp") as run:
        with pytest.raises(mltrail.InvalidInputError):
            run.log_metric("loss", "high")


def test_child_runs(store):
    with mltrail.start_run(store, "exp", name="sweep") as parent:
        with parent.child("trial", params={"lr": 0.1}) as child:
            child.log_metric("acc", 0.9)
    loaded = store.get_run(child.id)
    assert loaded.parent_run_id == parent.id
    assert loaded.experiment_id == store.get_run(parent.id).experiment_id


def test_environment_captured(store):
    with mltrail.start_run(store, "exp") as run:
        pass
    environment = store.get_run(run.id).environment
    assert environment["python"].count(".") == 2
    assert "mltrail" in environment["packages"]
    assert environment["hardware"]["cpu_count"] >= 1


def test_capture_can_be_turned_off(store):
    with mltrail.start_run(store, "exp", capture_env=False, capture_code=False) as run:
        pass
    loaded = store.get_run(run.id)
    assert loaded.environment == {}
    assert loaded.code_version == {}


def test_capture_git_outside_repository(tmp_path):
    assert capture_git(tmp_path) == {}


def test_capture_git_in_repository(tmp_path):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f.txt").write_text("x")
    subprocess.run(["git", "-C", str(tmp_path), "add", "f.txt"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.email=a@b", "-c",
                    "user.name=a", "commit", "-qm", "init"], check=True)
    clean = capture_git(tmp_path)
    assert len(clean["git_commit"]) == 40
    assert clean["dirty"] is False
    (tmp_path / "f.txt").write_text("changed")
    assert capture_git(tmp_path)["dirty"] is True


def test_hash_data_distinguishes_dtype_and_shape():
    numpy = pytest.importorskip("numpy")
    a = numpy.arange(6, dtype="int64")
    assert hash_data(a) != hash_data(a.reshape(2, 3))
    assert hash_data(a) != hash_data(a.astype("int32"))
    assert hash_data(a) == hash_data(numpy.arange(6, dtype="int64"))


def test_hash_file_streams(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 3_000_000)
    assert hash_file(path) == hash_data(b"x" * 3_000_000)


def test_register_dataset_hash_and_provenance(store):
    dataset = register_dataset(store, "digits", "1", data=[1, 2, 3],
                               source_uri="sklearn:digits", preprocessing=["scale"],
                               pipeline="features-v1")
    assert dataset.content_hash == hash_data([1, 2, 3])
    assert dataset.provenance["preprocessing"] == ["scale"]
    assert dataset.ingested_at is not None


def test_register_dataset_needs_data_or_path(store):
    with pytest.raises(mltrail.InvalidInputError):
        register_dataset(store, "digits")


def test_model_registration_hashes(store, tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('train')\n")
    data = register_dataset(store, "d", data=b"rows")
    with mltrail.start_run(store, "exp", datasets=[data], params={"lr": 0.1}) as run:
        version = run.register_model("clf", script_path=script)
    assert version.version == 1
    assert version.script_hash == hash_file(script)
    assert version.script_uri == script.resolve().as_uri()
    assert version.reproducibility_hash.startswith("sha256:")
    graph = store.upstream(version.id, depth=3)
    assert data.id in graph.nodes


def test_reproducibility_hash_sensitive_to_inputs():
    base = dict(dataset_hashes=["a"], git_commit="c1", script_hash="s",
                environment={"python": "3.11", "packages": {"numpy": "1"}},
                params={"lr": 0.1})
    reference = reproducibility_hash(**base)
    assert reproducibility_hash(**base) == reference
    for change in ({"dataset_hashes": ["b"]}, {"git_commit": "c2"},
                   {"params": {"lr": 0.2}},
                   {"environment": {"python": "3.12", "packages": {"numpy": "1"}}}):
        assert reproducibility_hash(**{**base, **change}) != reference


def test_capture_environment_without_packages():
    assert "packages" not in capture_environment(include_packages=False)


def test_nan_metric_logged(store):
    with mltrail.start_run(store, "exp") as run:
        run.log_metric("loss", math.nan)
    assert math.isnan(store.latest_metrics(run.id)["loss"].value)
