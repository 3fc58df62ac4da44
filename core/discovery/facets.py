"""Facet counts: how many matching runs have each value of a tag, param or field.

Values are counted by their canonical JSON (`mltrail.codec.dumps`), so 1,
1.0, "1" and true are four different values, and NaN, infinities and -0.0 keep
their own bits. Runs are streamed page by page; each field tracks at most
`max_tracked` distinct values. Below that the counts are exact. Above it the
counter switches to the Space-Saving algorithm (Metwally, Agrawal and El
Abbadi, "Efficient Computation of Frequent and Top-k Elements in Data
Streams", 2005). Every value more frequent than runs/max_tracked is then kept,
each count is an upper bound, and `error` bounds how much it may exceed the
true count.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mltrail import codec
from mltrail.backend import chunked
from mltrail.clock import isoformat
from mltrail.errors import InvalidInputError
from mltrail.query.ast import Exists, format_field, format_literal
from mltrail.query.evaluate import MISSING, resolve
from mltrail.query.parser import parse
from mltrail.store import Store, run_view

DEFAULT_FIELDS = ("tags.team", "params.optimizer")
# Values listed per field; the rest are summed into `other`.
DEFAULT_LIMIT = 20
# Distinct values counted exactly per field, which bounds memory per field.
MAX_TRACKED_VALUES = 10_000
BATCH = 500


@dataclass(frozen=True)
class FacetValue:
    """One value of a field and how many runs have it.

    `rendered` is the canonical JSON that distinguishes 1, 1.0 and "1". `error`
    is 0 for an exact count; otherwise the true count lies in
    [count - error, count].
    """

    value: Any
    rendered: str
    count: int
    error: int = 0


@dataclass
class Facet:
    """The value counts of one field over the runs that matched.

    `runs` is how many runs were counted, `missing` how many lack the field,
    and `other` how many have a value beyond the listed ones. `distinct` is
    None when more than `max_tracked` distinct values made the counts
    approximate.
    """

    field: str
    values: list[FacetValue]
    runs: int
    missing: int
    other: int
    distinct: int | None
    approximate: bool

    def record(self) -> dict[str, Any]:
        return {"field": self.field, "runs": self.runs, "missing": self.missing,
                "other": self.other, "distinct": self.distinct,
                "approximate": self.approximate,
                "values": [{"value": v.value, "rendered": v.rendered, "count": v.count,
                            "error": v.error} for v in self.values]}


@dataclass
class FacetedPage:
    """A page of runs and, on the first page, the facets of the whole search."""

    items: list
    next_page_token: str | None
    facets: dict[str, Facet] | None = None


def parse_field(text: Any) -> tuple[str, ...]:
    """Parse a field name such as `tags.team` or ``params.`optimizer.lr` ``."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"facet field {text!r} is invalid; expected a field "
                                "such as 'tags.team' or 'params.optimizer'", text)
    try:
        probe = parse(f"{text} exists")
    except InvalidInputError:
        probe = None
    if not isinstance(probe, Exists) or probe.negated:
        raise InvalidInputError(f"facet field {text!r} is invalid; expected a field "
                                "such as 'tags.team' or 'params.optimizer'", text)
    return probe.field


def render_value(value: Any) -> str:
    """Return the canonical JSON text of a field value; times become ISO 8601."""
    if isinstance(value, datetime):
        return codec.dumps(isoformat(value))
    return codec.dumps(value)


class ValueCounter:
    """Counts values exactly up to `capacity` distinct ones, then by Space-Saving.

    Space-Saving keeps `capacity` counters: a new value replaces the value with
    the smallest count c and starts at c + 1 with error c. The heap of
    (count, value) pairs is built at the first replacement and updated lazily:
    an entry whose count is stale is pushed back with the current count before
    the minimum is taken.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.counts: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.samples: dict[str, Any] = {}
        self.heap: list[tuple[int, str]] | None = None

    @property
    def approximate(self) -> bool:
        return self.heap is not None

    def add(self, rendered: str, value: Any) -> None:
        if rendered in self.counts:
            self.counts[rendered] += 1
            return
        if len(self.counts) < self.capacity:
            self.counts[rendered] = 1
            self.errors[rendered] = 0
            self.samples[rendered] = value
            return
        self._replace_minimum(rendered, value)

    def _replace_minimum(self, rendered: str, value: Any) -> None:
        if self.heap is None:
            self.heap = [(count, key) for key, count in self.counts.items()]
            heapq.heapify(self.heap)
        while True:
            count, key = self.heap[0]
            current = self.counts[key]
            if current == count:
                break
            heapq.heapreplace(self.heap, (current, key))
        for table in (self.counts, self.errors, self.samples):
            del table[key]
        self.counts[rendered] = count + 1
        self.errors[rendered] = count
        self.samples[rendered] = value
        heapq.heapreplace(self.heap, (count + 1, rendered))

    def top(self, limit: int) -> list[FacetValue]:
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        return [FacetValue(self.samples[key], key, count, self.errors[key])
                for key, count in ranked[:limit]]


def facets(
    store: Store,
    filter: str | None = None,
    fields: Sequence[str] = DEFAULT_FIELDS,
    *,
    experiment_ids: Sequence[str] | None = None,
    namespace: str | None = None,
    include_deleted: bool = False,
    limit: int = DEFAULT_LIMIT,
    max_tracked: int = MAX_TRACKED_VALUES,
) -> dict[str, Facet]:
    """Count the values of each field over the runs matching a search.

    Runs are read through `Store.iter_runs`, so the same filter, scope and
    access rules apply and memory stays bounded. `metrics.<key>` fields count
    latest values. Returns field name -> Facet, in the order given.
    """
    parsed = {name: parse_field(name) for name in fields}
    _check_positive(limit, "limit")
    _check_positive(max_tracked, "max_tracked")
    counters = {name: ValueCounter(max_tracked) for name in parsed}
    missing = dict.fromkeys(parsed, 0)
    metric_keys = sorted({path[1] for path in parsed.values()
                          if len(path) > 1 and path[0] == "metrics"})
    total = 0
    runs = store.iter_runs(filter, experiment_ids=experiment_ids, namespace=namespace,
                           include_deleted=include_deleted)
    for batch in chunked(runs, BATCH):
        latest = store.metric_reader.latest(batch, metric_keys) if metric_keys else {}
        for run in batch:
            total += 1
            view = run_view(run, latest.get(run.id, {}))
            for name, path in parsed.items():
                value = resolve(view, path)
                if value is MISSING:
                    missing[name] += 1
                else:
                    counters[name].add(render_value(value), value)
    return {name: _facet(name, counters[name], total, missing[name], limit)
            for name in parsed}


def _facet(name: str, counter: ValueCounter, total: int, missing: int,
           limit: int) -> Facet:
    listed = counter.top(limit)
    other = max(0, total - missing - sum(value.count for value in listed))
    return Facet(field=name, values=listed, runs=total, missing=missing, other=other,
                 distinct=None if counter.approximate else len(counter.counts),
                 approximate=counter.approximate)


def search_with_facets(
    store: Store,
    filter: str | None = None,
    fields: Sequence[str] = DEFAULT_FIELDS,
    *,
    experiment_ids: Sequence[str] | None = None,
    namespace: str | None = None,
    order_by: Sequence[str] | str | None = None,
    page_size: int = 100,
    page_token: str | None = None,
    include_deleted: bool = False,
    limit: int = DEFAULT_LIMIT,
    with_facets: bool | None = None,
) -> FacetedPage:
    """Return one page of `Store.search_runs` with the facets of the whole search.

    Facets describe every matching run, not only the page, so they cost a
    full pass over the matches. By default they are computed for the first
    page (no `page_token`) and omitted on later pages, whose facets are the
    same. `with_facets` True or False overrides that.
    """
    page = store.search_runs(filter, experiment_ids=experiment_ids, namespace=namespace,
                             order_by=order_by, page_size=page_size,
                             page_token=page_token, include_deleted=include_deleted)
    if with_facets is None:
        with_facets = page_token is None
    counted = None
    if with_facets:
        counted = facets(store, filter, fields, experiment_ids=experiment_ids,
                         namespace=namespace, include_deleted=include_deleted,
                         limit=limit)
    return FacetedPage(list(page.items), page.next_page_token, counted)


def facet_clause(field_name: str, values: Sequence[Any]) -> str:
    """Return the filter text that selects runs with any of `values` in a field.

    Interfaces add it to the search filter with `and` when a user picks facet
    values. NOTE: the filter language compares numbers by value, so selecting
    1 also selects runs whose value is 1.0, although the facet counts them
    apart.
    """
    path = parse_field(field_name)
    if not values:
        raise InvalidInputError(f"no values given for facet field {field_name!r}",
                                field_name)
    for value in values:
        _check_selectable(field_name, value)
    literals = ", ".join(format_literal(v) for v in values)
    if len(values) == 1:
        return f"{format_field(path)} = {literals}"
    return f"{format_field(path)} in ({literals})"


def _check_selectable(field_name: str, value: Any) -> None:
    if isinstance(value, float) and math.isnan(value):
        raise InvalidInputError(
            f"facet value NaN of {field_name!r} cannot be selected: NaN equals nothing "
            "in the filter language; filter on another field instead", value)
    if value is None or not isinstance(value, (str, int, float, bool)):
        raise InvalidInputError(
            f"facet value {value!r} of {field_name!r} cannot be written as a filter "
            "literal; only strings, numbers and booleans can be selected", value)


def _check_positive(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a positive int, got {value!r}", value)

