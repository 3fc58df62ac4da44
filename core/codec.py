"""Lossless encoding of user values into JSON-safe structures.

Params, tags and attributes are kept exactly as given: ints stay ints, floats keep
every bit (NaN payloads, infinities and -0.0 included), and dictionary keys may
contain any character. Plain JSON cannot carry non-finite floats, so they are
written as a one-key object `{"$f": "<16 hex digits of the IEEE 754 bits>"}`;
a user key that starts with `$` gains one more `$` so it can never be mistaken
for that marker. Every backend stores the encoded form and gets the original back
with `decode_value`.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any, Iterator

from mltrail.errors import InvalidInputError

FLOAT_MARKER = "$f"

Scalar = str | int | float | bool | None


def float_to_bits(value: float) -> str:
    return struct.pack(">d", value).hex()


def bits_to_float(bits: str) -> float:
    return struct.unpack(">d", bytes.fromhex(bits))[0]


def same_float(a: float, b: float) -> bool:
    """Compare two floats bit for bit, so NaN equals itself and -0.0 differs from 0.0."""
    return struct.pack(">d", a) == struct.pack(">d", b)


def _escape_key(key: str) -> str:
    return "$" + key if key.startswith("$") else key


def _unescape_key(key: str) -> str:
    return key[1:] if key.startswith("$$") else key


def encode_value(value: Any, path: str = "value") -> Any:
    """Encode a nested value of dicts, lists and scalars into JSON-safe form.

    Raises InvalidInputError naming the path of the first unsupported value, such
    as a set, bytes, an object, or a dictionary key that is not a string.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {FLOAT_MARKER: float_to_bits(value)}
    if isinstance(value, dict):
        encoded = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInputError(
                    f"{path} has a key {key!r} of type {type(key).__name__}; "
                    "keys must be strings",
                    key,
                )
            encoded[_escape_key(key)] = encode_value(item, f"{path}.{key}")
        return encoded
    if isinstance(value, (list, tuple)):
        return [encode_value(item, f"{path}[{index}]") for index, item in enumerate(value)]
    raise InvalidInputError(
        f"{path} has a value {value!r} of type {type(value).__name__}; expected a "
        "string, number, bool, None, list or dict",
        value,
    )


def decode_value(value: Any) -> Any:
    """Invert `encode_value`."""
    if isinstance(value, dict):
        if len(value) == 1 and FLOAT_MARKER in value:
            return bits_to_float(value[FLOAT_MARKER])
        return {_unescape_key(key): decode_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_value(item) for item in value]
    return value


def dumps(value: Any) -> str:
    """Serialise an already decoded value to canonical JSON text (sorted keys)."""
    return json.dumps(
        encode_value(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
        allow_nan=False,
    )


def loads(text: str) -> Any:
    return decode_value(json.loads(text))


def values_equal(a: Any, b: Any) -> bool:
    """Compare nested values exactly: types must match and floats bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return same_float(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    return a == b


def flatten(value: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[
    tuple[tuple[str, ...], Any]
]:
    """Yield (key path, leaf) pairs of a nested dict; lists and scalars are leaves.

    An empty dict is a leaf too, so `{"a": {}}` still shows that key `a` exists.
    """
    for key, item in value.items():
        path = (*prefix, key)
        if isinstance(item, dict) and item:
            yield from flatten(item, path)
        else:
            yield path, item


def join_path(path: tuple[str, ...]) -> str:
    """Join key segments with dots, percent-escaping `%` and `.` inside a segment.

    The result is reversible with `split_path`, so a key that contains a dot never
    collides with a nested key.
    """
    return ".".join(s.replace("%", "%25").replace(".", "%2E") for s in path)


def split_path(text: str) -> tuple[str, ...]:
    return tuple(s.replace("%2E", ".").replace("%25", "%") for s in text.split("."))
