import math

import pytest

from mltrail.errors import QuerySyntaxError
from mltrail.query.ast import And, Compare, Exists, In, Like, Not, Or, to_text
from mltrail.query.parser import parse


def test_precedence_and_over_or():
    expr = parse("a = 1 or b = 2 and c = 3")
    assert isinstance(expr, Or)
    assert isinstance(expr.items[1], And)


def test_not_binds_tightest():
    expr = parse("not a = 1 and b = 2")
    assert isinstance(expr, And)
    assert isinstance(expr.items[0], Not)


def test_parentheses_override():
    expr = parse("(a = 1 or b = 2) and c = 3")
    assert isinstance(expr, And)
    assert isinstance(expr.items[0], Or)


def test_quoted_segments():
    assert parse("params.`a.b`.c = 1").field == ("params", "a.b", "c")
    assert parse("tags.`it``s` = 'x'").field == ("tags", "it`s")


@pytest.mark.parametrize("text,value", [
    ("x = 1", 1), ("x = 1.5", 1.5), ("x = -2e3", -2000.0), ("x = .5", 0.5),
    ("x = 'it\\'s'", "it's"), ('x = "two words"', "two words"), ("x = true", True),
    ("x = FALSE", False), ("x = 'tab\\t'", "tab\t"), ("x = inf", math.inf),
    ("x = -inf", -math.inf),
])
def test_literals(text, value):
    assert parse(text).value == value
    assert type(parse(text).value) is type(value)


def test_nan_literal():
    assert math.isnan(parse("x = nan").value)


@pytest.mark.parametrize("text,node", [
    ("x in (1, 'a')", In), ("x not in (1)", In), ("x like 'a%'", Like),
    ("x not like 'a%'", Like), ("x exists", Exists), ("x not exists", Exists),
])
def test_predicates(text, node):
    assert isinstance(parse(text), node)


@pytest.mark.parametrize("op,normal", [("==", "="), ("<>", "!="), ("<=", "<=")])
def test_operator_spellings(op, normal):
    assert parse(f"x {op} 1").op == normal


@pytest.mark.parametrize("text", [
    "params.optimizer.lr < 0.01 and tags.team = 'vision' and metrics.val_acc >= 0.9",
    "not (a = 1 or b in (1, 2.5, 'x')) and `c.d`.e not like 'x%'",
    "a exists or b not exists",
    "tags.`space key` != 'v'",
])
def test_to_text_round_trip(text):
    expr = parse(text)
    assert parse(to_text(expr)) == expr


@pytest.mark.parametrize("text,position,fragment", [
    ("a =", 3, "expected a value"),
    ("a = 1 b = 2", 6, "expected 'and', 'or'"),
    ("a not = 1", 6, "after 'not'"),
    ("a in ()", 6, "expected a value"),
    ("a = 1 and and b = 2", 10, "field name"),
    ("``  = 1", 0, "empty quoted key"),
    ("a = @", 4, "unexpected character"),
])
def test_errors_point_at_position(text, position, fragment):
    with pytest.raises(QuerySyntaxError) as caught:
        parse(text)
    assert caught.value.position == position
    assert fragment in str(caught.value)
    assert "^" in str(caught.value)


def test_compare_node_fields():
    assert parse("metrics.acc >= 0.9") == Compare(("metrics", "acc"), ">=", 0.9)
