"""The local backend's search pushdown keeps every run the core's evaluator accepts."""

import json
import math
import sqlite3

import mltrail
import pytest

PARAMS = [
    {"lr": 0.0001, "opt": {"name": "adam", "beta": 0.9}},
    {"lr": -math.inf, "opt": {"name": "sgd"}},
    {"lr": math.nan},
    {"lr": 2**70, "opt.name": "adam"},
    {"lr": True, "opt": None},
    {"lr": "0.0001", "opt": {"name": "adam"}},
    {"lr": 1, "opt": {}},
    {"lr": [1, 2], "layers": {"a.b": 3}},
    {},
]
FILTERS = [
    "params.lr < 0.001",
    "params.lr <= 1",
    "params.lr > 1e20",
    "params.lr = 1",
    "params.lr = 1.0",
    "params.lr >= -inf",
    "params.lr in (1, 0.0001)",
    "params.lr in ('0.0001')",
    "params.lr = true",
    "params.lr != 1",
    "params.lr exists",
    "params.opt exists",
    "params.opt.name = 'adam'",
    "params.opt.name < 'b'",
    "params.`opt.name` = 'adam'",
    "params.layers.a.b = 3",
    "params.opt.beta > 0.5 and tags.team = 'vision'",
    "tags.team = 'vision'",
    "tags.team in ('vision', 'nlp')",
    "tags.team like 'vis%'",
    "not params.lr < 0.001",
    "params.lr < 0.001 or tags.team = 'nlp'",
    "params.missing exists",
    "params.lr <= 1 and params.opt.beta > 0.5",
    "params.lr exists and params.opt exists and params.lr < 1",
    "params.lr in (1, 2) and params.opt exists",
]


def _populate(store):
    experiment = store.create_experiment("e")
    teams = ["vision", "nlp", None]
    for index, params in enumerate(PARAMS):
        team = teams[index % 3]
        store.create_run(
            experiment.id,
            name=f"r{index}",
            params=params,
            tags={"team": team} if team else {},
        )


@pytest.fixture
def stores(tmp_path):
    local = mltrail.connect(f"local://{tmp_path}/s.db")
    memory = mltrail.connect("memory://")
    for store in (local, memory):
        _populate(store)
    yield local, memory
    local.close()


@pytest.mark.parametrize("text", FILTERS)
def test_local_search_matches_memory(stores, text):
    local, memory = stores
    found = sorted(r.name for r in local.iter_runs(text))
    expected = sorted(r.name for r in memory.iter_runs(text))
    assert found == expected


def test_params_index_follows_updates(stores):
    local, _ = stores
    run = next(local.iter_runs("params.opt.name = 'sgd'"))
    local.log_params(run.id, {"extra": 5})
    local.set_tags("run", run.id, {"team": "speech"})
    assert [r.id for r in local.iter_runs("params.extra = 5")] == [run.id]
    assert [r.id for r in local.iter_runs("tags.team = 'speech'")] == [run.id]
    local.purge_run(run.id)
    assert list(local.iter_runs("params.extra = 5")) == []


def test_store_without_index_is_backfilled(tmp_path):
    url = f"local://{tmp_path}/s.db"
    store = mltrail.connect(url)
    experiment = store.create_experiment("e")
    store.create_run(experiment.id, name="old", params={"lr": 0.1})
    store.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute("DELETE FROM run_fields")
        conn.execute("DELETE FROM store_meta")
    again = mltrail.connect(url)
    assert [r.name for r in again.iter_runs("params.lr > 0.05")] == ["old"]
    again.close()


def test_schema0_record_found_by_param(tmp_path):
    url = f"local://{tmp_path}/s.db"
    store = mltrail.connect(url)
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id, name="old")
    harness = store.backend.conformance_harness(url)
    record = run.to_record()
    record.update(schema_version=0, params={}, params_flat={"optimizer.lr": 0.01})
    record.pop("namespace")
    harness.raw_write(store.backend, "run", json.loads(json.dumps(record)))
    assert [r.name for r in store.iter_runs("params.optimizer.lr < 0.1")] == ["old"]
    store.close()
