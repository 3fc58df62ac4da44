"""Tests of shared configurations beyond the conformance cases, on memory and local."""

from __future__ import annotations

import hashlib

import pytest

from mltrail.access import AccessPolicy, Role
from mltrail.api import connect
from mltrail.config import Config
from mltrail.discovery import (
    compare_params, configuration_hash, get_configuration, rebuild_configuration_index,
    record_configuration, runs_with_same_configuration,
)
from mltrail.discovery.configs import forget_configuration, runs_namespace
from mltrail.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from mltrail.store import Store


@pytest.fixture(params=["memory", "local"])
def store(request, tmp_path):
    url = "memory://" if request.param == "memory" else f"local://{tmp_path}/s.db"
    opened = connect(url, actor="admin", config=Config())
    yield opened
    opened.close()


def test_hash_is_sha256_of_canonical_json():
    # The canonical JSON of {"b": 1, "a": 1.0} sorts keys and keeps 1.0 a float.
    expected = hashlib.sha256(b'{"a":1.0,"b":1}').hexdigest()

    assert configuration_hash({"b": 1, "a": 1.0}) == expected


def test_hash_ignores_key_order():
    assert configuration_hash({"a": 1, "b": {"c": 2, "d": 3}}) == \
        configuration_hash({"b": {"d": 3, "c": 2}, "a": 1})


def test_rebuild_records_older_runs(store):
    experiment = store.create_experiment("old")
    first = store.create_run(experiment.id, params={"lr": 0.1})
    second = store.create_run(experiment.id, params={"lr": 0.1})
    store.create_run(experiment.id)

    assert rebuild_configuration_index(store) == 2

    found = sorted(run.id for run in runs_with_same_configuration(store, first.id))
    assert found == sorted([first.id, second.id])
    assert rebuild_configuration_index(store) == 2


def test_hidden_namespaces_left_out(store):
    shared = {"lr": 0.1}
    visible = store.create_run(store.create_experiment("v").id, params=shared)
    hidden = store.create_run(store.create_experiment("h", namespace="secret").id,
                              params=shared)
    secret_only = store.create_run(store.get_experiment("h", namespace="secret").id,
                                   params={"lr": 0.9})
    for run in (visible, hidden, secret_only):
        record_configuration(store, run)
    policy = AccessPolicy(enabled=True, roles={"default": {"bob": Role.READER}})
    reader = Store(store.backend, actor="bob", policy=policy)

    assert [r.id for r in runs_with_same_configuration(reader, visible.id)] == \
        [visible.id]
    assert get_configuration(reader, configuration_hash(shared)).params == shared
    with pytest.raises(NotFoundError):
        get_configuration(reader, configuration_hash({"lr": 0.9}))


def test_reader_cannot_record(store):
    run = store.create_run(store.create_experiment("e").id, params={"a": 1})
    policy = AccessPolicy(enabled=True, roles={"default": {"bob": Role.READER}})

    forget_configuration(store, run.id)

    with pytest.raises(PermissionDeniedError):
        record_configuration(Store(store.backend, actor="bob", policy=policy), run)
    index = store.backend.blobs.scan(runs_namespace(configuration_hash({"a": 1})))
    assert list(index) == []


@pytest.mark.parametrize("value", ["abc", "A" * 64, 12, None])
def test_invalid_hash_rejected(store, value):
    with pytest.raises(InvalidInputError) as caught:
        get_configuration(store, value)
    assert repr(value) in str(caught.value)


def test_unknown_hash_not_found(store):
    with pytest.raises(NotFoundError):
        get_configuration(store, "0" * 64)


def test_configuration_record_rebuilt_from_runs(store):
    run = store.create_run(store.create_experiment("e").id, params={"a": [1, 2]})
    config_hash = record_configuration(store, run)
    store.backend.blobs.delete("configs", config_hash)

    assert get_configuration(store, config_hash).params == {"a": [1, 2]}


def test_comparison_rows_sorted_by_param(store):
    experiment = store.create_experiment("e")
    a = store.create_run(experiment.id, params={"z": 1, "m": 2, "a": 3})
    b = store.create_run(experiment.id, params={"z": 1, "m": 2.0, "b": 4})

    rows = compare_params(store, a.id, b.id).rows()

    assert [(row["param"], row["change"]) for row in rows] == [
        ("a", "only_in_a"), ("b", "only_in_b"), ("m", "differing"), ("z", "equal")]


def test_forget_purged_run(store):
    experiment = store.create_experiment("e")
    remaining = store.create_run(experiment.id, params={"a": 1})
    purged_twin = store.create_run(experiment.id, params={"a": 1})
    alone = store.create_run(experiment.id, params={"b": 2})
    for run in (remaining, purged_twin, alone):
        record_configuration(store, run)
    blobs = store.backend.blobs

    for run in (purged_twin, alone):
        store.purge_run(run.id)
        forget_configuration(store, run.id)
    forget_configuration(store, purged_twin.id)

    shared = configuration_hash({"a": 1})
    assert [key for key, _ in blobs.scan(runs_namespace(shared))] == [remaining.id]
    assert get_configuration(store, shared).params == {"a": 1}
    with pytest.raises(NotFoundError):
        blobs.get("configs", configuration_hash({"b": 2}))
    with pytest.raises(NotFoundError):
        blobs.get("config-of", alone.id)
