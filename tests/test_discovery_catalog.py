"""Tests of the catalog of models, datasets and experiments, on memory and local."""

from __future__ import annotations

import pytest

from mltrail.access import AccessPolicy, Role
from mltrail.api import connect
from mltrail.config import Config
from mltrail.discovery import catalog, parse_query
from mltrail.discovery.catalog import Term
from mltrail.errors import InvalidInputError, PermissionDeniedError
from mltrail.store import Store


@pytest.fixture(params=["memory", "local"])
def store(request, tmp_path):
    url = "memory://" if request.param == "memory" else f"local://{tmp_path}/s.db"
    opened = connect(url, actor="admin", config=Config())
    yield opened
    opened.close()


@pytest.fixture
def filled(store):
    """Two namespaces with models, dataset versions and experiments."""
    vision = store.create_experiment("digits", namespace="vision",
                                     description="Handwritten DIGIT recognition",
                                     tags={"team": "vision"})
    store.create_experiment("speech", namespace="audio", description="Keyword spotting",
                            tags={"team": "audio"})
    for index in range(3):
        store.create_run(vision.id, name=f"r{index}")
    deleted = store.create_run(vision.id, name="gone")
    store.delete_run(deleted.id)
    producer = store.create_run(vision.id, name="producer")
    store.create_model("digit-classifier", namespace="vision",
                       description="CNN for digits", tags={"team": "vision"})
    for _ in range(3):
        store.register_model_version("digit-classifier", namespace="vision",
                                     run_id=producer.id)
    store.set_alias("digit-classifier", "production", 2, namespace="vision")
    store.delete_model_version("digit-classifier", 3, namespace="vision")
    store.create_model("retired", namespace="audio")
    store.delete_model("retired", namespace="audio")
    store.register_dataset("mnist", "1", namespace="vision", tags={"split": "train"})
    store.register_dataset("mnist", "2", namespace="vision", tags={"split": "all"},
                           description="MNIST with extra digits")
    store.register_dataset("mnist", "1", namespace="audio")
    return store


def by_key(entries):
    return {(e.kind, e.namespace, e.name): e for e in entries}


def test_catalog_lists_every_kind(filled):
    entries = by_key(catalog(filled))

    assert set(entries) == {
        ("model", "vision", "digit-classifier"),
        ("dataset", "vision", "mnist"), ("dataset", "audio", "mnist"),
        ("experiment", "vision", "digits"), ("experiment", "audio", "speech"),
    }


def test_model_latest_live_version_and_aliases(filled):
    model = by_key(catalog(filled))[("model", "vision", "digit-classifier")]

    assert model.latest_version == 2
    assert model.version_count == 2
    assert model.aliases == {"production": 2}


def test_dataset_newest_version_per_name(filled):
    entries = by_key(catalog(filled, kinds=["dataset"]))

    assert entries[("dataset", "vision", "mnist")].latest_version == "2"
    assert entries[("dataset", "vision", "mnist")].version_count == 2
    assert entries[("dataset", "vision", "mnist")].tags == {"split": "all"}
    assert entries[("dataset", "audio", "mnist")].version_count == 1


def test_experiment_run_count_skips_deleted(filled):
    entries = by_key(catalog(filled, kinds=["experiment"]))

    assert entries[("experiment", "vision", "digits")].run_count == 4
    assert entries[("experiment", "audio", "speech")].run_count == 0


def test_deleted_model_only_on_request(filled):
    assert ("model", "audio", "retired") not in by_key(catalog(filled))

    entries = by_key(catalog(filled, include_deleted=True))

    assert entries[("model", "audio", "retired")].deleted_at is not None


@pytest.mark.parametrize("query,expected", [
    ("digit", {("model", "vision", "digit-classifier"),
               ("experiment", "vision", "digits"), ("dataset", "vision", "mnist")}),
    ("name:digit", {("model", "vision", "digit-classifier"),
                    ("experiment", "vision", "digits")}),
    ("description:RECOGNITION", {("experiment", "vision", "digits")}),
    ("team=vision", {("model", "vision", "digit-classifier"),
                     ("experiment", "vision", "digits")}),
    ("tag:team=audio", {("experiment", "audio", "speech")}),
    ("tag:split", {("dataset", "vision", "mnist")}),
    ("team=vision cnn", {("model", "vision", "digit-classifier")}),
    ('"keyword spotting"', {("experiment", "audio", "speech")}),
    ("nothing-matches", set()),
])
def test_query_terms(filled, query, expected):
    assert set(by_key(catalog(filled, query=query))) == expected


def test_query_as_list_keeps_spaces(filled):
    found = catalog(filled, query=["keyword spotting"])

    assert [e.name for e in found] == ["speech"]


def test_entries_grouped_by_kind_in_given_order(filled):
    kinds = [e.kind for e in catalog(filled, kinds=["experiment", "model"])]

    assert kinds == ["experiment", "experiment", "model"]


def test_namespace_restricts(filled):
    entries = catalog(filled, namespace="audio")

    assert {e.namespace for e in entries} == {"audio"}


def test_unknown_kind_rejected(filled):
    with pytest.raises(InvalidInputError) as caught:
        catalog(filled, kinds=["pipeline"])
    assert "'pipeline'" in str(caught.value)


def test_unclosed_quote_rejected(filled):
    with pytest.raises(InvalidInputError) as caught:
        catalog(filled, query='"open')
    assert "close the quote" in str(caught.value)


def test_empty_prefixed_term_rejected():
    with pytest.raises(InvalidInputError):
        parse_query("tag:")


def test_parse_query_terms():
    assert parse_query("a=b tag:c name:d x") == [
        Term("tag", "a", "b"), Term("tag", "c"), Term("name", "d"), Term("text", "x")]


def test_readers_see_only_their_namespaces(filled):
    policy = AccessPolicy(enabled=True, roles={"vision": {"carol": Role.READER}})
    reader = Store(filled.backend, actor="carol", policy=policy)

    entries = catalog(reader)

    assert {e.namespace for e in entries} == {"vision"}
    with pytest.raises(PermissionDeniedError):
        catalog(reader, namespace="audio")
