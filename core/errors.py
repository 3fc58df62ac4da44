"""The error hierarchy every backend raises; driver errors never reach a user.

Each error carries the offending value in `value`, so callers can act on it
without parsing the message.
"""

from __future__ import annotations

from typing import Any


class MltrailError(Exception):
    """Base of every error mltrail raises."""

    def __init__(self, message: str, value: Any = None) -> None:
        super().__init__(message)
        self.value = value


class NotFoundError(MltrailError, LookupError):
    """An entity, key or page that was requested does not exist."""


class AlreadyExistsError(MltrailError):
    """An entity with the same id or unique key exists with different content."""


class ConflictError(MltrailError):
    """A write contradicts stored state: a changed param, an illegal status change,
    a lineage cycle, or a concurrent update that won first."""


class InvalidInputError(MltrailError, ValueError):
    """A value failed validation before anything was written."""


class QuerySyntaxError(InvalidInputError):
    """A filter expression could not be parsed; `position` is a 0-based offset."""

    def __init__(self, message: str, text: str, position: int) -> None:
        pointer = " " * position + "^"
        super().__init__(f"{message} at position {position}\n  {text}\n  {pointer}", text)
        self.text = text
        self.position = position


class UnsupportedCapabilityError(MltrailError, NotImplementedError):
    """The backend does not offer an operation; the message names both."""


class BackendUnavailableError(MltrailError, ConnectionError):
    """The store could not be reached, or its driver is not installed."""


class PermissionDeniedError(MltrailError, PermissionError):
    """The principal's role does not allow the operation."""
