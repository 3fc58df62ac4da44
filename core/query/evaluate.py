"""Evaluate filters and order keys against an entity's view in the core.

A view is a nested dict of the fields a filter may name (for a run: `name`,
`status`, `params`, `tags`, `metrics` with latest values, ...). Every backend's
results pass through `matches`, so what a backend cannot push down behaves the
same everywhere. The rules:

- A missing field makes a predicate unknown; unknown never matches, and `not`
  of unknown is still unknown (three-valued logic). Only `exists` tests presence.
- Numbers compare with numbers (ints and floats exactly), strings with strings,
  booleans only by `=` and `!=`, timestamps with ISO 8601 strings. Values of
  another type are unequal and never less or greater.
- NaN is unequal to everything, itself included, so it matches only `!=`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from mltrail.clock import to_utc
from mltrail.query.ast import And, Compare, Exists, Expr, In, Like, Literal, Not, Or

MISSING = object()


def resolve(view: dict[str, Any], field: tuple[str, ...]) -> Any:
    """Return the value at `field`, or MISSING.

    A segment that is not a key is retried joined with the following segments,
    so `params.optimizer.lr` also finds a flat key `"optimizer.lr"`.
    """
    node: Any = view
    index = 0
    while index < len(field):
        if not isinstance(node, dict):
            return MISSING
        segment = field[index]
        if segment in node:
            node = node[segment]
            index += 1
            continue
        for end in range(index + 2, len(field) + 1):
            joined = ".".join(field[index:end])
            if joined in node:
                node = node[joined]
                index = end
                break
        else:
            return MISSING
    return node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@lru_cache(maxsize=256)
def _as_time(text: str) -> datetime:
    return to_utc(text, "timestamp literal")


def _comparable(value: Any, literal: Literal) -> tuple[Any, Any] | None:
    """Return a pair Python can compare, or None when the types do not match."""
    if _is_number(value) and _is_number(literal):
        return value, literal
    if isinstance(value, str) and isinstance(literal, str):
        return value, literal
    if isinstance(value, bool) and isinstance(literal, bool):
        return value, literal
    if isinstance(value, datetime) and isinstance(literal, str):
        return value, _as_time(literal)
    return None


def compare(value: Any, op: str, literal: Literal) -> bool:
    """Apply one comparison to a present value."""
    pair = _comparable(value, literal)
    if pair is None:
        return op == "!="
    left, right = pair
    if isinstance(left, float) and math.isnan(left) or \
            isinstance(right, float) and math.isnan(right):
        return op == "!="
    if isinstance(left, bool) and op not in ("=", "!="):
        return False
    if op == "=":
        return left == right
    if op == "!=":
        return left != right
    if op == "<":
        return left < right
    if op == "<=":
        return left <= right
    if op == ">":
        return left > right
    return left >= right


@lru_cache(maxsize=256)
def like_regex(pattern: str) -> re.Pattern[str]:
    """Translate a LIKE pattern (`%` any run, `_` one character, `\\` escapes)."""
    parts = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            parts.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        if char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
        index += 1
    return re.compile("".join(parts), re.DOTALL)


def evaluate(expr: Expr, view: dict[str, Any]) -> bool | None:
    """Return True, False, or None for unknown."""
    if isinstance(expr, Compare):
        value = resolve(view, expr.field)
        return None if value is MISSING else compare(value, expr.op, expr.value)
    if isinstance(expr, In):
        value = resolve(view, expr.field)
        if value is MISSING:
            return None
        hit = any(compare(value, "=", item) for item in expr.values)
        return not hit if expr.negated else hit
    if isinstance(expr, Like):
        value = resolve(view, expr.field)
        if value is MISSING:
            return None
        hit = isinstance(value, str) and like_regex(expr.pattern).fullmatch(value) is not None
        return not hit if expr.negated else hit
    if isinstance(expr, Exists):
        present = resolve(view, expr.field) is not MISSING
        return not present if expr.negated else present
    if isinstance(expr, Not):
        inner = evaluate(expr.item, view)
        return None if inner is None else not inner
    if isinstance(expr, And):
        result: bool | None = True
        for item in expr.items:
            value = evaluate(item, view)
            if value is False:
                return False
            if value is None:
                result = None
        return result
    if isinstance(expr, Or):
        result = False
        for item in expr.items:
            value = evaluate(item, view)
            if value is True:
                return True
            if value is None:
                result = None
        return result
    raise TypeError(f"unknown filter node {expr!r}")


def matches(expr: Expr | None, view: dict[str, Any]) -> bool:
    return expr is None or evaluate(expr, view) is True


# ---------------------------------------------------------------------------
# Ordering
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderKey:
    field: tuple[str, ...]
    descending: bool = False


class _Descending:
    """Wraps a sort value so that a plain ascending sort puts it in reverse order."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Descending) -> bool:
        return other.value < self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.value == other.value


def _rank(value: Any) -> tuple[int, Any]:
    if _is_number(value):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    if isinstance(value, bool):
        return (2, value)
    if isinstance(value, datetime):
        return (3, value)
    return (4, repr(value))


def sort_value(value: Any, descending: bool) -> tuple:
    """Return a sort key for one field: present values first, then NaN, then missing."""
    if value is MISSING:
        return (2, 0)
    if isinstance(value, float) and math.isnan(value):
        return (1, 0)
    ranked = _rank(value)
    return (0, _Descending(ranked) if descending else ranked)


def sort_key(view: dict[str, Any], order: tuple[OrderKey, ...]) -> tuple:
    """Return the full sort key of a view; the entity id is the final tie-break."""
    parts = tuple(sort_value(resolve(view, key.field), key.descending) for key in order)
    return (*parts, view["id"])
