import math
from datetime import datetime, timezone

import pytest

from mltrail.query.evaluate import MISSING, OrderKey, matches, resolve, sort_key
from mltrail.query.parser import parse

VIEW = {
    "id": "R1",
    "created_at": datetime(2024, 1, 1, tzinfo=timezone.utc),
    "params": {"opt": {"lr": 0.01}, "a.b": 2, "n": math.nan, "flag": True, "empty": {}},
    "tags": {"team": "vision"},
    "metrics": {"acc": 0.9},
}


def test_resolve_nested_and_flat_keys():
    assert resolve(VIEW, ("params", "opt", "lr")) == 0.01
    assert resolve(VIEW, ("params", "a.b")) == 2
    assert resolve(VIEW, ("params", "a", "b")) == 2
    assert resolve(VIEW, ("params", "zz")) is MISSING


@pytest.mark.parametrize("text,expected", [
    ("params.n != 1", True), ("params.n = 1", False), ("params.n < 1", False),
    ("not params.n = 1", True), ("params.zz != 1", False), ("not params.zz = 1", False),
    ("params.zz = 1 or tags.team = 'vision'", True),
    ("params.zz = 1 and tags.team = 'x'", False),
    ("params.empty exists", True), ("params.flag = 1", False),
    ("created_at < '2024-01-02'", True), ("created_at > '2024-01-01T00:00:00Z'", False),
    ("tags.team like 'v_s%'", True), ("tags.team like 'V%'", False),
    ("tags.team like 'vision\\%'", False),
])
def test_matches(text, expected):
    assert matches(parse(text), VIEW) is expected


def test_like_escape():
    assert matches(parse("tags.p like '100\\%'"), {"id": "x", "tags": {"p": "100%"}})
    assert not matches(parse("tags.p like '100\\%'"), {"id": "x", "tags": {"p": "1000"}})


def test_sort_missing_and_nan_last_both_directions():
    views = [{"id": str(i), "v": v} for i, v in enumerate([2.0, math.nan, 1.0])]
    views.append({"id": "9"})
    for descending in (False, True):
        order = (OrderKey(("v",), descending),)
        ordered = [v["id"] for v in sorted(views, key=lambda v: sort_key(v, order))]
        assert ordered[-2:] == ["1", "9"]


def test_sort_ties_by_id():
    views = [{"id": "b", "v": 1}, {"id": "a", "v": 1}]
    order = (OrderKey(("v",), True),)
    assert [v["id"] for v in sorted(views, key=lambda v: sort_key(v, order))] == ["a", "b"]
