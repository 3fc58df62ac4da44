import pytest

import mltrail
from mltrail import registry
from mltrail.errors import BackendUnavailableError, InvalidInputError


def test_unknown_scheme_lists_known():
    with pytest.raises(InvalidInputError) as caught:
        mltrail.connect("nosuch://x")
    message = str(caught.value)
    assert "'nosuch'" in message
    assert "memory://" in message
    assert "local://" in message


def test_url_without_scheme():
    with pytest.raises(InvalidInputError):
        mltrail.connect("/tmp/store.db")


def test_environment_variable_used(monkeypatch, tmp_path):
    monkeypatch.setenv("MLTRAIL_STORE", f"local://{tmp_path}/env.db")
    store = mltrail.connect()
    assert store.url == f"local://{tmp_path}/env.db"
    store.close()


def test_default_is_local_in_data_dir(monkeypatch):
    monkeypatch.delenv("MLTRAIL_STORE", raising=False)
    assert registry.resolve_url(None).startswith("local://")
    assert registry.resolve_url(None).endswith("store.db")


def test_missing_driver_names_extra(monkeypatch):
    monkeypatch.setitem(registry.BUILTIN_BACKENDS, "fakestore",
                        ("mltrail.backends.fakestore:FakeBackend", "fakestore"))
    registry.available_backends.cache_clear()
    try:
        with pytest.raises(BackendUnavailableError) as caught:
            registry.load_backend_class("fakestore")
        assert "pip install 'mltrail[fakestore]'" in str(caught.value)
    finally:
        registry.available_backends.cache_clear()


def test_backends_listed_sorted():
    names = list(registry.available_backends())
    assert names == sorted(names)
    assert {"memory", "local", "mongodb", "dynamodb", "firestore", "cassandra"} <= set(names)


def test_named_memory_store_shared():
    first = mltrail.connect("memory://shared-test")
    first.create_experiment("e")
    second = mltrail.connect("memory://shared-test")
    assert [e.name for e in second.list_experiments()] == ["e"]
