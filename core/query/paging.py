"""Ordering and keyset pagination done in the core, with bounded memory.

A page is computed by streaming every candidate once and keeping the best
`page_size + 1` in a heap, so memory grows with the page size, never with the
result. The page token carries the sort values of the page's last item and a
fingerprint of the query; the next page starts strictly after those values,
so ties never repeat or skip an item, and an item inserted later shows up only
if it sorts after the cursor.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

from mltrail import codec
from mltrail.clock import isoformat, to_utc
from mltrail.errors import InvalidInputError
from mltrail.query.evaluate import MISSING, OrderKey, resolve, sort_key, sort_value
from mltrail.query.parser import parse

T = TypeVar("T")

DEFAULT_ORDER = (OrderKey(("created_at",)),)


@dataclass
class Page(Generic[T]):
    """One page of results and the token for the next, None on the last page."""

    items: list[T]
    next_page_token: str | None

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def parse_order(order_by: Iterable[str] | str | None) -> tuple[OrderKey, ...]:
    """Parse order clauses such as `"metrics.val_acc desc"` or `"-created_at"`."""
    if order_by is None:
        return DEFAULT_ORDER
    if isinstance(order_by, str):
        order_by = [part for part in order_by.split(",") if part.strip()]
    keys = []
    for clause in order_by:
        text = clause.strip()
        descending = False
        if text.startswith("-"):
            descending, text = True, text[1:].strip()
        words = text.rsplit(None, 1)
        if len(words) == 2 and words[1].lower() in ("asc", "desc"):
            descending = words[1].lower() == "desc"
            text = words[0]
        try:
            probe = parse(f"{text} exists")
        except InvalidInputError:
            raise InvalidInputError(
                f"order clause {clause!r} is invalid; expected a field, optionally "
                "followed by asc or desc",
                clause,
            ) from None
        keys.append(OrderKey(probe.field, descending))
    return tuple(keys) or DEFAULT_ORDER


def fingerprint(*parts: Any) -> str:
    text = json.dumps([repr(p) for p in parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _encode_sort_value(value: Any) -> Any:
    if value is MISSING:
        return {"m": 1}
    if isinstance(value, datetime):
        return {"t": isoformat(value)}
    return {"v": codec.encode_value(value)}


def _decode_sort_value(item: dict[str, Any]) -> Any:
    if "m" in item:
        return MISSING
    if "t" in item:
        return to_utc(item["t"])
    return codec.decode_value(item["v"])


def encode_token(query_id: str, view: dict[str, Any], order: tuple[OrderKey, ...]) -> str:
    values = [_encode_sort_value(resolve(view, key.field)) for key in order]
    payload = {"q": query_id, "a": values, "id": view["id"]}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, query_id: str) -> tuple:
    """Return the cursor (sort values..., id) of a token issued for `query_id`."""
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        values = tuple(_decode_sort_value(item) for item in payload["a"])
        cursor = (*values, payload["id"])
        issued_for = payload["q"]
    except (ValueError, KeyError, TypeError):
        raise InvalidInputError(f"page token {token[:40]!r} is malformed", token) from None
    if issued_for != query_id:
        raise InvalidInputError(
            f"page token {token[:40]!r} belongs to another query; pass the same filter "
            "and order as the request that returned it",
            token,
        )
    return cursor


def cursor_key(cursor: tuple, order: tuple[OrderKey, ...]) -> tuple:
    *values, last_id = cursor
    parts = tuple(sort_value(value, key.descending) for value, key in zip(values, order))
    return (*parts, last_id)


class _HeapItem:
    """Max-heap entry by sort key, so the heap root is the worst item kept."""

    __slots__ = ("key", "item")

    def __init__(self, key: tuple, item: Any) -> None:
        self.key = key
        self.item = item

    def __lt__(self, other: _HeapItem) -> bool:
        return other.key < self.key


def page_of(
    candidates: Iterable[T],
    view_of: Callable[[T], dict[str, Any] | None],
    order: tuple[OrderKey, ...],
    page_size: int,
    after: tuple | None,
    query_id: str,
    presorted: bool = False,
) -> Page[T]:
    """Select one page from `candidates`.

    `view_of` returns the item's view, or None when it does not match the
    filter. With `presorted`, candidates arrive in order and streaming stops as
    soon as the page is full.
    """
    after_key = None if after is None else cursor_key(after, order)
    heap: list[_HeapItem] = []
    for item in candidates:
        view = view_of(item)
        if view is None:
            continue
        key = sort_key(view, order)
        if after_key is not None and not after_key < key:
            continue
        entry = _HeapItem(key, (item, view))
        if len(heap) <= page_size:
            heapq.heappush(heap, entry)
            if presorted and len(heap) > page_size:
                break
        elif key < heap[0].key:
            heapq.heapreplace(heap, entry)
    chosen = sorted(heap, key=lambda entry: entry.key)
    has_more = len(chosen) > page_size
    chosen = chosen[:page_size]
    items = [entry.item[0] for entry in chosen]
    token = None
    if has_more and chosen:
        token = encode_token(query_id, chosen[-1].item[1], order)
    return Page(items, token)
