import sqlite3
import subprocess
import sys

import pytest

import mltrail
from mltrail.errors import BackendUnavailableError, InvalidInputError


def test_store_file_created(tmp_path):
    path = tmp_path / "nested" / "store.db"
    store = mltrail.connect(f"local://{path}")
    store.create_experiment("e")
    store.close()
    assert path.exists()


def test_directory_path_rejected(tmp_path):
    with pytest.raises(InvalidInputError):
        mltrail.connect(f"local://{tmp_path}")


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(BackendUnavailableError):
        mltrail.connect(f"local://{path}")


def test_url_without_path():
    with pytest.raises(InvalidInputError):
        mltrail.connect("local://")


def test_data_survives_reopen(tmp_path):
    url = f"local://{tmp_path}/s.db"
    store = mltrail.connect(url)
    with mltrail.start_run(store, "exp", params={"x": -0.0}) as run:
        run.log_metric("m", float("nan"))
    store.close()
    again = mltrail.connect(url)
    assert str(again.get_run(run.id).params["x"]) == "-0.0"
    again.close()


def test_nan_stored_as_bits_not_null(tmp_path):
    url = f"local://{tmp_path}/s.db"
    store = mltrail.connect(url)
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id)
    store.log_metrics(run.id, [{"key": "m", "value": float("nan")}])
    store.close()
    row = sqlite3.connect(tmp_path / "s.db").execute(
        "SELECT value, bits FROM metric_points").fetchone()
    assert row == (None, "7ff8000000000000")


def test_second_process_sees_writes(tmp_path):
    url = f"local://{tmp_path}/s.db"
    store = mltrail.connect(url)
    experiment = store.create_experiment("shared")
    code = (f"import mltrail; s = mltrail.connect({url!r}); "
            f"r = s.create_run({experiment.id!r}, name='from-child'); print(r.id)")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True)
    run_id = child.stdout.strip()
    assert store.get_run(run_id).name == "from-child"
