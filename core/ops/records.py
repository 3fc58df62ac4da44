"""Portable records shared by backup, migration, archival and comparison.

Entities travel as their `to_record()` dicts, lineage and audit records as
their own `to_record()` dicts, and a metric point as `point_to_record`. Floats
use the core codec, so NaN payloads, infinities and -0.0 survive JSON.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from mltrail import codec
from mltrail.clock import isoformat, to_micros, to_utc
from mltrail.domain import MetricPoint
from mltrail.errors import InvalidInputError

Progress = Callable[[str, int, Optional[int]], None]
"""`progress(phase, done, total)`: `done` counts items of `phase` so far and
`total` is None while unknown."""

# Query parameters whose values are secrets; `redact_url` masks them.
SECRET_PARAMETERS = ("password", "secret", "token", "key", "credentials", "sig")


def no_progress(phase: str, done: int, total: int | None) -> None:
    return None


def dumps(record: Any) -> str:
    """Serialise an already JSON-safe record to compact, key-sorted JSON text."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def json_size(record: Any) -> int:
    """Return the UTF-8 size of a record as compact JSON, in bytes."""
    return len(dumps(record).encode("utf-8"))


def point_to_record(point: MetricPoint) -> dict[str, Any]:
    return {
        "run_id": point.run_id,
        "key": point.key,
        "seq": point.seq,
        "step": point.step,
        "timestamp": isoformat(point.timestamp),
        "value": codec.encode_value(point.value),
        "extra": point.extras(),
    }


def point_from_record(record: dict[str, Any]) -> MetricPoint:
    """Rebuild and validate a point; raise InvalidInputError naming what is wrong."""
    try:
        point = MetricPoint(
            run_id=record["run_id"], key=record["key"],
            value=codec.decode_value(record["value"]), step=record["step"],
            timestamp=to_utc(record["timestamp"]), seq=record["seq"],
        )
    except (KeyError, TypeError) as error:
        raise InvalidInputError(
            f"metric point record {record!r} is incomplete: {error}", record) from None
    if not isinstance(point.seq, str) or not point.seq:
        raise InvalidInputError(f"metric point record has no seq: {record!r}", record)
    return point.with_extras(record.get("extra")).validate()


def order_key(point: MetricPoint) -> tuple[int, int, str]:
    """History order as plain comparable values: step, microseconds, seq."""
    return (point.step, to_micros(point.timestamp), point.seq)


def same_point(a: MetricPoint, b: MetricPoint) -> bool:
    """Compare two points field by field, floats bit for bit."""
    return codec.values_equal(point_to_record(a), point_to_record(b))


def redact_url(url: str) -> str:
    """Return `url` without user name, password and secret query parameters."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        secret = any(word in name.lower() for word in SECRET_PARAMETERS)
        query.append((name, "***" if secret else value))
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))


def require_keys(record: Any, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise InvalidInputError(f"{what} record must be a JSON object, got {record!r}",
                                record)
    missing = [key for key in keys if key not in record]
    if missing:
        raise InvalidInputError(f"{what} record {str(record)[:200]} lacks {missing}",
                                missing)
    return record
