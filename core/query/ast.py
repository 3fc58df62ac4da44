"""The filter language's syntax tree; immutable and hashable so it can key caches.

A field is a tuple of key segments: `params.optimizer.lr` is
`("params", "optimizer", "lr")` and `` params.`optimizer.lr` `` is
`("params", "optimizer.lr")`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from mltrail import codec

Literal = Union[str, int, float, bool]

COMPARISON_OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
ALL_OPERATORS = frozenset({*COMPARISON_OPERATORS, "in", "not in", "like", "not like",
                           "exists", "not exists", "and", "or", "not"})


@dataclass(frozen=True)
class Compare:
    field: tuple[str, ...]
    op: str
    value: Literal


@dataclass(frozen=True)
class In:
    field: tuple[str, ...]
    values: tuple[Literal, ...]
    negated: bool = False

    @property
    def op(self) -> str:
        return "not in" if self.negated else "in"


@dataclass(frozen=True)
class Like:
    field: tuple[str, ...]
    pattern: str
    negated: bool = False

    @property
    def op(self) -> str:
        return "not like" if self.negated else "like"


@dataclass(frozen=True)
class Exists:
    field: tuple[str, ...]
    negated: bool = False

    @property
    def op(self) -> str:
        return "not exists" if self.negated else "exists"


@dataclass(frozen=True)
class And:
    items: tuple[Expr, ...]
    op = "and"


@dataclass(frozen=True)
class Or:
    items: tuple[Expr, ...]
    op = "or"


@dataclass(frozen=True)
class Not:
    item: Expr
    op = "not"


Expr = Union[Compare, In, Like, Exists, And, Or, Not]
Predicate = Union[Compare, In, Like, Exists]


def conjuncts(expr: Expr | None) -> list[Expr]:
    """Split a filter into the parts joined by a top-level `and`."""
    if expr is None:
        return []
    if isinstance(expr, And):
        return [part for item in expr.items for part in conjuncts(item)]
    return [expr]


def fields_of(expr: Expr | None) -> set[tuple[str, ...]]:
    """Return every field a filter mentions."""
    if expr is None:
        return set()
    if isinstance(expr, (And, Or)):
        return set().union(*(fields_of(item) for item in expr.items))
    if isinstance(expr, Not):
        return fields_of(expr.item)
    return {expr.field}


def format_field(field: tuple[str, ...]) -> str:
    """Render a field back into filter syntax, quoting segments where needed."""
    parts = []
    for segment in field:
        if segment and segment.replace("_", "a").replace("-", "a").isalnum() \
                and segment.isascii() and not segment[0].isdigit() and segment[0] != "-":
            parts.append(segment)
        else:
            parts.append("`" + segment.replace("`", "``") + "`")
    return ".".join(parts)


def format_literal(value: Literal) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def to_text(expr: Expr | None) -> str:
    """Render a syntax tree as canonical filter text; parsing it gives the same tree."""
    if expr is None:
        return ""
    if isinstance(expr, Compare):
        return f"{format_field(expr.field)} {expr.op} {format_literal(expr.value)}"
    if isinstance(expr, In):
        values = ", ".join(format_literal(v) for v in expr.values)
        return f"{format_field(expr.field)} {expr.op} ({values})"
    if isinstance(expr, Like):
        return f"{format_field(expr.field)} {expr.op} {format_literal(expr.pattern)}"
    if isinstance(expr, Exists):
        return f"{format_field(expr.field)} {expr.op}"
    if isinstance(expr, Not):
        return f"not ({to_text(expr.item)})"
    joiner = f" {expr.op} "
    return joiner.join(f"({to_text(item)})" for item in expr.items)


def literal_key(value: Literal) -> str:
    """Return a canonical string for a literal, distinguishing 1, 1.0 and true."""
    if isinstance(value, float):
        return "f:" + codec.float_to_bits(value)
    return f"{type(value).__name__}:{value}"
