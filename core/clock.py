"""Ids and timestamps: sortable unique ids and UTC times at microsecond precision."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from ulid import ULID

from mltrail.errors import InvalidInputError

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ONE_MICROSECOND = timedelta(microseconds=1)


def new_id() -> str:
    """Return a new ULID string: 26 characters, sortable by creation time."""
    return str(ULID())


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def to_utc(value: datetime | str | float | int, field: str = "timestamp") -> datetime:
    """Normalise a datetime, ISO 8601 string or POSIX seconds to an aware UTC datetime.

    A naive datetime or a string without an offset is read as UTC.
    """
    if isinstance(value, bool):
        raise InvalidInputError(f"{field} must be a datetime, got {value!r}", value)
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise InvalidInputError(f"{field} {value!r} is out of range", value) from None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidInputError(
                f"{field} {value!r} is not an ISO 8601 timestamp", value
            ) from None
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{field} must be a datetime, got {value!r}", value)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def to_micros(value: datetime) -> int:
    """Return microseconds since the Unix epoch; exact, unlike `timestamp()`."""
    return (value - EPOCH) // ONE_MICROSECOND


def from_micros(micros: int) -> datetime:
    seconds, micro = divmod(micros, 1_000_000)
    return datetime.fromtimestamp(seconds, timezone.utc).replace(microsecond=micro)


def isoformat(value: datetime) -> str:
    """Format as ISO 8601 in UTC with exactly six fractional digits and a `Z`."""
    # strftime's %Y does not pad years below 1000, and such text would neither
    # parse back nor sort correctly.
    utc = value.astimezone(timezone.utc)
    return f"{utc.year:04d}" + utc.strftime("-%m-%dT%H:%M:%S.%fZ")
