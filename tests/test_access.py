import pytest

import mltrail
from mltrail.access import AccessPolicy, Role
from mltrail.backends.memory import MemoryBackend
from mltrail.config import load_config, parse_config
from mltrail.errors import InvalidInputError, PermissionDeniedError
from mltrail.pseudonym import Pseudonymizer
from mltrail.store import Store

ROLES = {
    "default": {"ada": "admin", "wes": "writer", "rita": "reader"},
    "vision": {"wes": "reader"},
    "*": {"auditor": "reader"},
}


@pytest.fixture
def backend():
    backend = MemoryBackend()
    admin = Store(backend, actor="setup")
    experiment = admin.create_experiment("shared")
    admin.create_run(experiment.id, name="r1")
    vision = admin.create_experiment("cv", namespace="vision")
    admin.create_run(vision.id, name="v1")
    return backend


def store_as(backend, principal):
    config = parse_config({"access": {"enabled": True, "roles": ROLES}})
    return Store(backend, actor=principal, policy=AccessPolicy.from_config(config.access))


def test_reader_can_search_not_write(backend):
    store = store_as(backend, "rita")
    runs = list(store.iter_runs())
    assert [r.name for r in runs] == ["r1"]
    with pytest.raises(PermissionDeniedError) as caught:
        store.set_tags("run", runs[0].id, {"k": "v"})
    message = str(caught.value)
    assert "'rita'" in message
    assert "'reader'" in message
    assert "set_tags" in message


def test_denied_operation_audited(backend):
    store = store_as(backend, "rita")
    run = next(store.iter_runs())
    with pytest.raises(PermissionDeniedError):
        store.log_params(run.id, {"lr": 1})
    denied = [e for e in store.audit_log(run.id) if e.action == "denied"]
    assert len(denied) == 1
    assert denied[0].actor == "rita"
    assert denied[0].details["operation"] == "log_params"


def test_denied_write_changes_nothing(backend):
    store = store_as(backend, "rita")
    run = next(store.iter_runs())
    with pytest.raises(PermissionDeniedError):
        store.log_metrics(run.id, [{"key": "m", "value": 1.0}])
    assert store.latest_metrics(run.id) == {}


def test_writer_scoped_to_namespace(backend):
    store = store_as(backend, "wes")
    experiment = store.get_experiment("shared")
    store.create_run(experiment.id, name="mine")
    vision = store.get_experiment("cv", namespace="vision")
    with pytest.raises(PermissionDeniedError):
        store.create_run(vision.id, name="not allowed")


def test_writer_cannot_delete(backend):
    store = store_as(backend, "wes")
    run = next(store.iter_runs())
    with pytest.raises(PermissionDeniedError):
        store.delete_run(run.id)
    with pytest.raises(PermissionDeniedError):
        store.purge_run(run.id)


def test_admin_can_delete(backend):
    store = store_as(backend, "ada")
    run = next(store.iter_runs())
    assert store.delete_run(run.id).deleted_at is not None


def test_unknown_principal_sees_nothing(backend):
    store = store_as(backend, "mallory")
    with pytest.raises(PermissionDeniedError):
        list(store.iter_runs())


def test_star_grants_every_namespace(backend):
    store = store_as(backend, "auditor")
    assert {r.name for r in store.iter_runs()} == {"r1", "v1"}


def test_read_of_other_namespace_denied(backend):
    store = store_as(backend, "rita")
    vision_run = next(r for r in Store(backend).iter_runs() if r.name == "v1")
    with pytest.raises(PermissionDeniedError):
        store.get_run(vision_run.id)


def test_policy_role_lookup():
    policy = AccessPolicy.from_config(parse_config({"access": {"roles": ROLES}}).access)
    assert policy.role_of("wes", "default") == Role.WRITER
    assert policy.role_of("wes", "vision") == Role.READER
    assert policy.role_of("wes", None) == Role.WRITER
    assert policy.role_of("auditor", "anything") == Role.READER
    assert policy.readable_namespaces("rita") == {"default"}


def test_disabled_policy_is_open():
    assert AccessPolicy().role_of("anyone", "x") == Role.ADMIN


@pytest.mark.parametrize("data", [
    {"access": {"roles": {"default": {"x": "owner"}}}},
    {"access": {"roles": {"default": "admin"}}},
    {"pseudonymisation": {"fields": ["params.secret"]}},
    {"unknown": 1},
])
def test_bad_config_rejected(data):
    with pytest.raises(InvalidInputError):
        parse_config(data)


def test_config_file_and_principal_env(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    path.write_text('principal = "ada"\n[access.roles.default]\nada = "admin"\n')
    monkeypatch.setenv("MLTRAIL_CONFIG", str(path))
    monkeypatch.delenv("MLTRAIL_PRINCIPAL", raising=False)
    config = load_config()
    assert config.principal == "ada"
    assert config.access.enabled
    monkeypatch.setenv("MLTRAIL_PRINCIPAL", "wes")
    assert load_config().principal == "wes"


def test_connect_applies_config(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    path.write_text('principal = "rita"\n[access.roles.default]\nrita = "reader"\n')
    monkeypatch.setenv("MLTRAIL_CONFIG", str(path))
    monkeypatch.delenv("MLTRAIL_PRINCIPAL", raising=False)
    store = mltrail.connect(f"local://{tmp_path}/s.db")
    with pytest.raises(PermissionDeniedError):
        store.create_experiment("e")
    store.close()


def pseudonymous_store(key="secret-key"):
    return Store(MemoryBackend(), actor="ada",
                 pseudonymizer=Pseudonymizer(frozenset({"trainer", "tags.email"}),
                                             key.encode() if key else None))


def test_trainer_and_tag_pseudonymised():
    store = pseudonymous_store()
    experiment = store.create_experiment("e")
    run = store.create_run(experiment.id, trainer="alice",
                           tags={"email": "alice@example.com", "team": "cv"})
    stored = store.backend.runs.get(run.id)
    assert stored.trainer.startswith("pseudonym:")
    assert "alice" not in stored.trainer
    assert stored.tags["email"].startswith("pseudonym:")
    assert stored.tags["team"] == "cv"


def test_search_by_original_value_with_key():
    store = pseudonymous_store()
    experiment = store.create_experiment("e")
    store.create_run(experiment.id, name="a", trainer="alice")
    store.create_run(experiment.id, name="b", trainer="bob")
    assert [r.name for r in store.iter_runs("trainer = 'alice'")] == ["a"]
    assert [r.name for r in store.iter_runs("trainer in ('bob', 'zed')")] == ["b"]


def test_other_key_cannot_match():
    store = pseudonymous_store()
    experiment = store.create_experiment("e")
    store.create_run(experiment.id, name="a", trainer="alice")
    other = Store(store.backend, pseudonymizer=Pseudonymizer(frozenset({"trainer"}),
                                                             b"another key"))
    assert list(other.iter_runs("trainer = 'alice'")) == []


def test_missing_key_rejected_before_write():
    store = pseudonymous_store(key=None)
    experiment = store.create_experiment("e")
    with pytest.raises(InvalidInputError) as caught:
        store.create_run(experiment.id, trainer="alice")
    assert "MLTRAIL_PSEUDONYM_KEY" in str(caught.value)
    assert list(store.iter_runs()) == []


def test_pseudonym_stable_and_keyed():
    first = Pseudonymizer(frozenset({"trainer"}), b"k1")
    second = Pseudonymizer(frozenset({"trainer"}), b"k2")
    assert first.pseudonym("alice") == first.pseudonym("alice")
    assert first.pseudonym("alice") != second.pseudonym("alice")
    assert first.pseudonym(first.pseudonym("alice")) == first.pseudonym("alice")
