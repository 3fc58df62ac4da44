"""Conversions shared by the importers: ids, times, numbers, plain data and tags."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from datetime import date, datetime, timezone
from typing import Any

from mltrail import codec, limits
from mltrail.clock import from_micros, to_utc
from mltrail.errors import InvalidInputError

_SLUG_RE = re.compile(r"[^0-9A-Za-z_.-]+")
_ID_SAFE_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]*$")

# Hex digits of SHA-256 kept in derived ids: 80 bits, so among a million source
# objects the odds that two share an id are below 1 in 10^12 (birthday bound).
DIGEST_HEX = 20

# Characters of readable source text kept at the front of a derived id.
SLUG_LENGTH = 60

SOURCE_ID_TAG = "mltrail.source.id"
SOURCE_FORMAT_TAG = "mltrail.source.format"


def digest(*parts: str) -> str:
    """Return a short, stable hex digest of `parts` (joined with a separator byte)."""
    joined = "\x1f".join(parts).encode("utf-8")
    return hashlib.sha256(joined).hexdigest()[:DIGEST_HEX]


def derive_id(prefix: str, *parts: str) -> str:
    """Return the mltrail id of a source object named by `parts`, the same every time.

    A single part that is already a valid, short id stays readable, as in
    `mlflow-run-<uuid>`. Other parts become a slug followed by a digest of all
    of them, so distinct sources get distinct ids.
    """
    if (
        len(parts) == 1
        and _ID_SAFE_RE.match(parts[0])
        and len(prefix) + 1 + len(parts[0]) <= 128
    ):
        return f"{prefix}-{parts[0]}"
    slug = _SLUG_RE.sub("-", "-".join(parts)).strip("-.")[:SLUG_LENGTH].strip("-.")
    middle = f"{slug}-" if slug else ""
    return f"{prefix}-{middle}{digest(*parts)}"


def from_millis(value: Any, what: str) -> datetime:
    """Convert integer milliseconds since the Unix epoch to an exact UTC datetime."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value.strip()):
            value = int(value.strip())
        else:
            raise InvalidInputError(
                f"{what} {value!r} is not an integer number of milliseconds", value
            )
    try:
        return from_micros(value * 1000)
    except (OverflowError, OSError, ValueError):
        raise InvalidInputError(f"{what} {value!r} is out of range", value) from None


def parse_time(value: Any, what: str) -> datetime:
    """Parse an ISO 8601 timestamp; one without an offset is read as UTC."""
    if isinstance(value, datetime):
        return to_utc(value, what)
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} {value!r} is not an ISO 8601 string", value)
    return to_utc(value, what)


_OFFSET_RE = re.compile(r"(?:[zZ]|[+-][0-9]{2}(?::?[0-9]{2})?)$")


def has_offset(text: str) -> bool:
    """Tell whether an ISO 8601 timestamp with a time part names its UTC offset."""
    parts = re.split(r"[Tt ]", text.strip(), maxsplit=1)
    return len(parts) == 2 and _OFFSET_RE.search(parts[1]) is not None


def parse_float(text: str, what: str) -> float:
    """Parse a decimal text as float64 exactly as Python's float() rounds it.

    `nan`, `inf` and `-inf` in any case are accepted, as the writers of these
    formats print them; surrounding whitespace is ignored.
    """
    try:
        return float(text.strip())
    except (ValueError, AttributeError):
        raise InvalidInputError(f"{what} {text!r} is not a number", text) from None


def parse_step(text: str, what: str) -> int:
    """Parse a step written as an integer, or as a float with no fractional part."""
    stripped = text.strip()
    if re.fullmatch(r"[-+]?[0-9]+", stripped):
        return int(stripped)
    number = parse_float(stripped, what)
    if not math.isfinite(number) or number != int(number):
        raise InvalidInputError(f"{what} {text!r} is not a whole number", text)
    return int(number)


def to_plain(
    value: Any, on_change: Callable[[str], None] | None = None, path: str = "value"
) -> Any:
    """Return `value` as plain JSON-like data that the store accepts.

    Tuples and sets become lists, dates become ISO 8601 text, and dictionary
    keys that are not strings become their text. `on_change` receives the path
    of each such change.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                if on_change:
                    on_change(f"{path}: key {key!r} stored as text")
                key = "null" if key is None else str(key)
            plain[key] = to_plain(item, on_change, f"{path}.{key}")
        return plain
    if isinstance(value, (list, tuple, set, frozenset)):
        items = (
            sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        )
        return [
            to_plain(item, on_change, f"{path}[{i}]") for i, item in enumerate(items)
        ]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, bytes):
        if on_change:
            on_change(f"{path}: bytes stored as hex text")
        return value.hex()
    raise InvalidInputError(
        f"{path} has a value {value!r} of type "
        f"{type(value).__name__} that has no plain-data form",
        value,
    )


def fit_tags(tags: dict[str, Any], skip: Callable[[str, str], None]) -> dict[str, str]:
    """Return the tags the store accepts; report each one left out through `skip`.

    Values must be strings of at most MAX_TAG_VALUE_LENGTH characters, keys at
    most MAX_KEY_LENGTH; when the whole set is too large, the longest values go.
    """
    kept: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(value, str):
            value = codec.dumps(to_plain(value))
        if not key or len(key) > limits.MAX_KEY_LENGTH or "\x00" in key:
            skip(
                key[:80],
                f"tag key is empty, longer than {limits.MAX_KEY_LENGTH} "
                "characters or contains NUL",
            )
        elif len(value) > limits.MAX_TAG_VALUE_LENGTH:
            skip(key, f"tag value longer than {limits.MAX_TAG_VALUE_LENGTH} characters")
        else:
            kept[key] = value
    while len(codec.dumps(kept).encode("utf-8")) > limits.MAX_ATTRIBUTES_BYTES:
        longest = max(kept, key=lambda k: len(kept[k]))
        skip(
            longest,
            f"tags exceed {limits.MAX_ATTRIBUTES_BYTES} bytes in total; "
            "the longest values were left out",
        )
        del kept[longest]
    return kept


def utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc)
