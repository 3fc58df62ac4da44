"""Tests of facet counts and faceted search, on memory and local stores."""

from __future__ import annotations

import math

import pytest

from mltrail.access import AccessPolicy, Role
from mltrail.api import connect
from mltrail.config import Config
from mltrail.discovery import facet_clause, facets, search_with_facets
from mltrail.discovery.facets import ValueCounter, parse_field, render_value
from mltrail.errors import InvalidInputError
from mltrail.store import Store


@pytest.fixture(params=["memory", "local"])
def store(request, tmp_path):
    url = "memory://" if request.param == "memory" else f"local://{tmp_path}/s.db"
    opened = connect(url, actor="admin", config=Config())
    yield opened
    opened.close()


@pytest.fixture
def sweep(store):
    """Eight runs over two teams and optimizers, one without a team tag."""
    experiment = store.create_experiment("sweep")
    layout = [("vision", "adam"), ("vision", "adam"), ("vision", "sgd"),
              ("nlp", "adam"), ("nlp", "sgd"), ("nlp", "sgd"), ("nlp", "sgd"),
              (None, "adam")]
    for index, (team, optimizer) in enumerate(layout):
        tags = {"team": team} if team else {}
        run = store.create_run(experiment.id, name=f"r{index}", tags=tags,
                               params={"optimizer": optimizer, "seed": index})
        store.log_metric(run.id, "acc", 0.5 if index % 2 else 0.75)
    return experiment


def counts(facet):
    return {value.value: value.count for value in facet.values}


def test_default_fields_counted(store, sweep):
    result = facets(store)

    assert list(result) == ["tags.team", "params.optimizer"]
    assert counts(result["tags.team"]) == {"nlp": 4, "vision": 3}
    assert result["tags.team"].missing == 1
    assert counts(result["params.optimizer"]) == {"adam": 4, "sgd": 4}
    assert result["params.optimizer"].runs == 8


def test_values_ranked_by_count_then_text(store, sweep):
    values = facets(store, fields=["tags.team"])["tags.team"].values

    assert [v.rendered for v in values] == ['"nlp"', '"vision"']


def test_filter_and_scope(store, sweep):
    other = store.create_experiment("other")
    store.create_run(other.id, tags={"team": "vision"}, params={"optimizer": "adam"})

    result = facets(store, "params.optimizer = 'sgd'", ["tags.team"],
                    experiment_ids=[sweep.id])

    assert counts(result["tags.team"]) == {"nlp": 3, "vision": 1}


def test_canonical_values_kept_apart(store):
    experiment = store.create_experiment("types")
    values = [1, 1.0, "1", True, 0.0, -0.0, math.nan, math.inf, [1], {"a": 1}]
    for value in values:
        store.create_run(experiment.id, params={"x": value})

    result = facets(store, fields=["params.x"])["params.x"]

    rendered = sorted(v.rendered for v in result.values)
    assert rendered == sorted(render_value(v) for v in values)
    assert len(rendered) == len(values)
    assert all(v.count == 1 for v in result.values)
    assert result.distinct == len(values)


def test_limit_sums_the_rest_into_other(store, sweep):
    result = facets(store, fields=["params.seed"], limit=3)["params.seed"]

    assert len(result.values) == 3
    assert result.other == 5
    assert result.distinct == 8


def test_metric_and_status_fields(store, sweep):
    result = facets(store, fields=["metrics.acc", "status"])

    assert counts(result["metrics.acc"]) == {0.75: 4, 0.5: 4}
    assert counts(result["status"]) == {"pending": 8}


def test_unreadable_namespaces_not_counted(store, sweep):
    hidden = store.create_experiment("hidden", namespace="secret")
    store.create_run(hidden.id, tags={"team": "vision"})
    policy = AccessPolicy(enabled=True, roles={"default": {"dave": Role.READER}})
    reader = Store(store.backend, actor="dave", policy=policy)

    assert counts(facets(reader, fields=["tags.team"])["tags.team"])["vision"] == 3


@pytest.mark.parametrize("field", ["", "tags.", "a b", "params.x desc", 5])
def test_invalid_field_rejected(field):
    with pytest.raises(InvalidInputError):
        parse_field(field)


def test_invalid_limit_rejected(store):
    with pytest.raises(InvalidInputError):
        facets(store, limit=0)


def test_counter_exact_below_capacity():
    counter = ValueCounter(capacity=4)
    for value in "aabbbc":
        counter.add(value, value)

    assert not counter.approximate
    assert [(v.value, v.count, v.error) for v in counter.top(10)] == [
        ("b", 3, 0), ("a", 2, 0), ("c", 1, 0)]


def test_counter_keeps_heavy_values_within_bounds():
    # 3 heavy values among 600 rare ones; Space-Saving with 10 counters must
    # keep every value seen more than 1/10 of the time.
    stream = []
    for index in range(600):
        stream.append(f"rare-{index}")
        if index % 3 == 0:
            stream.extend(["heavy-a", "heavy-b", "heavy-c"])
    truth = {key: stream.count(key) for key in ("heavy-a", "heavy-b", "heavy-c")}
    counter = ValueCounter(capacity=10)
    for value in stream:
        counter.add(value, value)

    assert counter.approximate
    assert len(counter.counts) == 10
    top = {v.value: v for v in counter.top(3)}
    assert set(top) == set(truth)
    for key, true_count in truth.items():
        assert top[key].count >= true_count
        assert top[key].count - top[key].error <= true_count


def test_approximate_facet_reported(store):
    experiment = store.create_experiment("many")
    for index in range(30):
        store.create_run(experiment.id, params={"seed": index, "group": index % 2})

    result = facets(store, fields=["params.seed", "params.group"], max_tracked=5)

    assert result["params.seed"].approximate
    assert result["params.seed"].distinct is None
    assert not result["params.group"].approximate
    assert counts(result["params.group"]) == {0: 15, 1: 15}


def test_tracked_values_never_exceed_bound(store, monkeypatch):
    experiment = store.create_experiment("wide")
    for index in range(120):
        store.create_run(experiment.id, params={"token": f"t{index:04d}"})
    sizes = []
    original = ValueCounter.add

    def add(counter, rendered, value):
        original(counter, rendered, value)
        sizes.append(len(counter.counts))

    monkeypatch.setattr(ValueCounter, "add", add)

    facets(store, fields=["params.token"], max_tracked=10)

    assert len(sizes) == 120
    assert max(sizes) == 10


def test_search_with_facets_pages(store, sweep):
    first = search_with_facets(store, "params.optimizer = 'adam'", ["tags.team"],
                               page_size=3, order_by="name")

    assert [run.name for run in first.items] == ["r0", "r1", "r3"]
    assert counts(first.facets["tags.team"]) == {"vision": 2, "nlp": 1}
    assert first.facets["tags.team"].missing == 1
    second = search_with_facets(store, "params.optimizer = 'adam'", ["tags.team"],
                                page_size=3, order_by="name",
                                page_token=first.next_page_token)
    assert [run.name for run in second.items] == ["r7"]
    assert second.facets is None
    again = search_with_facets(store, "params.optimizer = 'adam'", ["tags.team"],
                               page_size=3, order_by="name",
                               page_token=first.next_page_token, with_facets=True)
    assert again.facets is not None


def test_facet_clause_selects_values(store, sweep):
    clause = facet_clause("tags.team", ["vision", "nlp"])

    assert clause == "tags.team in ('vision', 'nlp')"
    assert len(list(store.iter_runs(clause))) == 7
    assert facet_clause("params.`odd key`", [1.5]) == "params.`odd key` = 1.5"


@pytest.mark.parametrize("value", [math.nan, None, [1], {"a": 1}])
def test_facet_clause_rejects_unselectable(value):
    with pytest.raises(InvalidInputError):
        facet_clause("params.x", [value])
